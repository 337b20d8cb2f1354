"""
Benchmark of one SAE training step (forward, backward, decoder-gradient projection, Adam, decoder renormalisation)
against a plain `torch.mm` of the encoder's shape `(B, d_in) @ (d_in, d_sae)`, measured in the same run.

FLOPs are counted for the algorithm each variant runs (multiply-add = 2 FLOPs):

- `harness` (`hf_fga.sae.training_loss` for Top-K): encoder forward 2·B·d·K (dense, needed to pick the top k),
  encoder backward 2·B·k·d (sparse gradient of W_enc) + K·d (b_dec), decoder forward 2·B·k·d (embedding_bag),
  decoder backward 2·B·k·d (sparse gradient of W_dec) + 2·B·d·K (gradient of the k values through one dense
  product and a gather, faster on CPU than B·k gathered dot products). No dead features here, so no AuxK term.
- `autograd-sparse-decoder`: the same forward, plain autograd backward: W_enc gradient 2·B·d·K and the gradient of
  x − b_dec 2·B·K·d (dense), decoder 6·B·k·d.
- `autograd-dense-decoder`: features scattered to a dense `(B, K)` matrix, decoder forward 2·B·K·d, backward
  4·B·K·d, encoder backward 4·B·d·K.

    python scripts/bench_sae_training.py                  # bundled-model shape: d_in 192, 16x, k 32, B 4096
    python scripts/bench_sae_training.py --d_in 768 --expansion_factor 64 --k 128
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from hf_fga.sae import SparseAutoencoder, SparseAutoencoderConfig
from hf_fga.sae.training_loss import normalize_decoder, project_decoder_gradient, sae_training_loss


def autograd_loss(sae: SparseAutoencoder, x: torch.Tensor, dense_decoder: bool) -> torch.Tensor:
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    values, indices = pre.topk(sae.config.k, dim=-1)
    values = F.relu(values)
    if dense_decoder:
        f = torch.zeros_like(pre).scatter(-1, indices, values)
        x_hat = f @ sae.W_dec + sae.b_dec
    else:
        x_hat = F.embedding_bag(indices, sae.W_dec, per_sample_weights=values, mode="sum") + sae.b_dec
    return (x - x_hat).pow(2).sum(-1).mean()


def flops(variant: str, B: int, d: int, K: int, k: int) -> float:
    sparse = 2 * B * k * d
    dense = 2 * B * d * K
    if variant == "harness":
        return dense + sparse + K * d + sparse + sparse + dense
    if variant == "autograd-sparse-decoder":
        return dense + 2 * dense + 3 * sparse
    return dense + 2 * dense + 3 * dense


def best_time(fn, reps: int) -> float:
    """Fastest of `reps` timed runs after a warm-up (the least disturbed by other load on the machine)."""
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d_in", type=int, default=192)
    parser.add_argument("--expansion_factor", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    B, d, k = args.batch_size, args.d_in, args.k
    K = d * args.expansion_factor
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sae = SparseAutoencoder(SparseAutoencoderConfig(d_in=d, d_sae=K, k=k)).to(device).train()
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, d, generator=gen).to(device)
    dead = torch.zeros(K, dtype=torch.bool, device=device)

    def step(loss_fn):
        def run():
            optimizer.zero_grad(set_to_none=True)
            loss_fn().backward()
            project_decoder_gradient(sae)
            optimizer.step()
            normalize_decoder(sae)
            sync()

        return run

    variants = {
        "harness": step(lambda: sae_training_loss(sae, x, dead, d // 2, 1 / 32).loss),
        "autograd-sparse-decoder": step(lambda: autograd_loss(sae, x, dense_decoder=False)),
        "autograd-dense-decoder": step(lambda: autograd_loss(sae, x, dense_decoder=True)),
    }
    a, w = torch.randn(B, d, device=device), torch.randn(d, K, device=device)

    def matmul():
        torch.mm(a, w)
        sync()

    mm_flops = 2 * B * d * K
    print(f"device={device} threads={torch.get_num_threads()} B={B} d_in={d} d_sae={K} k={k} reps={args.reps}")
    mm_rate = mm_flops / best_time(matmul, args.reps) / 1e9
    print(f"torch.mm ({B}x{d}) @ ({d}x{K}): {mm_rate:.1f} GFLOP/s")
    print(f"{'variant':<26}{'s/step':>9}{'tokens/s':>12}{'GFLOP/step':>12}{'GFLOP/s':>10}{'% of mm':>9}")
    for name, fn in variants.items():
        seconds = best_time(fn, args.reps)
        mm_rate_now = mm_flops / best_time(matmul, max(3, args.reps // 2)) / 1e9
        rate = flops(name, B, d, K, k) / seconds / 1e9
        print(
            f"{name:<26}{seconds:>9.4f}{B / seconds:>12,.0f}{flops(name, B, d, K, k) / 1e9:>12.2f}{rate:>10.1f}"
            f"{100 * rate / mm_rate_now:>8.0f}%"
        )


if __name__ == "__main__":
    main()
