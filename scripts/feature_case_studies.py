"""
Feature case studies (method.md §7) from a finished evaluation run: the images an FGA configuration improved most on
all three metrics, the patches whose attribution it changed most, the SAE feature behind each patch's gate (block,
index, amplifier or suppressor), and that feature's prototypes (its top-10 activating images of the validation split,
patches boxed), read from the Space's prototype assets (`scripts/build_space_assets.py`).

    python scripts/feature_case_studies.py --results runs/test --config "fga|combined|1,2|0.5|10" \
        --output_dir docs/results/chest_xray/case_studies

Writes `case_studies.md` (tables and figure links), `case_studies.csv`, `figures/overview.png` (image, TransMM, FGA
and the change, with the chosen patches boxed) and `figures/prototypes_<n>.jpg` (one row of prototypes per feature).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hf_fga.attribution import Attributor
from hf_fga.evaluation.case_studies import select_improved_images
from hf_fga.evaluation.configuration import EvaluationConfiguration
from hf_fga.evaluation.storage import read_parts
from hf_fga.feature_drivers import patch_change, patch_drivers
from hf_fga.images import load_image
from hf_fga.introspection import load_vision_model
from hf_fga.prototypes import PrototypeIndex
from hf_fga.sae import load_saes
from hf_fga.viz import draw_patch_boxes, overlay

ROOT = Path(__file__).resolve().parents[1]

BOX_UP, BOX_DOWN = "#00e000", "#ff00ff"  # patches FGA raised / lowered
FEATURES_PER_SHEET = 10


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="an evaluation output folder (with results/)")
    parser.add_argument("--config", required=True, help="the FGA configuration key, e.g. 'fga|combined|1,2|0.5|10'")
    parser.add_argument("--preset", default="papers", help="the preset whose metrics select the images")
    parser.add_argument("--dataset", default=str(ROOT.parent / "shared" / "data" / "chest_xray_pneumonia"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--id_column", default="file_name")
    parser.add_argument("--model", default=str(ROOT / "hf_fga" / "bundled" / "model"))
    parser.add_argument("--sae", default=str(ROOT / "hf_fga" / "bundled" / "saes"))
    parser.add_argument(
        "--prototypes",
        type=Path,
        default=ROOT / "spaces" / "assets",
        help="prototype assets of the same SAEs (scripts/build_space_assets.py)",
    )
    parser.add_argument("--count", type=int, default=20, help="images (method.md §7: 20)")
    parser.add_argument("--patches", type=int, default=3, help="changed patches studied per image")
    parser.add_argument("--output_dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.count < 1 or args.patches < 1:
        parser.error("--count and --patches must be positive.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    from datasets import load_dataset
    from transformers import AutoImageProcessor

    results = read_parts(args.results / "results")
    if results is None or results.empty:
        raise SystemExit(f"No results under {args.results / 'results'}: run scripts/evaluate_faithfulness.py first.")
    chosen = select_improved_images(results, args.config, preset=args.preset, count=args.count)
    config = EvaluationConfiguration.from_key(args.config)
    method, variant, layers, kappa, cmax = config.method, config.variant, config.layers, config.kappa, config.cmax
    if method != "fga":
        raise SystemExit(f"--config {args.config!r} is not an FGA configuration.")

    model = load_vision_model(args.model)
    processor = AutoImageProcessor.from_pretrained(args.model)
    saes = load_saes(args.sae)
    prototypes = PrototypeIndex.load(args.prototypes)
    if not prototypes.matches(saes):
        raise SystemExit(
            f"The prototypes in {args.prototypes} were computed for other SAEs: rebuild them with "
            f"scripts/build_space_assets.py --sae {args.sae} --output <folder> and pass --prototypes <folder>."
        )
    dataset = load_dataset(args.dataset, split=args.split)
    rows = [int(i) for i in chosen["index"]]
    images = [load_image(dataset[i]["image"]) for i in rows]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    explainer = Attributor(model, saes)
    output = explainer.attribute(
        pixel_values,
        method="fga",
        variant=variant,
        layers=layers,
        kappa=kappa,
        cmax=cmax,
        return_contributions=True,
    )
    grid = output.grid
    table = []
    for n, image_id in enumerate(chosen.index):
        for driver in patch_drivers(output, n, args.patches):
            table.append(
                {
                    "image_id": image_id,
                    "patch": driver.patch,
                    "row": driver.patch // grid[1],
                    "col": driver.patch % grid[1],
                    "change": driver.change,
                    "block": driver.block,
                    "feature": driver.feature,
                    "contribution": driver.push,
                    "role": driver.sign,
                    "gate": float(output.gates[driver.block][n].reshape(-1)[driver.patch]),
                }
            )

    import pandas as pd

    if not table:
        raise SystemExit(
            f"No SAE feature pushed the gates of the chosen patches under {args.config!r}: the variant "
            "must read SAE features (combined or shuffled)."
        )
    table = pd.DataFrame(table)
    figures = args.output_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    table.merge(chosen.reset_index(names="image_id"), on="image_id").to_csv(
        args.output_dir / "case_studies.csv", index=False
    )
    _overview_figure(images, output, chosen, table, grid, figures / "overview.png")
    features = (
        table.groupby(["block", "feature", "role"])
        .size()
        .rename("patches")
        .reset_index()
        .sort_values(["patches", "block", "feature"], ascending=[False, True, True])
    )
    sheets = _prototype_sheets(prototypes, features, figures)
    _write_markdown(args, chosen, table, features, sheets, time.perf_counter() - start)
    print(f"wrote {args.output_dir} in {time.perf_counter() - start:.0f} s")
    return 0


def _overview_figure(images, output, chosen, table, grid, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(images)
    fig, axes = plt.subplots(count, 4, figsize=(8.4, 2.2 * count), squeeze=False)
    for n, (image_id, image) in enumerate(zip(chosen.index, images, strict=True)):
        picture = image.convert("RGB").resize((224, 224))
        mine = table[table["image_id"] == image_id]
        boxes = [(r.row, r.col, BOX_UP if r.change > 0 else BOX_DOWN) for r in mine.itertuples()]
        fga, base = output.attribution[n].numpy(), output.baseline[n].numpy()
        delta = patch_change(fga, base)
        panels = [
            (draw_patch_boxes(picture, boxes, grid, width=3), f"{image_id[:28]}"),
            (overlay(picture, base), "TransMM"),
            (overlay(picture, fga), "FGA"),
        ]
        for ax, (shown, title) in zip(axes[n, :3], panels, strict=True):
            ax.imshow(shown)
            ax.set_title(title, fontsize=7)
        limit = max(float(np.abs(delta).max()), 1e-12)
        axes[n, 3].imshow(delta, cmap="PiYG", vmin=-limit, vmax=limit)
        stats = chosen.loc[image_id]
        axes[n, 3].set_title(
            f"FGA − TransMM\nΔSaCo {stats['d_saco']:+.2f} ΔFC {stats['d_faithfulness_correlation']:+.2f} "
            f"ΔPF {-stats['d_pixel_flipping']:+.3f}",
            fontsize=6,
        )
        for ax in axes[n]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Images FGA improved most (green boxes: patches FGA raised, magenta: lowered)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / (2.2 * count)))  # leave the title its own band
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _prototype_sheets(prototypes: PrototypeIndex, features, folder: Path) -> list[str]:
    """One row per feature: a label, then its prototypes (10 per row) with the activating patches boxed."""
    from PIL import Image, ImageDraw

    names = []
    rows = list(features.itertuples())
    size = int(prototypes.meta["thumbnail_size"])
    label_width = 150
    for sheet_number, start in enumerate(range(0, len(rows), FEATURES_PER_SHEET)):
        chunk = rows[start : start + FEATURES_PER_SHEET]
        sheet = Image.new("RGB", (label_width + 10 * size, len(chunk) * size), "white")
        draw = ImageDraw.Draw(sheet)
        for n, row in enumerate(chunk):
            strip = prototypes.strip(row.block, row.feature, columns=10)
            draw.multiline_text(
                (6, n * size + 8),
                f"block {row.block}\nfeature {row.feature}\n{row.role}\n{row.patches} patch(es)",
                fill="black",
            )
            if strip is None:
                draw.text((label_width + 6, n * size + 8), "never fires on the validation split", fill="black")
            else:
                sheet.paste(strip, (label_width, n * size))
        name = f"prototypes_{sheet_number + 1}.jpg"
        sheet.save(folder / name, quality=80)
        names.append(name)
    return names


def _write_markdown(args, chosen, table, features, sheets, seconds: float) -> None:
    lines = [
        "# Feature case studies",
        "",
        f"Configuration `{args.config}` against TransMM on the `{args.split}` split; images selected with the "
        f"`{args.preset}` preset's metrics (method.md §7; selection rule in "
        "`hf_fga.evaluation.case_studies.select_improved_images`). For each image, the "
        f"{args.patches} patches with the largest |FGA − TransMM| (maps min–max scaled), and for each patch the SAE "
        "feature with the largest push c / (1.4826 (MAD + ε)) on its normalised score ŝ over the gated blocks, "
        "i.e. the one that pushed its gate hardest (`hf_fga.feature_drivers`, the rule of the pipeline's "
        "`top_features` and of the Space); its sign makes it an amplifier or a suppressor. Patches where no feature "
        "pushed are left out. Prototypes: the feature's top-10 activating images of the validation split, "
        "activating patches boxed in yellow.",
        "",
        f"{int(chosen['all_improved'].sum())} of the {len(chosen)} images improved all three metrics. "
        f"Built in {seconds:.0f} s by:",
        "",
        "```bash",
        " ".join(["python scripts/feature_case_studies.py", *[_quote(a) for a in sys.argv[1:]]]),
        "```",
        "",
        "![overview](figures/overview.png)",
        "",
        "## Images and patches",
        "",
        "| image | ΔSaCo | ΔFC | ΔPF AUC | patch (row, col) | change | block | feature | role | push on ŝ | gate |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table.itertuples():
        stats = chosen.loc[r.image_id]
        lines.append(
            f"| {r.image_id} | {stats['d_saco']:+.3f} | {stats['d_faithfulness_correlation']:+.3f} | "
            f"{-stats['d_pixel_flipping']:+.4f} | ({r.row}, {r.col}) | {r.change:+.2f} | {r.block} | {r.feature} | "
            f"{r.role} | {r.contribution:+.3g} | {r.gate:.2f} |"
        )
    lines += ["", "## Features", "", "| block | feature | role | patches |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.block} | {r.feature} | {r.role} | {r.patches} |" for r in features.itertuples()]
    lines += ["", *[f"![prototypes](figures/{name})" for name in sheets], ""]
    (args.output_dir / "case_studies.md").write_text("\n".join(lines))


def _quote(text: str) -> str:
    return f"'{text}'" if any(c in text for c in " |;") else text


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_grad_enabled(True)
    raise SystemExit(main())
