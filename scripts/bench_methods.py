"""
Benchmark the own-pass attribution methods (gradient × input, Integrated Gradients, CAAP) and Grad-CAM on CPU, as
ratios to the passes they are built from, measured in the same run with the same linear backend:

- gradient × input and Grad-CAM against one forward + input-gradient backward of the batch (parameters frozen);
  target: ≤ 1.3×;
- Integrated Gradients against `steps` × that forward + backward per image, measured at IG's rows per pass
  (`internal_batch_size`), so the batch gain of the larger pass is in the reference; target: ≤ 1.3×;
- CAAP against N × one run of blocks a..L−1 and the head per image, measured at CAAP's rows per pass
  (`batch_size`); target: ≤ 1.2×.

Models: the bundled classifier (`hf_fga.bundled.model_dir()`) and a ViT-B/16-shaped random ViT. CPU time
(`time.process_time`, one thread by default) is what the work costs; wall time also counts waiting for a core on a
shared machine. Each setting is timed `--repeats` times, interleaved with its reference, and the best is kept.

Usage: `python scripts/bench_methods.py [--models bundled vit-b16] [--batch-sizes 1 8] [--repeats 1] [--threads 1]`
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from transformers import ViTConfig, ViTForImageClassification

from hf_fga.attribution.block_runs import run_from_block
from hf_fga.attribution.capture import install_hooks, prepared_model, run_capture
from hf_fga.attribution.methods.caap import DEFAULT_BATCH_SIZE, caap_model, default_block_range
from hf_fga.attribution.methods.grad_cam import grad_cam
from hf_fga.attribution.methods.gradient_x_input import gradient_x_input_model
from hf_fga.attribution.methods.integrated_gradients import (
    DEFAULT_INTERNAL_BATCH_SIZE,
    DEFAULT_STEPS,
    integrated_gradients_model,
)
from hf_fga.attribution.targets import model_logits, vision_layers
from hf_fga.bundled import model_dir
from hf_fga.onednn import model_linears


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
    with prepared_model(model) as handles, torch.inference_mode():
        store: dict = {}
        install_hooks(model, handles, {start: "resid_pre"}, store, capture_attentions=False)
        model_logits(model, pixels[:1])
    hidden = store["residuals"][(start, "resid_pre")].expand(rows, -1, -1).contiguous()

    def run():
        with prepared_model(model), model_linears(model, backend, lambda: model_logits(model, pixels[:1])):
            with torch.inference_mode():
                run_from_block(model, hidden, start)

    return run


def grad_cam_run(model, pixels: torch.Tensor) -> Callable[[], object]:
    patch = model.config.patch_size
    grid = (pixels.shape[2] // patch, pixels.shape[3] // patch)

    def run():
        with prepared_model(model) as handles:
            capture = run_capture(model, handles, pixels, None, {})
        grad_cam(capture.attentions[-1], capture.attention_grads[-1], grid)

    return run


def bench_model(name: str, model, batch_sizes: list[int], repeats: int, backend: str) -> None:
    config = model.config
    patches = (config.image_size // config.patch_size) ** 2
    start = default_block_range(len(vision_layers(model)))[0]
    print(
        f"\n{name}: {config.num_hidden_layers} blocks, d={config.hidden_size}, {config.image_size} px, patch "
        f"{config.patch_size} (N={patches}); linear_backend={backend!r}; IG {DEFAULT_STEPS} steps, "
        f"internal_batch_size {DEFAULT_INTERNAL_BATCH_SIZE}; CAAP blocks from a={start}, batch_size "
        f"{DEFAULT_BATCH_SIZE}"
    )
    print(f"{'batch':>5} | {'method':<20} | {'CPU s/img':>9} | {'wall s/img':>10} | {'reference':<32} | {'ratio':>5}")
    print("-" * 98)
    pixels_all = torch.randn(max(batch_sizes), 3, config.image_size, config.image_size)
    forward_backward(model, pixels_all[:1], backend)()  # warm-up: allocator, oneDNN packs and their check
    cheap = max(repeats, 3)  # the one-pass settings are short: more repeats for a stable best
    for batch in batch_sizes:
        pixels = pixels_all[:batch]
        ig_rows = max(batch, DEFAULT_INTERNAL_BATCH_SIZE // batch * batch)
        ig_pixels = pixels_all[:1].expand(ig_rows, -1, -1, -1).contiguous()
        references = {
            "fwd+bwd": (timed(forward_backward(model, pixels, backend), cheap), batch),
            f"{DEFAULT_STEPS} x fwd+bwd @{ig_rows}": (
                timed(forward_backward(model, ig_pixels, backend), repeats),
                ig_rows / DEFAULT_STEPS,
            ),
            f"{patches} x blocks {start}.. @{DEFAULT_BATCH_SIZE}": (
                timed(blocks_from_run(model, pixels, start, DEFAULT_BATCH_SIZE, backend), repeats),
                DEFAULT_BATCH_SIZE / patches,
            ),
        }
        runs = {
            "gradient-x-input": (
                lambda pixels=pixels: gradient_x_input_model(model, pixels, linear_backend=backend),
                "fwd+bwd",
            ),
            "grad-cam": (grad_cam_run(model, pixels), "fwd+bwd"),
            "integrated-gradients": (
                lambda pixels=pixels: integrated_gradients_model(model, pixels, linear_backend=backend),
                f"{DEFAULT_STEPS} x fwd+bwd @{ig_rows}",
            ),
            "caap": (
                lambda pixels=pixels: caap_model(model, pixels, linear_backend=backend),
                f"{patches} x blocks {start}.. @{DEFAULT_BATCH_SIZE}",
            ),
        }
        for method, (run, reference) in runs.items():
            (cpu, wall) = timed(run, cheap if reference == "fwd+bwd" else repeats)
            (ref_cpu, _), per = references[reference]
            ratio = (cpu / batch) / (ref_cpu / per)
            print(
                f"{batch:>5} | {method:<20} | {cpu / batch:>9.3f} | {wall / batch:>10.3f} | "
                f"{reference + f' {ref_cpu / per:.3f} s':<32} | {ratio:>5.2f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["bundled", "vit-b16"], choices=["bundled", "vit-b16"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
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
        bench_model(name, model, args.batch_sizes, args.repeats, args.linear_backend)


if __name__ == "__main__":
    main()
