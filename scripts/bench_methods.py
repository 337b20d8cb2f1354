"""
Benchmark the own-pass attribution methods (gradient × input, Integrated Gradients, CAAP) and Grad-CAM on CPU, as
ratios to the passes they are built from, measured in the same run with the same linear backend:

- gradient × input and Grad-CAM, and CP-LRP, AttnLRP and gradient × input with `libragrad=True`
  (`gradient-x-input+libragrad`), against one forward + input-gradient backward of the batch (parameters frozen);
  target: ≤ 1.3×;
- Integrated Gradients against `steps` × that forward + backward per image, measured at IG's rows per pass
  (`internal_batch_size`), so the batch gain of the larger pass is in the reference; target: ≤ 1.3×;
- CAAP against N × one run of blocks a..L−1 and the head per image, measured at CAAP's rows per pass
  (`batch_size`); target: ≤ 1.2×.

Every method runs through the public `Attributor(model).attribute(pixel_values, method=...)`. Models: the bundled
classifier (`hf_fga.bundled.model_dir()`) and a ViT-B/16-shaped random ViT. CPU time (`time.process_time`, one thread
by default) is what the work costs; wall time also counts waiting for a core on a shared machine. Each setting is
timed `--repeats` times (the one-pass settings at least 3 times) and the best is kept.

Usage: `python scripts/bench_methods.py [--models bundled vit-b16] [--batch-sizes 1 8] [--methods ...] [--repeats 1]
[--threads 1]`
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch
from transformers import ViTConfig, ViTForImageClassification

from hf_fga.attribution import Attributor
from hf_fga.attribution.methods.caap import DEFAULT_BATCH_SIZE, default_block_range
from hf_fga.attribution.methods.integrated_gradients import DEFAULT_INTERNAL_BATCH_SIZE, DEFAULT_STEPS
from hf_fga.bundled import model_dir
from hf_fga.introspection import model_logits, prepared_model, residual_hooks, run_from_block, vision_layers
from hf_fga.onednn import model_linears

METHODS = (
    "gradient-x-input",
    "gradient-x-input+libragrad",
    "cp-lrp",
    "attnlrp",
    "grad-cam",
    "integrated-gradients",
    "caap",
)


def timed(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best (CPU seconds, wall seconds) of `repeats` calls (the caller warms up the model once beforehand)."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        run()
        best = (min(best[0], time.process_time() - cpu), min(best[1], time.perf_counter() - wall))
    return best


def forward_backward(model, pixels: torch.Tensor, backend: str) -> Callable[[], object]:
    """One forward and one input-gradient backward of the argmax logits (parameters frozen), nothing else."""

    def run():
        with prepared_model(model), model_linears(model, backend, lambda: model_logits(model, pixels[:1]), True):
            x = pixels.detach().requires_grad_(True)
            logits = model_logits(model, x)
            y = logits.gather(1, logits.detach().argmax(-1, keepdim=True)).sum()
            torch.autograd.grad(y, x)

    return run


def blocks_from_run(model, pixels: torch.Tensor, start: int, rows: int, backend: str) -> Callable[[], object]:
    """Blocks start..L−1 and the head on `rows` residual streams, the unit of CAAP's patched runs."""
    with prepared_model(model), torch.inference_mode(), residual_hooks(model, {start: "resid_pre"}) as seen:
        model_logits(model, pixels[:1])
    hidden = seen[start].expand(rows, -1, -1).contiguous()

    def run():
        with prepared_model(model), model_linears(model, backend, lambda: model_logits(model, pixels[:1])):
            with torch.inference_mode():
                run_from_block(model, hidden, start)

    return run


def bench_model(name: str, model, batch_sizes: list[int], methods: list[str], repeats: int, backend: str) -> None:
    config = model.config
    patches = (config.image_size // config.patch_size) ** 2
    start = default_block_range(len(vision_layers(model)))[0]
    attributor = Attributor(model, linear_backend=backend)
    print(
        f"\n{name}: {config.num_hidden_layers} blocks, d={config.hidden_size}, {config.image_size} px, patch "
        f"{config.patch_size} (N={patches}); linear_backend={backend!r}; IG {DEFAULT_STEPS} steps, "
        f"internal_batch_size {DEFAULT_INTERNAL_BATCH_SIZE}; CAAP blocks from a={start}, batch_size "
        f"{DEFAULT_BATCH_SIZE}"
    )
    print(f"{'batch':>5} | {'method':<26} | {'CPU s/img':>9} | {'wall s/img':>10} | {'reference':<32} | {'ratio':>5}")
    print("-" * 104, flush=True)
    pixels_all = torch.randn(max(batch_sizes), 3, config.image_size, config.image_size)
    forward_backward(model, pixels_all[:1], backend)()  # warm-up: allocator, oneDNN packs and their check
    cheap = max(repeats, 3)  # the one-pass settings are short: more repeats for a stable best
    for batch in batch_sizes:
        pixels = pixels_all[:batch]
        ig_rows = max(batch, DEFAULT_INTERNAL_BATCH_SIZE // batch * batch)
        one_pass = ("fwd+bwd", partial(forward_backward, model, pixels, backend), cheap, batch)
        references = {
            **{method: one_pass for method in ("gradient-x-input", "cp-lrp", "attnlrp", "grad-cam")},
            "integrated-gradients": (
                f"{DEFAULT_STEPS} x fwd+bwd @{ig_rows}",
                partial(forward_backward, model, pixels_all[:1].expand(ig_rows, -1, -1, -1).contiguous(), backend),
                repeats,
                ig_rows / DEFAULT_STEPS,
            ),
            "caap": (
                f"{patches} x blocks {start}.. @{DEFAULT_BATCH_SIZE}",
                partial(blocks_from_run, model, pixels, start, DEFAULT_BATCH_SIZE, backend),
                repeats,
                DEFAULT_BATCH_SIZE / patches,
            ),
        }
        measured: dict[str, float] = {}
        for setting in methods:
            method, _, modifier = setting.partition("+")  # "<method>+libragrad": with LibraGrad's backward rules
            label, make, times, per = references[method]
            if label not in measured:
                measured[label] = timed(make(), times)[0] / per
            run = partial(attributor.attribute, pixels, method=method, libragrad=modifier == "libragrad")
            cpu, wall = timed(run, cheap if per == batch else repeats)
            ratio = (cpu / batch) / measured[label]
            print(
                f"{batch:>5} | {setting:<26} | {cpu / batch:>9.3f} | {wall / batch:>10.3f} | "
                f"{label + f' {measured[label]:.3f} s':<32} | {ratio:>5.2f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["bundled", "vit-b16"], choices=["bundled", "vit-b16"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per setting (the best is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--linear-backend", default="auto", choices=["auto", "default"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"{torch.get_num_threads()} CPU thread(s); best of {args.repeats} (one-pass settings: of "
        f"{max(args.repeats, 3)}); ratios use CPU time"
    )
    for name in args.models:
        if name == "bundled":
            model = ViTForImageClassification.from_pretrained(model_dir(), attn_implementation="eager").eval()
        else:
            model = ViTForImageClassification(ViTConfig(attn_implementation="eager")).eval()
        bench_model(name, model, args.batch_sizes, args.methods, args.repeats, args.linear_backend)


if __name__ == "__main__":
    main()
