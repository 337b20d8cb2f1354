"""
Benchmark the backward rules on CPU: gradient × input with and without LibraGrad, CP-LRP and AttnLRP, each as a ratio
to one plain forward + input-gradient backward of the same batch measured in the same run (target: ≤ 1.3×).

Every setting runs the same pass (prepared model, frozen parameters, the same linear kernels: prepacked oneDNN when
the model is float32 on CPU, else PyTorch's stock ones), differing only in the backward rules entered around it
([`hf_fga.attribution.rules`]) and the patch sums of x·∂y/∂x. Models: the bundled classifier and a ViT-B/16-shaped
random ViT. CPU time (`time.process_time`, one thread by default) is what the work costs; wall time also counts
waiting for a core on a shared machine. The settings are timed interleaved, `--repeats` times, best kept.

Usage: `python scripts/bench_lrp.py [--models bundled vit-b16] [--batch-sizes 1 8] [--repeats 3] [--threads 1]`
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable

import torch
from transformers import ViTConfig, ViTForImageClassification

from hf_fga.attribution.rules import RULE_SETS
from hf_fga.bundled import model_dir
from hf_fga.introspection import model_logits, prepared_model
from hf_fga.onednn import OneDNNLinears, supports_onednn

SETTINGS = {"fwd+bwd": None, "gradient-x-input": None, **{name: name for name in RULE_SETS}}


def pass_under(model, packs: OneDNNLinears | None, pixels: torch.Tensor, rules: str | None, patch: int) -> Callable:
    """One forward and one input-gradient backward of the argmax logits, under `rules`; patch sums unless fwd+bwd."""

    def run(sums: bool = True) -> None:
        with prepared_model(model), packs.applied() if packs is not None else contextlib.nullcontext():
            with RULE_SETS[rules](model) if rules is not None else contextlib.nullcontext():
                x = pixels.detach().requires_grad_(True)
                logits = model_logits(model, x)
                y = logits.gather(1, logits.detach().argmax(-1, keepdim=True)).sum()
                (grad,) = torch.autograd.grad(y, x)
        if sums:
            b, c, h, w = x.shape
            (x.detach() * grad).reshape(b, c, h // patch, patch, w // patch, patch).sum((1, 3, 5))

    return run


def bench_model(name: str, model, batch_sizes: list[int], repeats: int) -> None:
    config = model.config
    packs = OneDNNLinears(model, backward=True) if supports_onednn(model) else None
    kernels = "prepacked oneDNN linears" if packs is not None else "stock kernels"
    print(
        f"\n{name}: {config.num_hidden_layers} blocks, d={config.hidden_size}, {config.image_size} px, patch "
        f"{config.patch_size}; {kernels}"
    )
    print(f"{'batch':>5} | {'setting':<34} | {'CPU s/img':>9} | {'wall s/img':>10} | {'ratio to fwd+bwd':>16}")
    print("-" * 88)
    pixels_all = torch.randn(max(batch_sizes), 3, config.image_size, config.image_size)
    for batch in batch_sizes:
        pixels = pixels_all[:batch]
        runs = {
            setting: pass_under(model, packs, pixels, rules, config.patch_size) for setting, rules in SETTINGS.items()
        }
        for setting, run in runs.items():
            run(setting != "fwd+bwd")  # warm-up: allocator, kernels
        best = {setting: (float("inf"), float("inf")) for setting in runs}
        for _ in range(repeats):
            for setting, run in runs.items():
                cpu, wall = time.process_time(), time.perf_counter()
                run(setting != "fwd+bwd")
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                best[setting] = (min(best[setting][0], cpu), min(best[setting][1], wall))
        for setting, (cpu, wall) in best.items():
            label = setting if setting in ("fwd+bwd", "gradient-x-input") else f"gradient-x-input, {setting} rules"
            print(
                f"{batch:>5} | {label:<34} | {cpu / batch:>9.3f} | {wall / batch:>10.3f} | "
                f"{cpu / best['fwd+bwd'][0]:>16.3f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["bundled", "vit-b16"], choices=["bundled", "vit-b16"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (the best is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} CPU thread(s); best of {args.repeats}; ratios use CPU time")
    for name in args.models:
        if name == "bundled":
            model = ViTForImageClassification.from_pretrained(model_dir(), attn_implementation="eager").eval()
        else:
            model = ViTForImageClassification(ViTConfig(attn_implementation="eager")).eval()
        bench_model(name, model, args.batch_sizes, args.repeats)


if __name__ == "__main__":
    main()
