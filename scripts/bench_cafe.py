"""
Benchmark CaFE's feature explanations (`hf_fga.cafe.explain_feature`) on CPU: F features of one image explained in one
call (one forward pass that stops at the SAE's block, one backward pass per feature through the retained graph), as
seconds per feature and as a ratio to one forward + backward of the model in the same run. Target: ≤ 0.5 at 16
features.

The reference is what a user runs for a gradient attribution: one forward of the model (every block and the head) and
one backward of the argmax logit to the pixels, input gradients only (parameters frozen, as every attribution of this
package runs them), through the model's stock layers (the patch convolution's pixel-space backward included), with the
same linear backend. CaFE's backward passes stop at the patch embedding's output and contract its gradient per patch in
closed form (`hf_fga.cafe.explain.patch_embedding_leaf`); the profile after each table times the pieces: the
reference's forward and backward, CaFE's forward to the block, and one feature's backward to the patch embedding and,
for comparison, to the pixels. Per feature a call costs (forward to the block) / F + (one backward to block ℓ), so
at the last block the ratio cannot fall below (backward) / (forward + backward) of the model itself.

Models: the bundled classifier with its SAE of each requested block, and a ViT-B/16-shaped random ViT with a random
64× ReLU SAE (768 → 49,152). The features are the F largest on the image (so every one fires). CPU time
(`time.process_time`, one thread by default) is what the work costs; wall time also counts waiting for a core on a
shared machine. Each setting is timed `--repeats` times and the best is kept.

Usage: `python scripts/bench_cafe.py [--models bundled vit-b16] [--features 1 16] [--methods gradient-x-input]
[--repeats 3] [--threads 1] [--no-profile]`
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

# the same timing and forward+backward reference as the methods benchmark (run as `python scripts/bench_cafe.py`)
from bench_methods import forward_backward, timed
from transformers import ViTConfig, ViTForImageClassification

from hf_fga.bundled import model_dir, sae_dir
from hf_fga.cafe import explain_feature
from hf_fga.cafe.explain import patch_convolution, patch_embedding_leaf
from hf_fga.faithfulness.fills import patch_grid
from hf_fga.introspection import model_logits, prepared_model, residual_stream
from hf_fga.onednn import model_linears
from hf_fga.sae import SparseAutoencoder, SparseAutoencoderConfig, load_saes


def random_sae(d_in: int, expansion: int, block: int) -> SparseAutoencoder:
    """A ReLU SAE with random unit-norm directions (the library's initialisation) and a small negative bias."""
    config = SparseAutoencoderConfig(d_in=d_in, d_sae=d_in * expansion, activation="relu", hook_layer=block)
    sae = SparseAutoencoder(config).eval()
    with torch.no_grad():
        sae.b_enc.fill_(-0.1)
    return sae


def top_features(model, sae: SparseAutoencoder, pixels: torch.Tensor, count: int) -> list[int]:
    """The `count` features with the largest activation anywhere on the image."""
    with prepared_model(model), torch.no_grad():
        x = residual_stream(model, pixels, sae.config.hook_layer, sae.config.hook_point)
        return sae.feature_activations(x[0]).amax(dim=0).topk(count).indices.tolist()


def backward_seconds(values: torch.Tensor, wrt: torch.Tensor, count: int) -> float:
    """CPU seconds per backward pass of `count` features' values `(F,)` to `wrt`, through the retained graph."""
    start = time.process_time()
    for f in range(count):
        torch.autograd.grad(values[f], wrt, retain_graph=True)
    return (time.process_time() - start) / count


def profile(model, sae: SparseAutoencoder, pixels: torch.Tensor, count: int, backend: str, repeats: int) -> dict:
    """
    CPU seconds of the pieces (best of `repeats`): the reference's forward of the logit (with its graph), CaFE's
    forward to the SAE's block (with its graph, the patch embedding's output as the leaf), and one feature's
    backward from there to the patch embedding's output and to the pixels.
    """
    block, point = sae.config.hook_layer, sae.config.hook_point
    features = torch.tensor(top_features(model, sae, pixels, count))
    conv = patch_convolution(model, patch_grid(model, pixels), pixels.shape[1])
    stock = partial(model_logits, model, pixels[:1])
    best = {"forward": float("inf"), "block": float("inf"), "to_embedding": float("inf"), "to_pixels": float("inf")}
    with prepared_model(model), model_linears(model, backend, stock, backward=True):
        for _ in range(repeats):
            x = pixels.detach().requires_grad_(True)
            best["forward"] = min(best["forward"], timed(partial(model_logits, model, x), 1)[0])
            with patch_embedding_leaf(conv, x) as seen:
                start = time.process_time()
                tokens = sae.feature_activations(residual_stream(model, x, block, point)[0], features)
                best["block"] = min(best["block"], time.process_time() - start)
            values = tokens.amax(dim=0)
            leaf = x if seen["leaf"] is None else seen["leaf"]  # no plain patch convolution: the pixels
            best["to_embedding"] = min(best["to_embedding"], backward_seconds(values, leaf, count))
            tokens = sae.feature_activations(residual_stream(model, x, block, point)[0], features)
            best["to_pixels"] = min(best["to_pixels"], backward_seconds(tokens.amax(dim=0), x, count))
    return best


def print_profile(profiles: dict[int, dict], reference: float, count: int) -> None:
    forward = next(iter(profiles.values()))["forward"]
    print(
        f"profile (CPU s, best of the repeats): reference = forward {forward:.3f} + backward {reference - forward:.3f}"
        f"; CaFE at F={count}"
    )
    print(
        f"{'block':>5} | {'forward to block':>16} | {'backward/feature':>16} | {'(to the pixels)':>15} | "
        f"{'ratio = (fwd/F + bwd) / ref':>27} | {'floor bwd / ref':>15}"
    )
    print("-" * 111)
    for block, p in profiles.items():
        ratio = (p["block"] / count + p["to_embedding"]) / reference
        print(
            f"{block:>5} | {p['block']:>16.3f} | {p['to_embedding']:>16.3f} | {p['to_pixels']:>15.3f} | "
            f"{ratio:>27.3f} | {p['to_embedding'] / reference:>15.3f}",
            flush=True,
        )


def bench(
    name: str, model, saes: dict[int, SparseAutoencoder], counts, methods, repeats: int, backend: str, pieces: bool
) -> None:
    config = model.config
    pixels = torch.randn(1, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(0))
    forward_backward(model, pixels, backend)()  # warm-up: allocator, oneDNN packs and their check
    reference = timed(forward_backward(model, pixels, backend), max(repeats, 3))[0]
    print(
        f"\n{name}: {config.num_hidden_layers} blocks, d={config.hidden_size}, {config.image_size} px, patch "
        f"{config.patch_size}; linear_backend={backend!r}; one forward + backward of the logit: {reference:.3f} s CPU"
    )
    print(
        f"{'block':>5} | {'d_sae':>6} | {'method':<18} | {'F':>3} | {'CPU s/feature':>13} | "
        f"{'wall s/feature':>14} | ratio"
    )
    print("-" * 86, flush=True)
    for block, sae in saes.items():
        for method in methods:
            for count in counts:
                features = top_features(model, sae, pixels, count)
                run = partial(explain_feature, model, sae, pixels, features, method=method, linear_backend=backend)
                cpu, wall = timed(run, repeats)
                print(
                    f"{block:>5} | {sae.config.d_sae:>6} | {method:<18} | {count:>3} | {cpu / count:>13.3f} | "
                    f"{wall / count:>14.3f} | {cpu / count / reference:.3f}",
                    flush=True,
                )
    if pieces:
        count = max(counts)
        print_profile(
            {block: profile(model, sae, pixels, count, backend, repeats) for block, sae in saes.items()},
            reference,
            count,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["bundled", "vit-b16"], choices=["bundled", "vit-b16"])
    parser.add_argument("--features", type=int, nargs="+", default=[1, 16], help="features explained per call")
    parser.add_argument("--methods", nargs="+", default=["gradient-x-input"])
    parser.add_argument("--bundled-blocks", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--vit-b16-blocks", type=int, nargs="+", default=[5, 11])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (the best is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--linear-backend", default="auto", choices=["auto", "default"])
    parser.add_argument("--no-profile", action="store_true", help="skip the timing of the pieces after each table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"{torch.get_num_threads()} CPU thread(s); best of {args.repeats}; ratios use CPU time; reference = one "
        "forward of the model + one input-gradient backward of the argmax logit to the pixels (parameters frozen, no "
        "parameter gradients), stock layers"
    )
    for name in args.models:
        if name == "bundled":
            model = ViTForImageClassification.from_pretrained(model_dir(), attn_implementation="eager").eval()
            saes = load_saes(str(sae_dir()), layers=args.bundled_blocks)
        else:
            model = ViTForImageClassification(ViTConfig(attn_implementation="eager")).eval()
            saes = {block: random_sae(768, 64, block) for block in args.vit_b16_blocks}
        bench(name, model, saes, args.features, args.methods, args.repeats, args.linear_backend, not args.no_profile)


if __name__ == "__main__":
    main()
