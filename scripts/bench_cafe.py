"""
Benchmark CaFE's feature explanations (`hf_fga.cafe.explain_feature`) on CPU: F features of one image explained in one
call (one forward pass that stops at the SAE's block, one backward pass per feature through the retained graph), as
seconds per feature and as a ratio to one forward + input-gradient backward of the model's logit in the same run
(parameters frozen, same linear backend). Target: ≤ 0.5 at 16 features.

Models: the bundled classifier with its SAE of each requested block, and a ViT-B/16-shaped random ViT with a random
64× ReLU SAE (768 → 49,152). The features are the F largest on the image (so every one fires). CPU time
(`time.process_time`, one thread by default) is what the work costs; wall time also counts waiting for a core on a
shared machine. Each setting is timed `--repeats` times and the best is kept.

Usage: `python scripts/bench_cafe.py [--models bundled vit-b16] [--features 1 16] [--methods gradient-x-input]
[--repeats 3] [--threads 1]`
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

# the same timing and forward+backward reference as the methods benchmark (run as `python scripts/bench_cafe.py`)
from bench_methods import forward_backward, timed
from transformers import ViTConfig, ViTForImageClassification

from hf_fga.bundled import model_dir, sae_dir
from hf_fga.cafe import explain_feature
from hf_fga.introspection import prepared_model, residual_stream
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


def bench(name: str, model, saes: dict[int, SparseAutoencoder], counts, methods, repeats: int, backend: str) -> None:
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} CPU thread(s); best of {args.repeats}; ratios use CPU time")
    for name in args.models:
        if name == "bundled":
            model = ViTForImageClassification.from_pretrained(model_dir(), attn_implementation="eager").eval()
            saes = load_saes(str(sae_dir()), layers=args.bundled_blocks)
        else:
            model = ViTForImageClassification(ViTConfig(attn_implementation="eager")).eval()
            saes = {block: random_sae(768, 64, block) for block in args.vit_b16_blocks}
        bench(name, model, saes, args.features, args.methods, args.repeats, args.linear_backend)


if __name__ == "__main__":
    main()
