"""
Time the Space from click to full result on this machine's CPU: attribution (FGA + TransMM, one pass), the quick
faithfulness metrics of both maps and the feature view, per bundled example image.

Measurements per image, after one warm-up click:
- `attribution only`: `app.explain(..., metrics=False)` (the map, gates and feature view, no metrics),
- `first view`: the click handler's first update (the same, plus the handler's input checks),
- `handler`: the click handler to its last update (everything the page shows, metrics included),
- `gradio_client`: the same click through a launched app on 127.0.0.1 and `gradio_client` (adds HTTP, the queue and
  the encoding of the images).

    python scripts/bench_space.py [--images 6] [--standin]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_app():
    spec = importlib.util.spec_from_file_location("fga_space_app", ROOT / "spaces" / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fga_space_app"] = module
    spec.loader.exec_module(module)
    return module


def load_tests_package():
    """The repository's `tests` package (for the stand-in model), imported from its folder."""
    spec = importlib.util.spec_from_file_location(
        "tests", ROOT / "tests" / "__init__.py", submodule_search_locations=[str(ROOT / "tests")]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["tests"] = module
    spec.loader.exec_module(module)
    return module


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(name: str, times: list[float]) -> str:
    return (
        f"{name:>16}: median {statistics.median(times):.2f} s, mean {statistics.mean(times):.2f} s, "
        f"max {max(times):.2f} s over {len(times)} clicks"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=6, help="how many bundled examples to time")
    parser.add_argument("--repeats", type=int, default=1, help="clicks per image and measurement")
    parser.add_argument("--standin", action="store_true", help="the tests' small random stand-in model")
    args = parser.parse_args(argv)

    app = load_app()
    app.configure_torch_threads()  # as the Space does at start-up
    if args.standin:
        load_tests_package()
        from tests.spaces.conftest import standin_explainer

        explainer = standin_explainer(Path(tempfile.mkdtemp()))
    else:
        explainer = app.bundled_explainer()
    images = explainer.examples[: args.images]
    config = explainer.pipe.model.config
    print(
        f"Model: {explainer.name} ({type(explainer.pipe.model).__name__}, {config.num_hidden_layers} blocks, "
        f"hidden {config.hidden_size}, {config.image_size} px / {config.patch_size} px patches); gated blocks "
        f"{explainer.default_blocks}; prototypes: {'yes' if explainer.prototypes else 'no'}; "
        f"torch threads: {torch.get_num_threads()} (set {app.TORCH_THREADS_ENV} to change)"
    )
    handle = app.make_handler(explainer)
    click = (explainer.examples[0], "combined", explainer.default_blocks, 0.5, 10.0, "", "")
    list(handle(*click))  # warm-up: first-call costs (evaluate modules, kernels)

    attribution, first_view, handler = [], [], []
    for path in images:
        picture = app.read_upload(path)
        attribution += timed(lambda picture=picture: app.explain(explainer, picture, metrics=False), args.repeats)
        for _ in range(args.repeats):
            start = time.perf_counter()
            updates = handle(path, *click[1:])
            next(updates)
            first_view.append(time.perf_counter() - start)
            list(updates)
            handler.append(time.perf_counter() - start)

    from gradio_client import Client, handle_file

    from tests.spaces.conftest import free_port

    port = free_port()
    demo = app.build_demo(explainer)
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        client.predict(handle_file(images[0]), *click[1:], api_name="/explain")
        remote = []
        for path in images:
            remote += timed(
                lambda path=path: client.predict(handle_file(path), *click[1:], api_name="/explain"), args.repeats
            )
    finally:
        demo.close()
    print(summary("attribution only", attribution))
    print(summary("first view", first_view))
    print(summary("handler", handler))
    print(summary("gradio_client", remote))
    return 0


if __name__ == "__main__":
    sys.exit(main())
