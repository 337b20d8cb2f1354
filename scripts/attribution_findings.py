"""
What the attributions reveal about a bundled model (issue 16): where TransMM and the chosen FGA configuration put
their attribution on the test images, measured by the fixed rules of `hf_fga/evaluation/findings.py` (share of the
positive mass on the outer patch ring and on the most near-white patches, where burned-in letters, markers and
scale bars sit), per class and per correct / wrong prediction, FGA against TransMM at the patient level; with figures.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/attribution_findings.py --domain chest_xray \
        --output docs/results/findings/chest_xray

One pass over the split (one capture per batch, both maps from it through the evaluation's
`attribute_configurations`), each map explaining the predicted class, 1 torch thread. Writes to `--output`:
`per_image.csv` (one row per image and method), `border_ablation.csv` (the border intervention, one row per image),
`findings.md`, `key_findings.json` (what `scripts/domain_summary.py`
shows), `figure_border_top.png` (the `--figure_count` images of highest FGA border share), `figure_random.png`
(`--figure_count` images drawn with `--seed`), `border_share_histogram.png` and `run.json`. A hand-written
`observations.md` in the folder (what the figures show) is embedded in `findings.md` and never overwritten.
`--limit N` analyses N images drawn with `--seed` (said in `findings.md`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch
from PIL import Image

from hf_fga import bundled
from hf_fga.attribution import Attributor
from hf_fga.evaluation import findings
from hf_fga.evaluation.attribution_grid import attribute_configurations
from hf_fga.evaluation.configuration import REFERENCE, EvaluationConfiguration
from hf_fga.evaluation.hypothesis_tests import patient_keys
from hf_fga.evaluation.run_setup import torch_threads
from hf_fga.evaluation.summary import read_chosen_configuration
from hf_fga.images import load_image
from hf_fga.introspection import load_vision_model, model_logits
from hf_fga.sae import load_saes

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", required=True, choices=bundled.list_domains(), help="the bundled model")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="analyse this many images, drawn with --seed")
    parser.add_argument("--seed", type=int, default=0, help="seed of --limit's subset and of the random figure")
    parser.add_argument("--output", type=Path, required=True, help="e.g. docs/results/findings/<domain>")
    parser.add_argument("--data_root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--config",
        default=None,
        help="FGA configuration key (default: docs/results/<domain>/chosen_configuration.txt)",
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--figure_count", type=int, default=8)
    parser.add_argument("--num_threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 2:
        parser.error(f"--limit must be at least 2 (a paired test needs two images); got {args.limit}.")
    return args


def load_split(args: argparse.Namespace) -> tuple[datasets.Dataset, int]:
    """The analysed rows (all, or `--limit` drawn with `--seed`, in dataset order) and the size of the split."""
    folder = args.data_root / bundled.domain(args.domain).dataset
    if not folder.is_dir():
        raise SystemExit(f"{folder} does not exist: pass --data_root with the folder holding the dataset.")
    dataset = datasets.load_dataset(str(folder), split=args.split)
    if "file_name" not in dataset.column_names:  # CIFAR-10: the row index in the split is the id, as in evaluations
        dataset = dataset.add_column("file_name", [str(row) for row in range(len(dataset))])
    if args.limit is None or args.limit >= len(dataset):
        return dataset, len(dataset)
    rows = np.random.default_rng(args.seed).choice(len(dataset), args.limit, replace=False)
    return dataset.select(sorted(rows.tolist())), len(dataset)


def image_table(dataset: datasets.Dataset) -> tuple[pd.DataFrame, bool]:
    """
    Per image: `image_id` (file name; for a dataset without file names, its row index in the split, as
    [`load_split`] adds it), `unit` (its patient where the dataset has patient ids), true `label`.
    """
    names = [str(n) for n in dataset["file_name"]]
    has_patients = "patient_id" in dataset.column_names
    keys = patient_keys([str(p) for p in dataset["patient_id"]], names) if has_patients else names
    label_names = dataset.features["label"].names
    table = pd.DataFrame({"image_id": names, "unit": keys, "label": [label_names[i] for i in dataset["label"]]})
    return table, has_patients


def pixel_batch(dataset: datasets.Dataset, rows: list[int], processor) -> np.ndarray:
    return processor(images=[load_image(image) for image in dataset[rows]["image"]], return_tensors="np")[
        "pixel_values"
    ]


def probabilities(model, pixels: np.ndarray) -> np.ndarray:
    """The model's class probabilities `(B, classes)` of a batch of processed images."""
    with torch.no_grad():
        return torch.softmax(model_logits(model, torch.from_numpy(np.ascontiguousarray(pixels))), dim=-1).numpy()


def attribute_split(
    dataset: datasets.Dataset, processor, attr: Attributor, configurations: dict, args: argparse.Namespace, model
) -> tuple[pd.DataFrame, dict[str, np.ndarray], list[int], float, pd.DataFrame]:
    """
    Per image and method the location statistics; the maps `{method: (N, h, w)}`; the predicted classes; seconds;
    and the border intervention (`findings.border_ablation` of the clean and the border-blanked images).
    """
    maps = {name: [] for name in configurations}
    statistics, targets, start = [], [], time.perf_counter()
    clean, blanked = [], []
    with torch_threads(args.num_threads):
        for first in range(0, len(dataset), args.batch_size):
            rows = list(range(first, min(first + args.batch_size, len(dataset))))
            pixels = pixel_batch(dataset, rows, processor)
            out = attribute_configurations(attr, torch.from_numpy(pixels), list(configurations.values()))
            grid = next(iter(out.maps.values())).shape[1:]
            clean.append(probabilities(model, pixels))
            blanked.append(probabilities(model, findings.blank_border(pixels, tuple(grid))))
            intensity = findings.input_intensity(pixels, processor.image_mean, processor.image_std)
            for name, configuration in configurations.items():
                batch_maps = out.maps[configuration.key].numpy()
                maps[name].append(batch_maps)
                frame = findings.location_statistics(batch_maps, intensity)
                frame.insert(0, "method", name)
                frame.insert(0, "row", rows)
                statistics.append(frame)
            targets += out.target.tolist()
            print(f"{rows[-1] + 1}/{len(dataset)} images", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    maps = {name: np.concatenate(parts) for name, parts in maps.items()}
    ablation = findings.border_ablation(np.concatenate(clean), np.concatenate(blanked))
    return pd.concat(statistics, ignore_index=True), maps, targets, seconds, ablation


def model_view(pixel_values: np.ndarray, processor) -> list[Image.Image]:
    """The processed images as RGB pictures (normalisation undone), the geometry the maps refer to."""
    x = pixel_values * np.reshape(processor.image_std, (1, -1, 1, 1)) + np.reshape(processor.image_mean, (1, -1, 1, 1))
    return [Image.fromarray((np.clip(im, 0, 1).transpose(1, 2, 0) * 255).round().astype(np.uint8)) for im in x]


def draw_figure(path: Path, rows: list[int], dataset, processor, images: pd.DataFrame, maps: dict, border) -> None:
    """One overlay sheet of the images at `rows` (their near-white patches boxed, the ring outlined)."""
    pixels = pixel_batch(dataset, rows, processor)
    grid = next(iter(maps.values())).shape[1:]
    intensity = findings.input_intensity(pixels, processor.image_mean, processor.image_std)
    bright = findings.bright_patch_mask(findings.patch_saturation(intensity, grid))
    captions = [
        f"{images.image_id[r]}: {images.label[r]}, pred {images.prediction[r]}; border T {border.TransMM.iloc[r]:.2f}"
        f" F {border.FGA.iloc[r]:.2f}"
        for r in rows
    ]
    sheet = findings.overlay_rows(
        model_view(pixels, processor), {m: part[rows] for m, part in maps.items()}, captions, grid, bright
    )
    findings.save_small_png(sheet, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from transformers import AutoImageProcessor

    try:
        model_dir, sae_dir = bundled.model_dir(args.domain), bundled.sae_dir(args.domain)
    except FileNotFoundError as error:
        raise SystemExit(f"{error}\nThe findings need the domain's bundled model and SAEs.") from None
    key = args.config or read_chosen_configuration(
        REPO / "docs" / "results" / args.domain / "chosen_configuration.txt"
    )
    chosen = EvaluationConfiguration.from_key(key)
    dataset, split_size = load_split(args)
    images, has_patients = image_table(dataset)
    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = load_vision_model(str(model_dir))
    attr = Attributor(model, load_saes(str(sae_dir)))
    configurations = {"TransMM": REFERENCE, "FGA": chosen}
    statistics, maps, targets, seconds, ablation = attribute_split(
        dataset, processor, attr, configurations, args, model
    )
    images["prediction"] = [dataset.features["label"].names[t] for t in targets]
    images["correct"] = images["label"] == images["prediction"]
    table = images.rename_axis("row").reset_index().merge(statistics, on="row")
    args.output.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.output / "per_image.csv", index=False, float_format="%.6g")

    by_image = images.set_index("image_id")
    groups = {"all": by_image["label"].notna()}
    groups.update({f"true {name}": by_image["label"] == name for name in by_image["label"].unique()})
    groups.update({"correct": by_image["correct"], "wrong": ~by_image["correct"]})
    border = table.pivot(index="image_id", columns="method", values="border_share").reindex(images["image_id"])
    top = border.sort_values("FGA", ascending=False, kind="stable").head(args.figure_count)
    drawn = np.random.default_rng(args.seed).choice(len(images), min(args.figure_count, len(images)), replace=False)
    figures = [
        (
            "figure_border_top.png",
            f"The {len(top)} images of highest FGA border share (rule fixed beforehand): image (near-white patches "
            "boxed in cyan), TransMM, FGA; the white line is the inner edge of the border ring.",
            [int(np.flatnonzero(images["image_id"] == i)[0]) for i in top.index],
        ),
        (
            "figure_random.png",
            f"{len(drawn)} images drawn at random (seed {args.seed}): image, TransMM, FGA, as above.",
            sorted(drawn.tolist()),
        ),
    ]
    for name, _, rows in figures:
        draw_figure(args.output / name, rows, dataset, processor, images, maps, border)
    border_area = float(findings.border_mask(maps["FGA"].shape[1:]).mean())
    title = bundled.domain(args.domain).title
    findings.share_histogram(
        table,
        "border_share",
        args.output / "border_share_histogram.png",
        border_area,
        f"{title}: share of positive attribution on the border ring",
    )
    figure_list = [(name, caption) for name, caption, _ in figures]
    figure_list.append(("border_share_histogram.png", "Border share per image and method; dashed: a uniform map."))

    command = shlex.join(["python", "scripts/attribution_findings.py", *(sys.argv[1:] if argv is None else argv)])
    subset = len(images) < split_size
    what = f"{len(images)} {args.split} images" + (
        f" (a subset drawn with seed {args.seed} from {split_size})" if subset else f" (the whole {args.split} split)"
    )
    who = f"{images['unit'].nunique()} patients" if has_patients else "no patient ids, so the tests are per image"
    header = (
        f"{what}, {who}; the bundled model `hf_fga.bundled.model_dir({args.domain!r})` (accuracy on these images "
        f"{100 * images['correct'].mean():.1f} %); TransMM and {chosen.label}, each explaining the predicted class; "
        f"{seconds:.0f} s for the maps on {args.num_threads} thread(s). `{command}`"
    )
    names = dataset.features["label"].names
    intervention = images[["image_id", "label"]].assign(
        prediction=[names[i] for i in ablation["prediction"]],
        blanked_prediction=[names[i] for i in ablation["blanked_prediction"]],
        changed=ablation["changed"].to_numpy(),
        probability=ablation["probability"].to_numpy(),
        blanked_probability=ablation["blanked_probability"].to_numpy(),
        drop=ablation["drop"].to_numpy(),
    )
    intervention = intervention.join(border[list(configurations)], on="image_id")
    intervention.to_csv(args.output / "border_ablation.csv", index=False, float_format="%.6g")
    ablation_line = (
        f"Blanking the border ring (mean fill) changes {int(intervention['changed'].sum())} of {len(intervention)} "
        f"predictions ({100 * intervention['changed'].mean():.1f} %); accuracy {100 * images['correct'].mean():.1f} % "
        f"→ {100 * (intervention['blanked_prediction'] == intervention['label']).mean():.1f} %."
    )
    observations = args.output / findings.OBSERVATIONS_FILE
    page = findings.FindingsPage(
        title=title[0].upper() + title[1:],
        header=header,
        unit="patients" if has_patients else "images",
        groups=findings.group_table(table, groups),
        comparison=findings.method_comparison(table, "FGA", "TransMM"),
        heavy=top.reset_index()[["image_id", "FGA", "TransMM"]],
        figures=figure_list,
        border_area=border_area,
        bright_area=float(table.drop_duplicates("image_id")["bright_area"].median()),
        observations=observations.read_text() if observations.is_file() else None,
        ablation=findings.ablation_markdown(intervention, list(configurations)),
        ablation_line=ablation_line,
    )
    (args.output / findings.FINDINGS_FILE).write_text(page.markdown())
    findings.write_key_findings(args.output, page.key_lines(), figure_list[:1])
    run = {
        "command": command,
        "domain": args.domain,
        "split": args.split,
        "images": len(images),
        "subset_seed": args.seed if subset else None,
        "config": chosen.key,
        "num_threads": args.num_threads,
        "map_seconds": round(seconds, 1),
    }
    (args.output / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    print(f"{args.output}: {len(images)} images in {seconds:.0f} s")
    print(findings.method_comparison_markdown(page.comparison, "FGA", "TransMM", page.unit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
