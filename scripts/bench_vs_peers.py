"""
hf_fga against its peers, in one run on the same images and maps (CPU):

Faithfulness (Faithfulness Correlation, Pixel Flipping; papers preset, mean fill) on the bundled chest X-ray model and
on a ViT-B/16-shaped random model: seconds per image and agreement with our float32 engine (Pearson across images;
max |Δ| where fewer than 3 images) of
  (a) Quantus 0.6 at pixel level (its "mean" baseline, FC subsets of 20 patches' worth of pixels),
  (b) Quantus with patch masks (`hf_fga.integrations.quantus.PatchMaskModel`: our per-channel mean fill),
  (c) our engine in float32 (`linear_backend="auto"`), (d) our engine in bfloat16.
Quantus draws FC's subsets from NumPy's global generator, so FC agrees with ours only up to sampling noise; PF is
deterministic. The maps are TransMM's (float32).

Attribution on the ViT-B/16-shaped model with 16x Top-K SAEs on blocks 4, 5, 6: TransMM and FGA (`combined`) of the
library (one batched forward and backward) against a straightforward batch-1 implementation in the style of the
Transformer-MM reference code, written below (forward hooks that keep the attention maps, `retain_grad`, one
`backward()` per image with parameter gradients on, the relevance loop per image), each in float32 and bfloat16.

    nice -n 10 .venv/bin/python scripts/bench_vs_peers.py > docs/benchmarks/bench_vs_peers.txt
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings

import numpy as np
import torch
from transformers import ViTConfig, ViTForImageClassification

from hf_fga import SparseAutoencoder, SparseAutoencoderConfig, bundled
from hf_fga.attribution import Attributor
from hf_fga.faithfulness import evaluate_faithfulness
from hf_fga.integrations.quantus import (
    PatchMaskModel,
    QuantusModel,
    patch_curve,
    patch_metrics,
    pixel_flipping_auc,
    pixel_metrics,
)
from hf_fga.precision import autocast, bfloat16_is_native

METRICS = ("faithfulness_correlation", "pixel_flipping")


# --------------------------------------------------------------------------------------- reference (batch 1)
def reference_attribution(model, image, target, saes, kappa=0.5, cmax=10.0, precision="float32"):
    """TransMM (no `saes`) or FGA `combined`, one image, Transformer-MM style: hooks, retain_grad, backward()."""
    layers = model.vit.layers
    attentions, residuals, handles = [], {}, []

    def keep_attention(module, args, output):
        output[1].retain_grad()
        attentions.append(output[1])

    for index, layer in enumerate(layers):
        attention = next(m for m in layer.modules() if type(m).__name__.endswith("Attention"))
        handles.append(attention.register_forward_hook(keep_attention))
        if index in saes:

            def keep_residual(module, args, output, index=index):
                out = output[0] if isinstance(output, tuple) else output
                out.retain_grad()
                residuals[index] = out

            handles.append(layer.register_forward_hook(keep_residual))
    try:
        model.zero_grad()
        with autocast("cpu", precision):
            logits = model(pixel_values=image[None]).logits
        logits[0, target].backward()
    finally:
        for handle in handles:
            handle.remove()
    tokens = attentions[0].shape[-1]
    relevance = torch.eye(tokens)
    with torch.no_grad():
        for index, attention in enumerate(attentions):
            cam = (attention.grad[0].float() * attention[0].float()).clamp(min=0).mean(dim=0)
            if index in saes:
                x, g = residuals[index][0, 1:].float(), residuals[index].grad[0, 1:].float()
                with autocast("cpu", precision):
                    features = saes[index].encode(x).float()
                scores = ((features @ saes[index].decoder_in_residual_space()) * g).sum(-1)
                median = scores.median()
                mad = (scores - median).abs().median()
                normalized = (scores - median) / (1.4826 * (mad + 1e-8))
                gates = torch.ones(tokens)
                gates[1:] = torch.exp(math.log(cmax) * torch.tanh(kappa * normalized))
                cam = cam * gates[None, :]
            relevance = relevance + cam @ relevance
    side = int(math.isqrt(tokens - 1))
    model.zero_grad(set_to_none=True)
    return relevance[0, 1:].reshape(side, side)


# ------------------------------------------------------------------------------------------------ helpers
def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def agreement(test: np.ndarray, reference: np.ndarray) -> str:
    if len(test) >= 3 and np.std(test) > 0 and np.std(reference) > 0:
        return f"r = {np.corrcoef(test, reference[: len(test)])[0, 1]:.3f}"
    return f"max |Δ| = {np.max(np.abs(test - reference[: len(test)])):.4f}"


def faithfulness_table(name, model, pixels, maps, bf16_images, fc_runs=100):
    """The four ways of scoring FC and PF on `pixels (B, C, H, W)` with `maps (B, h, w)`."""
    batch, channels, size = pixels.shape[0], pixels.shape[1], pixels.shape[-1]
    patch = size // maps.shape[-1]
    results, seconds = {}, {}
    # warm-up, untimed: the evaluate modules load once per process, linear_backend="auto" times its kernels once
    evaluate_faithfulness(model, pixels[:1], maps[:1], METRICS, progress=False, fc_runs=2)
    ours, seconds["(c) engine float32"] = timed(
        lambda: evaluate_faithfulness(model, pixels, maps, METRICS, progress=False, fc_runs=fc_runs)
    )
    results["(c) engine float32"] = ours
    bf16, elapsed = timed(
        lambda: evaluate_faithfulness(
            model,
            pixels[:bf16_images],
            maps[:bf16_images],
            METRICS,
            progress=False,
            precision="bfloat16",
            fc_runs=fc_runs,
        )
    )
    results["(d) engine bfloat16"], seconds["(d) engine bfloat16"] = bf16, elapsed * batch / bf16_images

    wrapped = PatchMaskModel(model, pixels)
    x, y = wrapped.indicators(), wrapped.predictions()
    clean = wrapped.probabilities(y)
    fc, pf = patch_metrics(nr_runs=fc_runs)

    def quantus_patch():
        np.random.seed(0)
        a = maps.numpy()[:, None]
        fc_scores = fc(model=wrapped, x_batch=x, y_batch=y, a_batch=a, softmax=False, batch_size=batch, device="cpu")
        curves = pf(model=wrapped, x_batch=x, y_batch=y, a_batch=a, softmax=True, batch_size=batch, device="cpu")
        return {"faithfulness_correlation": np.asarray(fc_scores), "pixel_flipping": pixel_flipping_auc(curves, clean)}

    results["(b) Quantus patch masks"], seconds["(b) Quantus patch masks"] = timed(quantus_patch)
    plain = QuantusModel(model)
    fc_pixel, pf_pixel = pixel_metrics(patch, channels, nr_runs=fc_runs)

    def quantus_pixel():
        np.random.seed(0)
        a = maps.repeat_interleave(patch, 1).repeat_interleave(patch, 2).numpy()[:, None]
        xb = pixels.numpy()
        fc_scores = fc_pixel(
            model=plain, x_batch=xb, y_batch=y, a_batch=a, softmax=False, batch_size=batch, device="cpu"
        )
        curves = pf_pixel(model=plain, x_batch=xb, y_batch=y, a_batch=a, softmax=True, batch_size=batch, device="cpu")
        return {
            "faithfulness_correlation": np.asarray(fc_scores),
            "pixel_flipping": pixel_flipping_auc(patch_curve(curves, channels), clean),
        }

    results["(a) Quantus pixel masks"], seconds["(a) Quantus pixel masks"] = timed(quantus_pixel)

    print(
        f"\n{name}: {batch} images ({bf16_images} for bfloat16), {maps.shape[-2]}x{maps.shape[-1]} patches, "
        f"FC {fc_runs} runs of 20 patches, PF one patch per step"
    )
    print(
        f"{'scorer':<26} | {'s/img':>7} | {'vs (c)':>7} | {'FC agreement with (c)':>22} | "
        f"{'PF agreement with (c)':>22} | mean FC | mean PF"
    )
    print("-" * 118)
    reference = results["(c) engine float32"]
    for label in ("(a) Quantus pixel masks", "(b) Quantus patch masks", "(c) engine float32", "(d) engine bfloat16"):
        scores, per_image = results[label], seconds[label] / batch
        ratio = seconds[label] / seconds["(c) engine float32"]
        print(
            f"{label:<26} | {per_image:>7.2f} | {ratio:>6.2f}x | "
            f"{agreement(scores['faithfulness_correlation'], reference['faithfulness_correlation']):>22} | "
            f"{agreement(scores['pixel_flipping'], reference['pixel_flipping']):>22} | "
            f"{scores['faithfulness_correlation'].mean():>7.3f} | {scores['pixel_flipping'].mean():>7.4f}",
            flush=True,
        )
    speed = seconds["(d) engine bfloat16"] / seconds["(c) engine float32"]
    print(
        f"engine bfloat16 / float32 time: {speed:.2f} (target <= 1/1.6 = 0.625); engine bfloat16 / Quantus patch "
        f"masks: {seconds['(d) engine bfloat16'] / seconds['(b) Quantus patch masks']:.2f} (target <= 0.667)"
    )


def attribution_table(model, saes, pixels, layers):
    attr = {p: Attributor(model, saes, precision=p) for p in ("float32", "bfloat16")}
    batch = pixels.shape[0]
    rows = []
    maps = {}
    for method in ("transmm", "fga"):
        options = dict(method=method) if method == "transmm" else dict(method="fga", variant="combined", layers=layers)
        gated = {b: saes[b] for b in layers} if method == "fga" else {}
        for precision in ("float32", "bfloat16"):
            attr[precision].attribute(pixels[:1], **options)  # warm-up, packs, checks
            out, ours = timed(lambda p=precision, o=options: attr[p].attribute(pixels, **o))
            target = out.target
            reference, seconds = timed(
                lambda p=precision, t=target, g=gated: torch.stack(
                    [reference_attribution(model, pixels[b], int(t[b]), g, precision=p) for b in range(batch)]
                )
            )
            maps[(method, precision)] = out.attribution
            error = ((reference - out.attribution).norm() / out.attribution.norm()).item()
            rows.append((method, precision, ours / batch, seconds / batch, error))
    print(f"\nAttribution, ViT-B/16-shaped model, SAEs on blocks {layers}: {batch} images")
    print(
        f"{'method':<8} | {'precision':<9} | {'library s/img':>13} | {'batch-1 reference s/img':>23} | "
        f"{'speed-up':>8} | rel. diff of maps"
    )
    print("-" * 92)
    for method, precision, ours, reference, error in rows:
        print(
            f"{method:<8} | {precision:<9} | {ours:>13.3f} | {reference:>23.3f} | {reference / ours:>7.2f}x | "
            f"{error:.2e}"
        )
    for method in ("transmm", "fga"):
        fp32 = next(r for r in rows if r[:2] == (method, "float32"))
        bf16 = next(r for r in rows if r[:2] == (method, "bfloat16"))
        diff = maps[(method, "bfloat16")] - maps[(method, "float32")]
        print(
            f"{method}: library bfloat16 / float32 time {bf16[2] / fp32[2]:.2f} (target <= 0.667); relative "
            f"difference of the maps {(diff.norm() / maps[(method, 'float32')].norm()).item():.3e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundled-images", type=int, default=3)
    parser.add_argument("--vitb-images", type=int, default=1)
    parser.add_argument(
        "--vitb-layers",
        type=int,
        default=1,
        help="blocks of the ViT-B/16-shaped model in the faithfulness part (12 for the full depth)",
    )
    parser.add_argument("--bf16-images", type=int, default=1, help="images the bfloat16 engine is timed on")
    parser.add_argument("--attribution-images", type=int, default=1)
    parser.add_argument("--sae-expansion", type=int, default=16)
    parser.add_argument("--vitb-size", type=int, default=224, help="image size of the ViT-B/16-shaped model")
    parser.add_argument("--fc-runs", type=int, default=100, help="Faithfulness Correlation runs (papers: 100)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dataset", default="/work/shared/data/chest_xray_pneumonia")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"uptime: {os.popen('uptime').read().strip()}")
    print("Numbers under that load: the 2-core machine is shared by several agents; wall seconds, best of 1.")
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bfloat16: {bfloat16_is_native('cpu')}"
    )

    import datasets
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hf_fga.images import load_image

    if args.bundled_images:
        model = AutoModelForImageClassification.from_pretrained(bundled.model_dir()).eval()
        processor = AutoImageProcessor.from_pretrained(bundled.model_dir())
        rows = datasets.load_dataset(args.dataset, split="test").select(range(args.bundled_images))
        pixels = processor(images=[load_image(i) for i in rows["image"]], return_tensors="pt")["pixel_values"]
        maps = Attributor(model).attribute(pixels, method="transmm").attribution
        faithfulness_table(
            "bundled chest X-ray ViT (6 blocks, d=192)",
            model,
            pixels,
            maps,
            min(args.bf16_images, args.bundled_images),
            args.fc_runs,
        )

    torch.manual_seed(0)
    config = ViTConfig(
        num_hidden_layers=args.vitb_layers, num_labels=10, image_size=args.vitb_size, attn_implementation="eager"
    )
    small = ViTForImageClassification(config).eval()
    pixels = torch.randn(
        args.vitb_images, 3, args.vitb_size, args.vitb_size, generator=torch.Generator().manual_seed(0)
    )
    maps = Attributor(small).attribute(pixels, method="transmm").attribution
    faithfulness_table(
        f"ViT-B/16-shaped random model ({args.vitb_layers} of 12 blocks; per-image seconds scale "
        f"with the depth), {args.vitb_size} px",
        small,
        pixels,
        maps,
        min(args.bf16_images, args.vitb_images),
        args.fc_runs,
    )

    torch.manual_seed(0)
    config = ViTConfig(attn_implementation="eager")
    vitb = ViTForImageClassification(config).eval()
    layers = [4, 5, 6]
    saes = {
        b: SparseAutoencoder(
            SparseAutoencoderConfig(
                d_in=768, d_sae=args.sae_expansion * 768, activation="topk", k=128, hook_layer=b, seed=b
            )
        ).eval()
        for b in layers
    }
    pixels = torch.randn(args.attribution_images, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    attribution_table(vitb, saes, pixels, layers)
    print(f"\nuptime at the end: {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
    main()
