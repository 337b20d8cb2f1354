"""
The chest X-ray feature case studies (docs/results/chest_xray.md §6) re-read with CaFE iERFs (method.md §9): for every
case-study row (image, patch, block, feature), is what drives the feature where it fires?

Every row's (block, feature) is explained on its image twice, with the back-ends `attnlrp` (the CaFE study's primary)
and `gradient-x-input`:

- **at the case-study patch** (q = that patch's token, `patch + 1`; 0 = CLS), when the feature is active there
  (z > 0; otherwise the row is skipped with its reason: the iERF of an inactive ReLU is 0);
- **at the feature's own peak** on the image (`position=None`: the token, patch or CLS, where z is largest).

Per explanation: z at q, the share of the positive iERF mass within the 3 × 3 patches around q and the non-local
flag (share < 0.25), the iERF's peak patch and its distance to q, the positive-mass-weighted mean distance of the iERF
to q, and the activation map's peak patch. Distances are Chebyshev distances in patches (max of the row and column
offsets), so distance ≤ 1 is exactly the 3 × 3 neighbourhood of method.md §9.

Writes `docs/results/cafe/case_study_ierfs.csv` (one line per row, back-end and position), the figure
`docs/results/cafe/figures/case_study_ierfs.png`, and replaces (or appends) section 7 of `docs/results/cafe.md`.
Idempotent; ≈ 1 CPU-minute on one thread:

    python scripts/case_study_ierfs.py
"""

from __future__ import annotations

import argparse
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("/work/shared/data/chest_xray_pneumonia")
CASE_STUDIES = ROOT / "docs" / "results" / "chest_xray" / "case_studies" / "case_studies.csv"
REPORT = ROOT / "docs" / "results" / "cafe.md"
OUTPUT = ROOT / "docs" / "results" / "cafe"
FIGURE = "figures/case_study_ierfs.png"
BACKENDS = ("attnlrp", "gradient-x-input")
PRIMARY = "attnlrp"
AT_PATCH, AT_PEAK = "case-study patch", "feature's peak"
SECTION = "## 7. The chest X-ray case studies re-read with iERFs"
COMMAND = "python scripts/case_study_ierfs.py"
SKIP_INACTIVE = "z = 0 at the case-study patch: the feature is inactive there, its iERF is 0"


# ------------------------------------------------------------------------------------------------ per explanation
def chebyshev(a: tuple[int, int], b: tuple[int, int]) -> int:
    """Distance in patches between two `(row, col)` patches: max(|Δrow|, |Δcol|) (1 = the 3 × 3 neighbourhood)."""
    return max(abs(a[0] - b[0]), abs(a[1] - b[1]))


def peak_patch(patch_map: np.ndarray) -> tuple[int, int]:
    """`(row, col)` of the largest value of an `(h, w)` map (first in row-major order on ties)."""
    flat = int(np.argmax(np.asarray(patch_map)))
    return flat // patch_map.shape[1], flat % patch_map.shape[1]


def mass_distance(ierf: np.ndarray, q: tuple[int, int]) -> float:
    """
    The mean Chebyshev distance to patch `q = (row, col)` of the positive iERF mass of an `(h, w)` map, each patch
    weighted by its positive part; NaN when the map has no positive mass.
    """
    positive = np.clip(np.asarray(ierf, dtype=np.float64), 0, None)
    total = positive.sum()
    if total <= 0:
        return float("nan")
    rows, cols = np.indices(positive.shape)
    distance = np.maximum(np.abs(rows - q[0]), np.abs(cols - q[1]))
    return float((positive * distance).sum() / total)


def describe(
    ierf: np.ndarray, activation_map: np.ndarray, position: int, num_prefix_tokens: int = 1
) -> dict[str, float | int | bool]:
    """
    The geometry of one explained activation.

    Args:
        ierf (`np.ndarray` of shape `(h, w)`): the iERF.
        activation_map (`np.ndarray` of shape `(h, w)`): the feature's activation at every patch token.
        position (`int`): the explained token (0 = CLS; patch p at `num_prefix_tokens + p`, row-major).

    Returns:
        `dict` with `q_row`, `q_col` (−1 at a non-patch token), `ierf_peak_row`, `ierf_peak_col`,
        `activation_peak_row`, `activation_peak_col`, and the distances to q `ierf_peak_distance`,
        `mass_distance`, `activation_peak_distance` (NaN at a non-patch token).

    Example:
    ```python
    >>> ierf = np.zeros((4, 4)); ierf[3, 3] = 1.0
    >>> describe(ierf, np.eye(4), position=1)["ierf_peak_distance"]  # q = patch (0, 0), peak at (3, 3)
    3
    ```
    """
    width = ierf.shape[1]
    patch = position - num_prefix_tokens
    ierf_peak, activation_peak = peak_patch(ierf), peak_patch(activation_map)
    record = {
        "ierf_peak_row": ierf_peak[0],
        "ierf_peak_col": ierf_peak[1],
        "activation_peak_row": activation_peak[0],
        "activation_peak_col": activation_peak[1],
    }
    if patch < 0:
        nan = float("nan")
        return record | {
            "q_row": -1,
            "q_col": -1,
            "ierf_peak_distance": nan,
            "mass_distance": nan,
            "activation_peak_distance": nan,
        }
    q = (patch // width, patch % width)
    return record | {
        "q_row": q[0],
        "q_col": q[1],
        "ierf_peak_distance": chebyshev(ierf_peak, q),
        "mass_distance": mass_distance(ierf, q),
        "activation_peak_distance": chebyshev(activation_peak, q),
    }


# ------------------------------------------------------------------------------------------------ aggregation
def frequent_features(cases: pd.DataFrame, minimum: int = 2) -> pd.DataFrame:
    """
    The (block, feature) pairs with at least `minimum` case-study rows, most frequent first (ties: block, then
    feature), with their row count `rows`.
    """
    counts = cases.groupby(["block", "feature"]).size().rename("rows").reset_index()
    counts = counts.sort_values(["rows", "block", "feature"], ascending=[False, True, True], kind="stable")
    return counts[counts["rows"] >= minimum].reset_index(drop=True)


def summarise(records: pd.DataFrame) -> dict[str, float | int]:
    """
    One group of explanation records (one back-end, one kind of position) in numbers.

    Args:
        records (`pd.DataFrame`): lines of the output CSV with columns `skipped` (a reason or empty), `at_cls`,
            `share`, `non_local`, `ierf_peak_distance`, `mass_distance`, `activation_peak_distance`.

    Returns:
        `dict`: `rows`, `explained` (not skipped), `at_cls` (explained at the CLS token: non-local by definition,
        counted apart), `patch` (explained at a patch), `non_local` and `local` (patch explanations with share
        < 0.25 and ≥ 0.25), `undetermined` (no positive iERF mass), `non_local_rate` (of `patch`), `median_share`,
        `ierf_peak_within_1` (iERF peak within the 3 × 3 neighbourhood of q), and the medians
        `median_ierf_peak_distance`, `median_mass_distance`, `median_activation_peak_distance` over the patch
        explanations (NaN when there are none); `median_z_ratio`: the median over all rows of z at the case-study
        patch over z at the feature's peak (columns `z_at_patch`, `z_peak`).
    """
    explained = records[records["skipped"].fillna("") == ""]
    patch = explained[~explained["at_cls"].astype(bool)]
    defined = patch[patch["share"].notna()]
    non_local = int(defined["non_local"].astype(bool).sum())

    def median(column: str) -> float:
        values = patch[column].dropna()
        return float(values.median()) if len(values) else float("nan")

    return {
        "rows": len(records),
        "explained": len(explained),
        "at_cls": len(explained) - len(patch),
        "patch": len(patch),
        "non_local": non_local,
        "local": len(defined) - non_local,
        "undetermined": len(patch) - len(defined),
        "non_local_rate": non_local / len(patch) if len(patch) else float("nan"),
        "median_share": median("share"),
        "ierf_peak_within_1": int((patch["ierf_peak_distance"] <= 1).sum()),
        "median_ierf_peak_distance": median("ierf_peak_distance"),
        "median_mass_distance": median("mass_distance"),
        "median_activation_peak_distance": median("activation_peak_distance"),
        "median_z_ratio": float((records["z_at_patch"] / records["z_peak"]).median())
        if len(records)
        else float("nan"),
    }


def summary_table(records: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """
    [`summarise`] per recurring feature (the `(block, feature)` rows of `features`, in their order) and over all
    rows, per back-end and kind of position; columns `group`, `backend`, `at` and the summary's keys.
    """
    groups = [
        (f"block {b} feature {f}", (records["block"] == b) & (records["feature"] == f))
        for b, f in zip(features["block"], features["feature"], strict=True)
    ]
    groups.append(("all rows", pd.Series(True, index=records.index)))
    lines = []
    for name, chosen in groups:
        for backend in records["backend"].unique():
            for at in (AT_PATCH, AT_PEAK):
                subset = records[chosen & (records["backend"] == backend) & (records["at"] == at)]
                lines.append({"group": name, "backend": backend, "at": at} | summarise(subset))
    return pd.DataFrame(lines)


# ------------------------------------------------------------------------------------------------ report
def replace_section(text: str, heading: str, body: str) -> str:
    """
    `text` with the section under `heading` (up to the next heading of the same or a higher level, or the end)
    replaced by `heading` + `body`; appended at the end when the heading is absent. Everything else is kept.
    """
    level = len(heading) - len(heading.lstrip("#"))
    section = f"{heading}\n\n{body.strip()}\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == heading), None)
    if start is None:
        return text.rstrip("\n") + "\n\n" + section
    end = start + 1
    while end < len(lines):
        stripped = lines[end].lstrip("#")
        hashes = len(lines[end]) - len(stripped)
        if 0 < hashes <= level and stripped.startswith(" "):
            break
        end += 1
    rest = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + rest if rest else "")


def _fmt(value: float, digits: int = 1) -> str:
    return "–" if value != value else f"{value:.{digits}f}"


def _pairs(summary: pd.DataFrame):
    """The summary's rows as `(case-study patch row, feature's peak row)` per group and back-end, in order."""
    for (_, _), both in summary.groupby(["group", "backend"], sort=False):
        yield both[both["at"] == AT_PATCH].iloc[0], both[both["at"] == AT_PEAK].iloc[0]


def _non_local_cell(r) -> str:
    cell = "–" if r.patch == 0 else f"{r.non_local} of {r.patch}"
    if r.at_cls:
        cell += f" (+{r.at_cls} CLS)"
    if r.explained < r.rows:
        cell += f" ({r.rows - r.explained} skipped)"
    return cell


def markdown_table(summary: pd.DataFrame) -> str:
    """
    The summary table of [`summary_table`] in Markdown: one line per group and back-end, each cell "at the
    case-study patch / at the feature's peak" where it has two values.
    """
    lines = [
        "| feature | rows | back-end | non-local at the case-study patch | non-local at the feature's peak "
        "| median share (patch / peak) | iERF peak within 3×3 (patch / peak) "
        "| median distance iERF peak → q (patch / peak) | median mass distance (patch / peak) "
        "| median distance case-study patch → activation peak | median z at patch / z at peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p, k in _pairs(summary):
        lines.append(
            f"| {p.group} | {p.rows} | {p.backend} | {_non_local_cell(p)} | {_non_local_cell(k)} "
            f"| {_fmt(p.median_share, 2)} / {_fmt(k.median_share, 2)} "
            f"| {p.ierf_peak_within_1} of {p.patch} / {k.ierf_peak_within_1} of {k.patch} "
            f"| {_fmt(p.median_ierf_peak_distance)} / {_fmt(k.median_ierf_peak_distance)} "
            f"| {_fmt(p.median_mass_distance, 2)} / {_fmt(k.median_mass_distance, 2)} "
            f"| {_fmt(p.median_activation_peak_distance)} | {_fmt(p.median_z_ratio, 2)} |"
        )
    return "\n".join(lines)


def sentences(summary: pd.DataFrame) -> list[str]:
    """One factual sentence per group (recurring feature, then all rows), both back-ends, both positions."""
    out = []
    pairs = list(_pairs(summary))
    for group in summary["group"].unique():
        mine = [(at_patch, at_peak) for at_patch, at_peak in pairs if at_patch.group == group]
        first = mine[0][0]
        counts = "; ".join(
            f"with {p.backend}, in {p.local} of {p.patch} at the case-study patch and {k.local} of {k.patch} at the "
            "feature's peak" + (f" (the peak is the CLS token in {k.at_cls} more)" if k.at_cls else "")
            for p, k in mine
        )
        out.append(
            f"For {group} ({first.rows} rows; the case-study patch lies a median "
            f"{_fmt(first.median_activation_peak_distance)} patches from the activation map's peak, and z there is a "
            f"median {_fmt(first.median_z_ratio, 2)} of the feature's peak z), at least a quarter of the positive "
            f"iERF mass lies within the 3×3 neighbourhood of q: {counts}."
        )
    return out


# ------------------------------------------------------------------------------------------------ running
def explain_rows(model, saes, pixels, rows: pd.DataFrame) -> list[dict]:
    """
    The explanation records of one image's case-study rows (`rows`: its lines of case_studies.csv): per block and
    back-end, one call at the features' own peaks and one at the case-study patches where the feature is active.
    """
    from hf_fga.cafe import explain_feature

    records = []
    for block, mine in rows.groupby("block", sort=True):
        sae = saes[int(block)]
        features = [int(f) for f in mine["feature"]]
        for backend in BACKENDS:
            peak = explain_feature(model, sae, pixels, features, method=backend)
            prefix = peak.num_prefix_tokens
            activation = peak.activation_map[0].numpy()  # (F, h, w)
            width = activation.shape[-1]
            z_patch = np.array([activation[n].reshape(-1)[p] for n, p in enumerate(mine["patch"])])
            active = np.flatnonzero(z_patch > 0)
            at_patch = None
            if len(active):
                tokens = torch.tensor([[int(mine["patch"].iloc[n]) + prefix for n in active]])
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # every requested position is active: a warning is a bug
                    at_patch = explain_feature(
                        model, sae, pixels, [features[n] for n in active], position=tokens, method=backend
                    )
            for n, case in enumerate(mine.itertuples()):
                common = {
                    "image_id": case.image_id,
                    "patch": int(case.patch),
                    "row": int(case.row),
                    "col": int(case.col),
                    "block": int(block),
                    "feature": int(case.feature),
                    "role": case.role,
                    "backend": backend,
                    "z_at_patch": float(z_patch[n]),
                    "z_peak": float(peak.value[0, n]),
                    "case_to_activation_peak": chebyshev(
                        (int(case.patch) // width, int(case.patch) % width), peak_patch(activation[n])
                    ),
                }
                records.append(common | _explained(peak, n, AT_PEAK))
                if n in active:
                    records.append(common | _explained(at_patch, int(np.flatnonzero(active == n)[0]), AT_PATCH))
                else:
                    records.append(common | {"at": AT_PATCH, "skipped": SKIP_INACTIVE})
    return records


def _explained(out, n: int, at: str) -> dict:
    """The record of explanation `n` (feature slot) of a one-image [`FeatureExplanation`]."""
    position = int(out.position[0, n])
    return {
        "at": at,
        "skipped": "",
        "position": position,
        "z": float(out.value[0, n]),
        "at_cls": bool(out.locality.at_cls[0, n]),
        "share": float(out.locality.share[0, n]),
        "non_local": bool(out.locality.non_local[0, n]),
    } | describe(out.ierf[0, n].numpy(), out.activation_map[0, n].numpy(), position, out.num_prefix_tokens)


def figure(model, saes, processor, images: dict, cases: pd.DataFrame, features: pd.DataFrame, path: Path) -> str:
    """
    For the 3 most frequent features, their first case-study row (csv order) where the feature is active at the
    patch: the image, the activation map and the `attnlrp` iERF at the case-study patch (white box). Returns the
    caption.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_fga.cafe import explain_feature
    from hf_fga.viz import draw_patch_boxes, overlay

    chosen = features.head(3)
    fig, axes = plt.subplots(len(chosen), 3, figsize=(7.2, 2.55 * len(chosen)), squeeze=False)
    notes = []
    for ax_row, (block, feature) in zip(axes, zip(chosen["block"], chosen["feature"], strict=True), strict=True):
        candidates = cases[(cases["block"] == block) & (cases["feature"] == feature) & (cases["z_at_patch"] > 0)]
        case = candidates.iloc[0]
        pixels = processor(images=images[case["image_id"]], return_tensors="pt")["pixel_values"]
        out = explain_feature(
            model, saes[int(block)], pixels, int(feature), position=int(case["patch"]) + 1, method=PRIMARY
        )
        grid = tuple(out.activation_map.shape[-2:])
        base = images[case["image_id"]].convert("RGB").resize((224, 224))
        box = [(int(case["row"]), int(case["col"]), "white")]
        share = float(out.locality.share[0])
        panels = [
            (
                draw_patch_boxes(base, box, grid, width=3),
                f"{case['image_id']}\npatch ({case['row']}, {case['col']})",
            ),
            (
                draw_patch_boxes(overlay(base, out.activation_map[0].numpy()), box, grid, width=3),
                f"block {block} feature {feature}\nactivation map (z = {float(out.value[0]):.2f} at q)",
            ),
            (
                draw_patch_boxes(overlay(base, np.clip(out.ierf[0].numpy(), 0, None)), box, grid, width=3),
                f"attnlrp iERF (positive part)\n{share:.0%} within 3×3 of q",
            ),
        ]
        for ax, (picture, title) in zip(ax_row, panels, strict=True):
            ax.imshow(picture)
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        notes.append(f"block {block} feature {feature} on {case['image_id']} patch ({case['row']}, {case['col']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return "; ".join(notes)


def wrap(paragraph: str, width: int = 119) -> str:
    """A Markdown paragraph (or a `- ` bullet, continued with an indent) wrapped at `width` columns."""
    bullet = paragraph.startswith("- ")
    return textwrap.fill(
        paragraph,
        width=width,
        subsequent_indent="  " if bullet else "",
        break_long_words=False,
        break_on_hyphens=False,
    )


def section_body(cases: pd.DataFrame, records: pd.DataFrame, features: pd.DataFrame, caption: str) -> str:
    """The Markdown of section 7 (without its heading)."""
    summary = summary_table(records, features)
    active = int((cases["z_at_patch"] > 0).sum())
    listed = ", ".join(f"block {b} feature {f} ({n})" for b, f, n in features.itertuples(index=False))
    prose = [
        f"`{COMMAND}` (under a minute on one CPU thread; one line per row, back-end and q in "
        "[`cafe/case_study_ierfs.csv`](cafe/case_study_ierfs.csv)). Question (issue 14): for the features named by "
        "the chest X-ray case studies ([chest_xray.md §6](chest_xray.md#6-feature-case-studies-methodmd-7), the "
        f"{len(cases)} rows of `chest_xray/case_studies/case_studies.csv`), is what drives them where they fire?",
        "Each row's (block, feature) is explained on its image with `hf_fga.cafe.explain_feature` at two tokens q: "
        f"the **{AT_PATCH}** (the patch whose attribution FGA changed, token = patch + 1) and the **{AT_PEAK}** on "
        "the image (`position=None`, the token where z is largest, patch or CLS); back-ends `attnlrp` (primary) and "
        "`gradient-x-input`. Non-local (method.md §9): under 25 % of the positive iERF mass within the 3 × 3 patches "
        "around q. Distances are in patches (Chebyshev: max of the row and column offsets, so ≤ 1 is the 3 × 3 "
        "neighbourhood): from q to the iERF's peak, the positive-mass-weighted mean distance of the iERF to q, and "
        "from q to the activation map's peak.",
        f"z > 0 at the case-study patch: {active} of {len(cases)} rows"
        + ("." if active == len(cases) else f"; the other {len(cases) - active} are skipped there ({SKIP_INACTIVE}).")
        + " The case-study patch is the activation map's own peak in "
        f"{int((cases['case_to_activation_peak'] == 0).sum())} of {len(cases)} rows (median distance "
        f"{cases['case_to_activation_peak'].median():.1f} patches). Recurring features (≥ 2 rows): {listed}.",
    ]
    blocks = [*map(wrap, prose), markdown_table(summary), "\n".join(wrap(f"- {s}") for s in sentences(summary))]
    blocks += [
        f"![case-study iERFs](cafe/{FIGURE})",
        wrap(
            f"Figure: {caption}. Left the image with the case-study patch q (white box), middle the feature's "
            "activation map, right the positive part of its `attnlrp` iERF at q."
        ),
    ]
    return "\n\n".join(blocks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the chest X-ray dataset (test split)")
    parser.add_argument("--cases", type=Path, default=CASE_STUDIES)
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    from datasets import load_dataset
    from transformers import ViTForImageClassification, ViTImageProcessorPil

    from hf_fga import bundled
    from hf_fga.images import load_image
    from hf_fga.sae import load_saes

    cases = pd.read_csv(args.cases)
    model = ViTForImageClassification.from_pretrained(bundled.model_dir(), attn_implementation="eager").eval()
    processor = ViTImageProcessorPil.from_pretrained(bundled.model_dir())
    saes = load_saes(str(bundled.sae_dir()), layers=sorted(int(b) for b in cases["block"].unique()))
    dataset = load_dataset(str(args.data), split="test")
    index = {name: i for i, name in enumerate(dataset["file_name"])}
    missing = sorted(set(cases["image_id"]) - set(index))
    if missing:
        raise SystemExit(f"{len(missing)} case-study images are not in the test split of {args.data}: {missing[:3]}")
    images = {name: load_image(dataset[index[name]]["image"]) for name in cases["image_id"].unique()}
    records = []
    for name, rows in cases.groupby("image_id", sort=False):
        pixels = processor(images=images[name], return_tensors="pt")["pixel_values"]
        records += explain_rows(model, saes, pixels, rows)
    records = pd.DataFrame(records)
    args.output.mkdir(parents=True, exist_ok=True)
    records.to_csv(args.output / "case_study_ierfs.csv", index=False)
    per_row = records[records["backend"] == PRIMARY].drop_duplicates(["image_id", "patch", "block", "feature"])
    cases = cases.merge(
        per_row[["image_id", "patch", "block", "feature", "z_at_patch", "case_to_activation_peak"]],
        on=["image_id", "patch", "block", "feature"],
        validate="one_to_one",
    )
    features = frequent_features(cases)
    caption = figure(model, saes, processor, images, cases, features, args.output / FIGURE)
    body = section_body(cases, records, features, caption)
    args.report.write_text(replace_section(args.report.read_text(), SECTION, body))
    print(body)
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
