"""
The CaFE study of `docs/results/cafe.md` on the bundled chest X-ray model: the fixed selection rule (§2 there), every
(image, feature, position) triple explained with every iERF back-end and scored by feature insertion (§3), and the
tables of the hypotheses (§4) from whatever triples are done.

Stages (each resumable; outputs under `--output`):

1. `selection.json`: per block, the alive features (firing, Top-K mask applied, on at least one validation image), the
   first `--features-per-block` of them in a seeded random order, and per feature its (up to) `--images-per-feature`
   validation images with the largest peak activation.
2. `triples.jsonl`: one line per (block, image): the features explained on it, their positions, clean activations,
   per back-end the locality share and flags, and per ranking the insertion AUC. Lines already written are skipped.
3. `--summarise`: Markdown tables (per block and pooled) to stdout.

Usage:
    python scripts/cafe_study.py --output runs/cafe_study [--blocks 0 1 2 3 4 5] [--max-groups 10]
    python scripts/cafe_study.py --output runs/cafe_study --summarise
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import ViTForImageClassification, ViTImageProcessorPil

from hf_fga import bundled
from hf_fga.cafe import explain_feature, feature_insertion, random_ranking
from hf_fga.evaluation.statistics import paired_tests, sem
from hf_fga.faithfulness.fills import derived_seed
from hf_fga.images import load_image
from hf_fga.introspection import prepared_model, residual_hooks
from hf_fga.sae import load_saes

DEFAULT_DATA = Path("/work/shared/data/chest_xray_pneumonia")
BACKENDS = {
    "gradient-x-input": {},
    "integrated-gradients": {"steps": 32},
    "cp-lrp": {},
    "attnlrp": {},
    "kernel-shap": {"n_samples": 512, "seed": 0},
    "gradient": {},
}
PRIMARY = "attnlrp"


def validation_split(data: Path):
    """The bundled model's validation images (`splits.json`, file names within the train split), file-name order."""
    from datasets import load_dataset

    splits = json.loads(bundled.splits_path().read_text())
    wanted = set(splits["validation_file_names"])
    train = load_dataset(str(data), split=splits.get("split_of", "train"))
    rows = sorted(
        (i for i, name in enumerate(train["file_name"]) if name in wanted), key=lambda i: train[i]["file_name"]
    )
    return train.select(rows)


def pixels_of(processor, dataset, index: int) -> torch.Tensor:
    return processor(images=load_image(dataset[index]["image"]), return_tensors="pt")["pixel_values"]


def select(model, processor, saes, dataset, per_block: int, per_feature: int, seed: int) -> dict:
    """Stage 1: the selection rule of docs/results/cafe.md §2."""
    peaks = {block: [] for block in saes}
    points = {block: sae.config.hook_point for block, sae in saes.items()}
    with prepared_model(model), torch.no_grad(), residual_hooks(model, points) as seen:
        for index in range(len(dataset)):
            model(pixel_values=pixels_of(processor, dataset, index))  # one pass records every block
            for block, sae in saes.items():
                peaks[block].append(sae.encode(seen[block][0]).amax(dim=0))  # the SAE as used: Top-K mask applied
    selection = {"seed": seed, "images": len(dataset), "blocks": {}}
    for block, sae in saes.items():
        table = torch.stack(peaks[block])  # (images, d_sae)
        alive = set(torch.nonzero(table.amax(dim=0) > 0).flatten().tolist())
        order = np.random.default_rng(seed).permutation(sae.config.d_sae)
        chosen = [int(k) for k in order if int(k) in alive][:per_block]
        features = {}
        for k in chosen:
            column = table[:, k]
            firing = torch.nonzero(column > 0).flatten().tolist()
            firing.sort(key=lambda i: (-float(column[i]), i))  # largest peak first; ties: file-name order
            features[str(k)] = firing[:per_feature]
        selection["blocks"][str(block)] = {"alive": len(alive), "d_sae": sae.config.d_sae, "features": features}
        print(f"block {block}: {len(alive)} alive of {sae.config.d_sae}; {len(chosen)} selected", flush=True)
    return selection


def groups(selection: dict) -> list[tuple[int, int, list[int]]]:
    """
    (block, image, features): the features of one image and block are explained together. Blocks take turns (the
    first group of every block, then the second, …), so a partial run covers every block alike.
    """
    by_block: dict[int, dict[int, list[int]]] = {}
    for block, entry in selection["blocks"].items():
        for feature, images in entry["features"].items():
            for image in images:
                by_block.setdefault(int(block), {}).setdefault(image, []).append(int(feature))
    lists = [[(block, image, features) for image, features in images.items()] for block, images in by_block.items()]
    return [group for turn in itertools.zip_longest(*lists) for group in turn if group is not None]


def run_group(model, sae, pixels, features: list[int], seed: int) -> dict:
    """Stage 2 for one (block, image): every back-end's iERF and locality, then insertion of every ranking."""
    record: dict = {"backends": {}}
    rankings = {}
    for name, options in BACKENDS.items():
        out = explain_feature(model, sae, pixels, features, method=name, **options)
        rankings[name] = out.ierf
        record["backends"][name] = {
            "share": out.locality.share[0].tolist(),
            "non_local": out.locality.non_local[0].tolist(),
        }
    record.update(
        position=out.position[0].tolist(), value=out.value[0].tolist(), at_cls=out.locality.at_cls[0].tolist()
    )
    rankings["activation"] = out.activation_map
    rankings["random"] = random_ranking(out.ierf.shape, seed=seed)
    scores = feature_insertion(model, sae, pixels, features, out.position, rankings)
    record["auc"] = {name: value[0].tolist() for name, value in scores.auc.items()}
    return record


def summarise(lines: list[dict]) -> str:
    """Stage 3: the tables of docs/results/cafe.md §4 from the triples done so far."""
    rows = []
    for line in lines:
        for f, feature in enumerate(line["features"]):
            rows.append(
                {
                    "block": line["block"],
                    "feature": feature,
                    "at_cls": line["at_cls"][f],
                    "auc": {name: values[f] for name, values in line["auc"].items()},
                    "non_local": {name: b["non_local"][f] for name, b in line["backends"].items()},
                }
            )
    if not rows:
        return "No triple done yet."
    out = [f"{len(rows)} triples ({len({(r['block'], r['feature']) for r in rows})} features).", ""]
    out += ["| ranking | blocks | mean AUC ± SEM | vs activation: Δ, Wilcoxon p, wins | vs random: Δ, Wilcoxon p |"]
    out += ["| --- | --- | --- | --- | --- |"]
    blocks = sorted({r["block"] for r in rows})
    for scope in ["all", *blocks]:
        chosen = [r for r in rows if scope == "all" or r["block"] == scope]
        for name in [*BACKENDS, "activation", "random"]:
            values = np.array([r["auc"][name] for r in chosen])
            cells = [f"{values.mean():.3f} ± {sem(values):.3f}"]
            for reference in ("activation", "random"):
                diff = values - np.array([r["auc"][reference] for r in chosen])
                p = paired_tests(diff)[0]
                wins = f", {np.mean(diff > 0):.0%}" if reference == "activation" else ""
                cells.append("–" if name == reference else f"{diff.mean():+.3f}, {p:.2g}{wins}")
            out.append(f"| {name} | {scope} | " + " | ".join(cells) + " |")
    out += ["", f"| block | patch triples | non-local ({PRIMARY}) | CLS triples |", "| --- | --- | --- | --- |"]
    for block in blocks:
        patch = [r for r in rows if r["block"] == block and not r["at_cls"]]
        rate = np.mean([r["non_local"][PRIMARY] for r in patch]) if patch else float("nan")
        cls = sum(r["at_cls"] for r in rows if r["block"] == block)
        out.append(f"| {block} | {len(patch)} | {rate:.1%} | {cls} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--blocks", type=int, nargs="+", default=None, help="default: every block with a bundled SAE")
    parser.add_argument("--features-per-block", type=int, default=100)
    parser.add_argument("--images-per-feature", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-groups", type=int, default=None, help="stop after this many new (block, image) groups")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--summarise", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.output.mkdir(parents=True, exist_ok=True)
    done_path = args.output / "triples.jsonl"
    lines = [json.loads(line) for line in done_path.read_text().splitlines()] if done_path.exists() else []
    if args.summarise:
        print(summarise(lines))
        return
    model = ViTForImageClassification.from_pretrained(bundled.model_dir(), attn_implementation="eager").eval()
    processor = ViTImageProcessorPil.from_pretrained(bundled.model_dir())
    saes = load_saes(str(bundled.sae_dir()), layers=args.blocks)
    dataset = validation_split(args.data)
    selection_path = args.output / "selection.json"
    if selection_path.exists():
        selection = json.loads(selection_path.read_text())
    else:
        selection = select(
            model, processor, saes, dataset, args.features_per_block, args.images_per_feature, args.seed
        )
        selection_path.write_text(json.dumps(selection, indent=1))
    done = {(line["block"], line["image"]) for line in lines}
    todo = [group for group in groups(selection) if group[:2] not in done and group[0] in saes]
    print(f"{len(done)} (block, image) groups done, {len(todo)} to do", flush=True)
    with done_path.open("a") as sink:
        for block, image, features in todo[: args.max_groups]:
            start = time.perf_counter()
            pixels = pixels_of(processor, dataset, image)
            seed = derived_seed(args.seed, image, block)  # the random ranking's seed: fixed per (image, block)
            record = run_group(model, saes[block], pixels, features, seed=seed)
            record.update(block=block, image=image, file_name=dataset[image]["file_name"], features=features)
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            print(
                f"block {block} image {image}: {len(features)} features, {time.perf_counter() - start:.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
