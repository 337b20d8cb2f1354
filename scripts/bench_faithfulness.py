"""
Benchmark of the batched faithfulness engine on a ViT-B/16-shaped random model (CPU by default).

Prints the forward passes per image each metric needs, seconds per image for the engine (with the stock forward and
with its default oneDNN linears) and for a naive loop (one perturbed input and one forward at a time with the stock
forward, every metric on its own with its own clean forward, as a plain re-implementation would run), their ratio and
its two factors, and the bare model-forward time for as many inputs as the engine ran, with the engine's backend.

    .venv/bin/python scripts/bench_faithfulness.py --images 2 --naive-images 1
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch
from transformers import ViTConfig, ViTForImageClassification

from hf_fga.faithfulness import ResponseCache, evaluate_faithfulness, forward_passes_per_image, resolve_preset
from hf_fga.faithfulness.evaluation import metric_module
from hf_fga.faithfulness.fast_linear import OneDNNLinears, supports_onednn
from hf_fga.faithfulness.records import ranking
from hf_fga.metrics import METRIC_NAMES

METRICS = ("saco", "faithfulness_correlation", "pixel_flipping")


def naive_loop(model, pixel_values: torch.Tensor, attributions: np.ndarray, patch: int, metrics) -> int:
    """Every perturbed input the papers preset needs, built patch by patch and run alone; returns the forwards."""
    preset = resolve_preset("papers")
    side = pixel_values.shape[-1] // patch
    forwards = 0
    for b in range(pixel_values.shape[0]):
        image = pixel_values[b]
        fill = image.mean(dim=(1, 2), keepdim=True).expand_as(image)
        order = ranking(attributions[b : b + 1])[0]
        masks = {
            "saco": [group for group in np.array_split(order, preset.saco_num_groups)],
            "faithfulness_correlation": [
                np.random.default_rng([0, b, 0]).choice(side * side, 20, replace=False) for _ in range(preset.fc_runs)
            ],
            "pixel_flipping": [order[: k + 1] for k in range(side * side)],
        }
        for metric in metrics:
            with torch.inference_mode():
                model(pixel_values=image[None])  # each metric computes its own clean prediction
                forwards += 1
                for patches in masks[metric]:
                    perturbed = image.clone()
                    for p in patches:
                        r, c = divmod(int(p), side)
                        perturbed[:, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = fill[
                            :, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch
                        ]
                    torch.softmax(model(pixel_values=perturbed[None]).logits, dim=-1)
                    forwards += 1
    return forwards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2, help="images for the engine and the bare forward")
    parser.add_argument("--naive-images", type=int, default=1, help="images for the naive loop (it is slow)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="alternating engine/bare timings; the best counts")
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ViTConfig(num_labels=10, attn_implementation=args.attn)  # ViT-B/16: 224 px, 14×14 patches
    model = ViTForImageClassification(config).eval().to(args.device)
    grid = config.image_size // config.patch_size
    pixels = torch.randn(args.images, 3, config.image_size, config.image_size, device=args.device)
    attributions = torch.rand(args.images, grid, grid, generator=torch.Generator().manual_seed(0))
    print(
        f"model: ViT-B/16-shaped random ViTForImageClassification ({args.attn}), device {args.device}, "
        f"torch threads {torch.get_num_threads()}, batch size {args.batch_size}"
    )
    for preset in ("papers", "thesis"):
        counts = forward_passes_per_image(preset, grid * grid, config.patch_size)
        print(f"forward passes per image ({preset}): " + ", ".join(f"{k} {v}" for k, v in counts.items()))

    # Warm up: the evaluate modules are loaded once per process, and the first forward allocates.
    evaluate_faithfulness(model, pixels[:1], attributions[:1], metrics=("saco",), progress=False)
    for name in METRIC_NAMES:
        metric_module(name)

    # Engine and bare forwards alternate, best of --repeats each, so a busy machine hurts both alike. Each linear
    # backend is timed on its own: "default" (the stock forward: MKL's sgemm in PyTorch's CPU wheels) and "auto"
    # (prepacked oneDNN linears where supported, hf_fga.faithfulness.fast_linear); the bare forward uses the same
    # backend as the engine it is compared with.
    engines = {}
    for backend in ("default", "auto"):
        use_onednn = backend == "auto" and supports_onednn(model)
        packs = OneDNNLinears(model) if use_onednn else None
        engine_times, bare_times = [], []
        for _ in range(args.repeats):
            cache = ResponseCache()
            start = time.perf_counter()
            scores = evaluate_faithfulness(
                model,
                pixels,
                attributions,
                metrics=tuple(args.metrics),
                batch_size=args.batch_size,
                cache=cache,
                progress=False,
                linear_backend=backend,
            )
            engine_times.append(time.perf_counter() - start)
            forwards = len(cache)
            inputs = torch.randn(
                min(args.batch_size, forwards), 3, config.image_size, config.image_size, device=args.device
            )
            start = time.perf_counter()
            with torch.inference_mode(), packs.applied() if packs else contextlib.nullcontext():
                for done in range(0, forwards, args.batch_size):
                    model(pixel_values=inputs[: min(args.batch_size, forwards - done)])
            bare_times.append(time.perf_counter() - start)
        engine, bare = min(engine_times), min(bare_times)
        engines[backend] = engine / args.images
        label = "oneDNN linears" if use_onednn else "stock forward"
        print(f"\nlinear_backend={backend!r} ({label}):")
        print(
            f"  engine: {forwards} forwards for {args.images} images ({forwards / args.images:.0f} per image), "
            f"{engine / args.images:.2f} s per image (runs: {', '.join(f'{t:.1f}' for t in engine_times)} s)"
        )
        print(
            "  mean scores (random model, attributions): "
            + ", ".join(f"{k} {v.mean():.3f}" for k, v in scores.items())
        )
        print(
            f"  bare model forward ({label}), {forwards} inputs in batches of {args.batch_size}: "
            f"{bare / args.images:.2f} s per image (runs: {', '.join(f'{t:.1f}' for t in bare_times)} s); "
            f"engine / bare = {engine / bare:.3f} (overhead {100 * (engine / bare - 1):+.1f} %)"
        )

    start = time.perf_counter()
    flat = attributions.reshape(args.images, -1).numpy()[: args.naive_images]
    naive_forwards = naive_loop(model, pixels[: args.naive_images], flat, config.patch_size, args.metrics)
    naive = (time.perf_counter() - start) / args.naive_images
    print(
        f"\nnaive loop (stock forward): {naive_forwards / args.naive_images:.0f} forwards per image one at a time, "
        f"{naive:.2f} s per image"
    )
    print(
        f"naive / engine = {naive / engines['auto']:.2f}x (target >= 2x): batching and sharing "
        f"{naive / engines['default']:.2f}x (naive / engine with the stock forward) x oneDNN linears "
        f"{engines['default'] / engines['auto']:.2f}x"
    )


if __name__ == "__main__":
    main()
