"""
How far does `precision="bfloat16"` move the results? Runs the agreement checks of `hf_fga.evaluation.precision_check`
on a dataset, chunk by chunk and resumably (rows go to OUTPUT/faithfulness.csv and OUTPUT/attribution.csv):

- faithfulness: the float32 maps of every configuration scored by the perturbation engine in float32 and bfloat16
  (per image and metric |Δ|; the ranking of the configurations by mean score in each precision);
- attribution (`--parts attribution`): maps and FGA gates in both precisions (relative error, top-k patch overlap).

Default: the bundled chest X-ray model and SAEs on the chest X-ray test split, TransMM and the configuration chosen on
validation (FGA `combined` on blocks 0, 1, 2, κ = 0.5, c_max = 10), papers preset.

    nice -n 10 .venv/bin/python scripts/check_precision.py --dataset /work/shared/data/chest_xray_pneumonia \
        --images 100 --output_dir runs/precision_check
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from hf_fga import bundled
from hf_fga.evaluation.precision_check import (
    agreement_table,
    attribution_agreement,
    faithfulness_agreement,
    summarize_agreement,
)
from hf_fga.images import load_image
from hf_fga.precision import bfloat16_is_native


def _configurations(layers: list[int]) -> dict[str, dict]:
    return {
        "transmm": dict(method="transmm"),
        f"fga-combined-{'-'.join(map(str, layers))}": dict(
            method="fga", variant="combined", layers=layers, kappa=0.5, cmax=10.0
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="/work/shared/data/chest_xray_pneumonia")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=100, help="the first N images of the split")
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--sae", default=None, help="SAE set folder (default: the bundled SAEs)")
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--metrics", nargs="+", default=["saco", "faithfulness_correlation", "pixel_flipping"])
    parser.add_argument("--preset", default="papers")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument(
        "--parts", nargs="+", default=["faithfulness", "attribution"], choices=["faithfulness", "attribution"]
    )
    parser.add_argument("--top_k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import datasets
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hf_fga.attribution import Attributor
    from hf_fga.sae import load_saes

    model_dir = args.model or str(bundled.model_dir())
    model = AutoModelForImageClassification.from_pretrained(model_dir, attn_implementation="eager").eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    saes = load_saes(args.sae or str(bundled.sae_dir()), layers=args.layers)
    attributors = {}

    def attributor(precision: str):
        if precision not in attributors:
            attributors[precision] = Attributor(model, saes, precision=precision)
        return attributors[precision]

    dataset = datasets.load_dataset(args.dataset, split=args.split)
    count = min(args.images, len(dataset))
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    files = {part: output / f"{part}.csv" for part in ("faithfulness", "attribution")}
    done = {part: set(pd.read_csv(path)["image_id"]) if path.is_file() else set() for part, path in files.items()}
    configurations = _configurations(args.layers)
    start = time.perf_counter()
    for first in range(0, count, args.batch_size):
        indices = list(range(first, min(first + args.batch_size, count)))
        if all(i in done[part] for part in args.parts for i in indices):
            continue
        rows = dataset.select(indices)
        pixels = processor(images=[load_image(image) for image in rows["image"]], return_tensors="pt")["pixel_values"]
        for part in args.parts:
            frames = []
            for name, options in configurations.items():
                if part == "faithfulness":
                    maps = attributor("float32").attribute(pixels, **options).attribution
                    frame = faithfulness_agreement(
                        model, pixels, maps, args.metrics, preset=args.preset, image_ids=indices
                    )
                else:
                    frame = attribution_agreement(
                        lambda p, o=options, x=pixels: attributor(p).attribute(x, **o), k=args.top_k
                    )
                frame["image_id"] = [indices[i] for i in frame["image"]]
                frame["configuration"] = name
                frames.append(frame)
            frame = pd.concat(frames, ignore_index=True)
            frame.to_csv(files[part], mode="a", header=not files[part].is_file(), index=False)
        print(f"images {indices[0]}..{indices[-1]} done, {time.perf_counter() - start:.0f} s", flush=True)

    tables = {}
    for part, path in files.items():
        if path.is_file():
            frame = pd.read_csv(path)
            frame = frame[frame["image_id"] < count]
            tables.update(summarize_agreement(**{part: frame}))
    print(
        f"\nbfloat16 native on this CPU: {bfloat16_is_native('cpu')}; {count} images of {args.dataset} "
        f"({args.split}); configurations: {', '.join(configurations)}; preset {args.preset}\n"
    )
    print("\n".join(agreement_table(tables)))


if __name__ == "__main__":
    main()
