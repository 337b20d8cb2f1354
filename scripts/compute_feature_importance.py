"""
The feature importances of the `selective` FGA variant (method.md §10) on a set of reference images: per gated block
and SAE feature, the mean over the images of Σ_t |f_t^k (Dᵀ g_t)_k| (target: the predicted class), written as a
safetensors file for `scripts/evaluate_faithfulness.py --feature_importance`. The images are chosen exactly as the
evaluation tool chooses them (`--include_ids`, `--limit`, `--seed`), so the validation run and its S_ℓ share images.

    python scripts/compute_feature_importance.py --dataset /work/shared/data/chest_xray_pneumonia --split train \
        --id_column file_name --include_ids hf_fga/bundled/splits.json --ids_key validation_file_names --limit 256 \
        --seed 0 --model hf_fga/bundled/model --sae hf_fga/bundled/saes --layers 0,1,2 \
        --output docs/results/chest_xray_controls/feature_importance.safetensors
"""

from __future__ import annotations

import argparse

import torch

from hf_fga.attribution import Attributor
from hf_fga.attribution.feature_selection import compute_feature_importance, save_feature_importance
from hf_fga.evaluation.arguments import DataArguments
from hf_fga.evaluation.runner import load_split, select_images
from hf_fga.images import load_image
from hf_fga.sae import load_saes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("dataset", "split", "id_column", "include_ids", "ids_key", "model", "sae", "output"):
        parser.add_argument(f"--{name}", required=name in ("dataset", "model", "sae", "output"))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", required=True, help="gated blocks, e.g. 0,1,2")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    data = DataArguments(
        dataset=args.dataset,
        split=args.split or "test",
        id_column=args.id_column,
        include_ids=args.include_ids,
        ids_key=args.ids_key,
        limit=args.limit,
        seed=args.seed,
    )
    dataset = load_split(data)
    chosen = select_images(dataset, data)
    model = AutoModelForImageClassification.from_pretrained(args.model).eval()
    processor = AutoImageProcessor.from_pretrained(args.model)
    layers = [int(b) for b in args.layers.split(",")]
    attributor = Attributor(model, load_saes(args.sae, layers=layers))
    rows = [index for index, _ in chosen]

    def batches():
        for start in range(0, len(rows), args.batch_size):
            images = dataset.select(rows[start : start + args.batch_size])["image"]
            yield processor(images=[load_image(i) for i in images], return_tensors="pt")["pixel_values"]

    importance = compute_feature_importance(attributor, batches(), layers)
    description = (
        f"{args.dataset} {data.split}: {len(rows)} images (ids {args.include_ids}:{args.ids_key}, "
        f"limit {args.limit}, seed {args.seed})"
    )
    save_feature_importance(
        importance,
        args.output,
        {b: attributor.hook_point_of(b) for b in layers},
        model_name=args.model,
        sae_name=args.sae,
        images=description,
    )
    print(f"wrote {args.output}: {description}")


if __name__ == "__main__":
    main()
