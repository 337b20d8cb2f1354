"""
Does the oneDNN linear layer (`linear_backend`, `hf_fga.onednn`) pay for its packing and memory on the CPU at hand?

Prints, on a ViT-B/16-shaped random model:

1. GFLOP/s of the MLP matmul (tokens × 768 → 3072 and back) with PyTorch's stock `F.linear` (MKL sgemm in the CPU
   wheels) and with a prepacked oneDNN weight, and what the run-time choice of `linear_backend="auto"`
   (`hf_fga.onednn.prefers_onednn`) decides here;
2. for fresh processes that explain 1, 2 and 16 batches (TransMM, batch 8 by default) with `linear_backend="onednn"`
   and `"default"`: wall seconds of the first call (packing and the one-time check included) and per later call, the
   total, and the peak resident memory of the process (`resource.getrusage(...).ru_maxrss`).

    nice -n 10 .venv/bin/python scripts/bench_onednn.py [--batch 8] [--calls 1 2 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def matmul_rates(tokens: int, repeats: int = 5) -> dict[str, float]:
    """Best GFLOP/s of the two MLP matmuls of ViT-B/16 with the stock kernel and with a oneDNN pack."""
    from hf_fga.onednn import PackedLinear

    gen = torch.Generator().manual_seed(0)
    rates: dict[str, float] = {"stock": 0.0, "onednn": 0.0}
    for d_in, d_out in ((768, 3072), (3072, 768)):
        x = torch.randn(tokens, d_in, generator=gen)
        weight, bias = torch.randn(d_out, d_in, generator=gen), torch.randn(d_out, generator=gen)
        pack = PackedLinear(weight, bias)
        flops = 2 * tokens * d_in * d_out
        best = {"stock": float("inf"), "onednn": float("inf")}
        with torch.inference_mode():
            for _ in range(repeats):  # interleaved, so that load hits both alike
                for name in best:
                    start = time.perf_counter()
                    F.linear(x, weight, bias) if name == "stock" else pack(x)
                    best[name] = min(best[name], time.perf_counter() - start)
        for name in rates:
            rates[name] += flops / best[name] / 1e9 / 2
    return rates


def child(backend: str, calls: int, batch: int, threads: int) -> None:
    """One process: build the model, explain `calls` batches, print timings and peak RSS as JSON."""
    import resource

    from transformers import ViTConfig, ViTForImageClassification

    from hf_fga.attribution import FeatureGradientAttribution

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(attn_implementation="eager")).eval()
    pixels = torch.randn(batch, 3, 224, 224)
    attr = FeatureGradientAttribution(model, linear_backend=backend)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        attr.attribute(pixels, method="transmm")
        times.append(time.perf_counter() - start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"times": times, "peak_mib": peak_mib, "onednn": attr.onednn_active}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="images per attribution call")
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 2, 16], help="calls per process")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.batch, args.threads)
        return

    from hf_fga.onednn import MIN_SPEEDUP, onednn_speedup, prefers_onednn

    torch.set_num_threads(args.threads)
    print(f"uptime: {os.popen('uptime').read().strip()}  (numbers under that load; the machine is shared)")
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{args.threads} thread(s)"
    )
    for tokens in (197, 197 * args.batch):
        rates = matmul_rates(tokens)
        print(
            f"MLP matmuls, {tokens} tokens: stock {rates['stock']:.1f} GFLOP/s, oneDNN {rates['onednn']:.1f} "
            f"GFLOP/s, ratio {rates['onednn'] / rates['stock']:.2f}"
        )
    weight = torch.randn(3072, 768)
    start = time.perf_counter()
    speedup = onednn_speedup(tuple(weight.shape))
    choice = prefers_onednn(weight)
    print(
        f'linear_backend="auto" on this CPU: {"oneDNN" if choice else "stock kernels"} (rule of the CPU); measured '
        f"oneDNN speed-up on the MLP weight {speedup:.2f}x in {1000 * (time.perf_counter() - start):.0f} ms (packs "
        f"pay from {MIN_SPEEDUP}x)"
    )

    print(f"\nTransMM, ViT-B/16, batch {args.batch}, fresh process per row (wall seconds):")
    print(
        f"{'calls':>5} | {'backend':>7} | {'first call':>10} | {'later calls':>11} | {'total':>7} | "
        f"{'s/img':>6} | {'peak RSS MiB':>12}"
    )
    print("-" * 79)
    for calls in args.calls:
        for backend in ("onednn", "default"):
            command = [
                sys.executable,
                __file__,
                "--child",
                backend,
                str(calls),
                "--batch",
                str(args.batch),
                "--threads",
                str(args.threads),
            ]
            result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
            times = result["times"]
            later = sum(times[1:]) / (len(times) - 1) if len(times) > 1 else float("nan")
            print(
                f"{calls:>5} | {backend:>7} | {times[0]:>10.2f} | {later:>11.2f} | {sum(times):>7.1f} | "
                f"{sum(times) / (calls * args.batch):>6.3f} | {result['peak_mib']:>12.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
