"""
Where does the attribution go? Per-image location statistics of attribution maps that can hint at shortcut cues
(burned-in letters and markers, scale bars, text), their comparison between two methods at the patient (or image)
level, and the `findings.md` page of `scripts/attribution_findings.py` (issue 16: "what the attributions reveal").

The rules are fixed here, before any result was seen, and the page states them:

- **positive mass**: every statistic reads the positive part max(a, 0) of a map `a (h, w)` over its patch grid; a
  map without positive mass (all zero or all negative) has no location, so its statistics are NaN.
- **border share**: the fraction of the positive mass on the outer ring of `BORDER_WIDTH` patch(es) (52 of the 196
  patches of a 14 × 14 grid, 26.5 % of the area). Burned-in letters, orientation markers, and in ultrasound the scale
  bars and text, usually sit there. A uniform map scores the ring's area fraction.
- **near-white share**: the fraction of the positive mass on the image's `BRIGHT_PATCHES` most near-white patches:
  a pixel is near-white when its intensity (the mean of the channels, in [0, 1], of the image as the model sees it)
  is at least `NEAR_WHITE`; a patch's saturation is its fraction of near-white pixels; the set is the
  `BRIGHT_PATCHES` patches of highest saturation among those with any (ties: raster order), so it may be smaller
  or empty (then NaN). Burned-in text is near-white, but so are bone and some soft tissue in an X-ray: the set's
  area is reported beside the share.
- **top patch on the border**: 1 when the patch of largest attribution (first in raster order on ties) lies in the
  ring, else 0.
- **border-heavy**: an image whose border share is at least `BORDER_HEAVY` (half the positive mass on a quarter of
  the area).

Methods are compared image by image (`d = method − reference` on each statistic); the test is the two-sided
Wilcoxon signed-rank test on the per-patient means of `d` (`hypothesis_tests.patient_paired_tests`; per image where
the dataset has no patient ids), Holm across the three statistics. Groups (true class, correct / wrong prediction)
are described, not tested.

**The intervention** (added 2026-12-02, its rules fixed before it was run): a border share says where a map puts its
mass, not whether the model needs what is there. [`blank_border`] replaces every pixel of the ring's patches with the
image's per-channel mean (the `mean` fill of method.md §5's papers preset) and the model classifies the image again;
[`border_ablation`] reports per image whether the predicted class changes and how far the probability of the clean
prediction falls, and [`ablation_markdown`] the share of changed predictions, accuracy and balanced accuracy before
and after, and, descriptively, the Spearman correlation between each method's border share and that fall (does a
map that puts more mass on the border pick the images whose prediction leans on it?).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from .. import bundled
from ..viz import captioned_stack, draw_patch_boxes, image_grid, overlay
from .hypothesis_tests import holm, patient_paired_tests, per_patient_means
from .split_overlap import balanced_accuracy
from .statistics import paired_tests

BORDER_WIDTH = 1
NEAR_WHITE = 0.9
BRIGHT_PATCHES = 10
BORDER_HEAVY = 0.5
STATISTICS = ("border_share", "bright_share", "top_patch_border")
STATISTIC_NAMES = {
    "border_share": "border share",
    "bright_share": "near-white share",
    "top_patch_border": "top patch on the border",
}
BINARY_STATISTICS = frozenset({"top_patch_border"})  # summarised by the fraction of images, not the median
KEY_FINDINGS_FILE = "key_findings.json"
FINDINGS_FILE = "findings.md"
OBSERVATIONS_FILE = "observations.md"  # written by a person who looked at the figures; never by the script


def findings_command(domain: str, output: str | os.PathLike) -> str:
    """The command that writes a domain's findings folder (shown by the summary while it is missing)."""
    return f"python scripts/attribution_findings.py --domain {domain} --output {output}"


def not_run_text(domain: str, output: str | os.PathLike) -> str:
    """What the summary says of a domain without findings: the command, or that the domain has no bundled model."""
    if domain not in bundled.list_domains():
        return (
            "**not run yet**: the package bundles no model of this domain (the analysis explains the bundled models: "
            f"{', '.join(bundled.list_domains())})."
        )
    return f"**not run yet**: `{findings_command(domain, output)}` (needs the domain's bundled model and SAEs)."


def _maps(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (B, h, w) (one patch map per image); got shape {maps.shape}.")
    if not np.isfinite(maps).all():
        raise ValueError("maps hold NaN or infinite values: an attribution map must be finite everywhere.")
    return maps


def border_mask(grid: tuple[int, int], width: int = BORDER_WIDTH) -> np.ndarray:
    """
    The outer ring of `width` patches of a `grid = (h, w)` patch grid, as a boolean `(h, w)` mask.

    Example:
    ```python
    >>> int(border_mask((14, 14)).sum()), border_mask((3, 3)).astype(int).tolist()
    (52, [[1, 1, 1], [1, 0, 1], [1, 1, 1]])

    ```
    """
    h, w = grid
    if width < 1 or 2 * width > min(h, w):
        raise ValueError(f"border width must be ≥ 1 and leave a grid of {grid} an inner part; got {width}.")
    mask = np.ones((h, w), dtype=bool)
    mask[width : h - width, width : w - width] = False
    return mask


def blank_border(pixel_values: np.ndarray, grid: tuple[int, int], width: int = BORDER_WIDTH) -> np.ndarray:
    """
    A copy of `pixel_values (B, C, H, W)` whose outer ring of `width` patches of the `grid = (h, w)` patch grid holds
    each image's per-channel mean over all its pixels (method.md §5's `mean` fill); the inner patches are unchanged.
    """
    pixel_values = np.asarray(pixel_values)
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (batch, channels, height, width); got shape {pixel_values.shape}.")
    h, w = grid
    height, width_px = pixel_values.shape[-2:]
    if height % h or width_px % w:
        raise ValueError(f"an image of {height} × {width_px} pixels does not split into a {h} × {w} patch grid.")
    mask = np.kron(border_mask(grid, width), np.ones((height // h, width_px // w), dtype=bool))
    mean = pixel_values.mean(axis=(2, 3), keepdims=True)
    return np.where(mask, mean, pixel_values)


def border_ablation(clean: np.ndarray, blanked: np.ndarray) -> pd.DataFrame:
    """
    Per image, from the class probabilities `(N, classes)` of the clean and the border-blanked image: `prediction`
    and `blanked_prediction` (class indices), `changed`, `probability` (of the clean prediction), `blanked_probability`
    (of the same class on the blanked image) and `drop` (= probability − blanked_probability).
    """
    clean, blanked = np.asarray(clean, np.float64), np.asarray(blanked, np.float64)
    if clean.shape != blanked.shape or clean.ndim != 2:
        raise ValueError(f"clean and blanked probabilities must both be (images, classes); got {clean.shape} and "
                         f"{blanked.shape}.")  # fmt: skip
    prediction = clean.argmax(axis=1)
    rows = np.arange(len(clean))
    return pd.DataFrame(
        {
            "prediction": prediction,
            "blanked_prediction": blanked.argmax(axis=1),
            "changed": prediction != blanked.argmax(axis=1),
            "probability": clean[rows, prediction],
            "blanked_probability": blanked[rows, prediction],
            "drop": clean[rows, prediction] - blanked[rows, prediction],
        }
    )


def ablation_markdown(table: pd.DataFrame, methods: Sequence[str], border_width: int = BORDER_WIDTH) -> str:
    """
    The intervention's paragraph and table from a per-image `table` with `label`, `prediction`,
    `blanked_prediction`, `changed`, `drop` (class names or indices, compared as they are) and one border share
    column per method in `methods`.
    """
    from scipy import stats

    n = len(table)
    correct = table["prediction"] == table["label"]
    still = table["blanked_prediction"] == table["label"]
    lines = [
        f"Every pixel of the outer ring of {border_width} patch(es) set to the image's per-channel mean, and the "
        f"model asked again (rules fixed beforehand, module docstring of `hf_fga/evaluation/findings.py`): "
        f"**{int(table['changed'].sum())} of {n} predictions change ({_percent(table['changed'].mean())})**; the "
        f"probability of the clean prediction falls by {table['drop'].median():+.3f} at the median "
        f"(mean {table['drop'].mean():+.3f}; it rises where negative).",
        "",
        "| | accuracy | balanced accuracy |",
        "| --- | --- | --- |",
        f"| clean | {correct.mean():.3f} | {balanced_accuracy(table['label'], table['prediction']):.3f} |",
        f"| border blanked | {still.mean():.3f} | "
        f"{balanced_accuracy(table['label'], table['blanked_prediction']):.3f} |",
        "",
        "Does a map's border share pick the images whose prediction leans on the border? Spearman correlation, per "
        "image (descriptive), between each method's border share and the fall in probability:",
        "",
        "| method | Spearman ρ | p | images |",
        "| --- | --- | --- | --- |",
    ]
    for method in methods:
        pairs = table[[method, "drop"]].dropna()
        rho, p = stats.spearmanr(pairs[method], pairs["drop"]) if len(pairs) > 2 else (float("nan"), float("nan"))
        lines.append(f"| {method} | {rho:+.3f} | {_p(p)} | {len(pairs)} |")
    return "\n".join(lines)


def input_intensity(pixel_values: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """
    The images as the model sees them, as intensities in [0, 1]: the processor's normalisation undone
    (`x · std + mean` per channel), clipped to [0, 1], averaged over the channels.

    Args:
        pixel_values (`np.ndarray` of shape `(B, C, H, W)`): the processor's output.
        mean, std (`Sequence[float]` of length C): the processor's `image_mean` and `image_std`.

    Returns:
        `np.ndarray` of shape `(B, H, W)`, float64.
    """
    x = np.asarray(pixel_values, dtype=np.float64)
    if x.ndim != 4 or len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise ValueError(
            f"pixel_values must be (B, C, H, W) with one mean and std per channel; got shape {x.shape}, "
            f"{len(mean)} means and {len(std)} stds."
        )
    shape = (1, x.shape[1], 1, 1)
    pixels = x * np.reshape(np.asarray(std, dtype=np.float64), shape) + np.reshape(np.asarray(mean), shape)
    return np.clip(pixels, 0.0, 1.0).mean(axis=1)


def patch_saturation(intensity: np.ndarray, grid: tuple[int, int], threshold: float = NEAR_WHITE) -> np.ndarray:
    """
    Per patch, the fraction of its pixels whose intensity is at least `threshold`.

    Args:
        intensity (`np.ndarray` of shape `(B, H, W)`): intensities in [0, 1] ([`input_intensity`]).
        grid (`tuple[int, int]`): the patch grid `(h, w)`; H and W must be multiples of h and w.
        threshold (`float`, *optional*, defaults to `NEAR_WHITE`): the near-white level.

    Returns:
        `np.ndarray` of shape `(B, h, w)`, float64 in [0, 1].
    """
    intensity = np.asarray(intensity, dtype=np.float64)
    h, w = grid
    if intensity.ndim != 3 or intensity.shape[1] % h or intensity.shape[2] % w:
        raise ValueError(
            f"intensity must be (B, H, W) with H, W multiples of the patch grid {grid}; got shape {intensity.shape}."
        )
    b, height, width = intensity.shape
    near_white = (intensity >= threshold).reshape(b, h, height // h, w, width // w)
    return near_white.mean(axis=(2, 4))


def bright_patch_mask(saturation: np.ndarray, count: int = BRIGHT_PATCHES) -> np.ndarray:
    """
    The `count` patches of highest saturation among those with any near-white pixel (ties: raster order), per image.

    Args:
        saturation (`np.ndarray` of shape `(B, h, w)`): [`patch_saturation`].
        count (`int`, *optional*, defaults to `BRIGHT_PATCHES`): the largest size of the set.

    Returns:
        `np.ndarray` of shape `(B, h, w)`, bool; an image without a near-white pixel has an empty set.
    """
    saturation = np.asarray(saturation, dtype=np.float64)
    if saturation.ndim != 3 or count < 1:
        raise ValueError(f"saturation must be (B, h, w) and count ≥ 1; got shape {saturation.shape}, count {count}.")
    flat = saturation.reshape(len(saturation), -1)
    order = np.argsort(-flat, axis=1, kind="stable")[:, :count]
    mask = np.zeros_like(flat, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return (mask & (flat > 0)).reshape(saturation.shape)


def positive_share(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """
    The fraction of each map's positive mass Σ max(a, 0) that lies on `mask`.

    Args:
        maps (`np.ndarray` of shape `(B, h, w)`): attribution maps.
        mask (`np.ndarray` of shape `(h, w)` or `(B, h, w)`, bool): the patches counted (one mask for all maps, or one
            per map).

    Returns:
        `np.ndarray` of shape `(B,)`, float64 in [0, 1]; NaN for a map without positive mass.
    """
    maps = _maps(maps)
    mask = np.broadcast_to(np.asarray(mask, dtype=bool), maps.shape)
    positive = np.clip(maps, 0.0, None)
    total = positive.sum(axis=(1, 2))
    on_mask = np.where(mask, positive, 0.0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, on_mask / total, np.nan)


def top_patch_in(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """
    1.0 where each map's largest patch (first in raster order on ties) lies on `mask`, else 0.0; NaN for a map without
    positive mass. Shapes as in [`positive_share`].
    """
    maps = _maps(maps)
    mask = np.broadcast_to(np.asarray(mask, dtype=bool), maps.shape).reshape(len(maps), -1)
    flat = maps.reshape(len(maps), -1)
    top = np.take_along_axis(mask, flat.argmax(axis=1)[:, None], axis=1)[:, 0].astype(np.float64)
    return np.where(flat.max(axis=1) > 0, top, np.nan)


def location_statistics(
    maps: np.ndarray,
    intensity: np.ndarray,
    *,
    border_width: int = BORDER_WIDTH,
    threshold: float = NEAR_WHITE,
    bright_patches: int = BRIGHT_PATCHES,
) -> pd.DataFrame:
    """
    Every statistic of the module docstring for a batch of maps of the same images.

    Args:
        maps (`np.ndarray` of shape `(B, h, w)`): one attribution map per image.
        intensity (`np.ndarray` of shape `(B, H, W)`): the images ([`input_intensity`]).

    Returns:
        `pd.DataFrame` of B rows: `border_share`, `bright_share`, `top_patch_border`, `bright_area` (the near-white
        set's fraction of the patches) and `positive_mass` (Σ max(a, 0)).
    """
    maps = _maps(maps)
    if len(intensity) != len(maps):
        raise ValueError(f"one image per map: got {len(maps)} maps and {len(intensity)} images.")
    grid = maps.shape[1:]
    ring = border_mask(grid, border_width)
    bright = bright_patch_mask(patch_saturation(intensity, grid, threshold), bright_patches)
    has_bright = bright.any(axis=(1, 2))
    return pd.DataFrame(
        {
            "border_share": positive_share(maps, ring),
            "bright_share": np.where(has_bright, positive_share(maps, bright), np.nan),
            "top_patch_border": top_patch_in(maps, ring),
            "bright_area": bright.mean(axis=(1, 2)),
            "positive_mass": np.clip(maps, 0.0, None).sum(axis=(1, 2)),
        }
    )


def _center(values: pd.Series, statistic: str) -> float:
    return float(values.mean() if statistic in BINARY_STATISTICS else values.median())


def _value(value: float, statistic: str) -> str:
    return _percent(value) if statistic in BINARY_STATISTICS else _number(value)


def method_comparison(
    table: pd.DataFrame, method: str, reference: str, statistics: Sequence[str] = STATISTICS
) -> pd.DataFrame:
    """
    `method` against `reference` on each statistic, image by image: the paired differences, their per-unit means
    (column `unit`: the patient, or the image) and the two-sided Wilcoxon test on those, Holm across `statistics`.

    Args:
        table (`pd.DataFrame`): per image and method, columns `image_id`, `unit`, `method` and the statistics.

    Returns:
        `pd.DataFrame` one row per statistic: `images`, `units` (with a defined difference), `reference_value` and
        `method_value` (the median over images; for a yes / no statistic the fraction of yes), `median_difference`,
        `unit_mean_difference`, `method_higher` (fraction of images with d > 0), `image_p` (Wilcoxon over images),
        `unit_p` (over unit means) and `holm_p`.
    """
    wide = table.pivot(index="image_id", columns="method", values=list(statistics))
    units = table.drop_duplicates("image_id").set_index("image_id")["unit"]
    rows = []
    for statistic in statistics:
        ours, theirs = wide[(statistic, method)], wide[(statistic, reference)]
        d = (ours - theirs).dropna()
        unit_means = per_patient_means(d.to_numpy(), units.loc[d.index].to_numpy())
        rows.append(
            {
                "statistic": statistic,
                "images": len(d),
                "units": len(unit_means),
                "reference_value": _center(theirs, statistic),
                "method_value": _center(ours, statistic),
                "median_difference": float(d.median()) if len(d) else np.nan,
                "unit_mean_difference": float(unit_means.mean()) if len(unit_means) else np.nan,
                "method_higher": float((d > 0).mean()) if len(d) else np.nan,
                "image_p": paired_tests(d.to_numpy())[0],
                "unit_p": patient_paired_tests(d.to_numpy(), units.loc[d.index].to_numpy())[0],
            }
        )
    out = pd.DataFrame(rows)
    out["holm_p"] = holm(out["unit_p"].fillna(1.0)) if len(out) else []
    return out


def group_table(table: pd.DataFrame, groups: Mapping[str, pd.Series]) -> pd.DataFrame:
    """
    Per group of images and method: `images`, the median and quartiles of the border share, the fractions of
    border-heavy images and of images whose top patch is on the border, the median near-white share (over the images
    that have a near-white patch, `bright_images`).

    Args:
        table (`pd.DataFrame`): per image and method, columns `image_id`, `method` and the statistics.
        groups (`Mapping[str, pd.Series]`): group name → boolean Series indexed by image id (which images belong).
    """
    rows = []
    for name, members in groups.items():
        chosen = table[table["image_id"].map(members).fillna(False).astype(bool)]
        for method, part in chosen.groupby("method", sort=False):
            border = part["border_share"].dropna()
            rows.append(
                {
                    "group": name,
                    "method": method,
                    "images": len(part),
                    "border_median": float(border.median()) if len(border) else np.nan,
                    "border_q1": float(border.quantile(0.25)) if len(border) else np.nan,
                    "border_q3": float(border.quantile(0.75)) if len(border) else np.nan,
                    "border_heavy": float((border >= BORDER_HEAVY).mean()) if len(border) else np.nan,
                    "top_patch_border": float(part["top_patch_border"].mean()),
                    "bright_median": float(part["bright_share"].median()),
                    "bright_images": int(part["bright_share"].notna().sum()),
                }
            )
    return pd.DataFrame(rows)


def _percent(value: float) -> str:
    return "—" if np.isnan(value) else f"{100 * value:.1f} %"


def _number(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:.3f}"


def _p(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:.2g}"


def group_markdown(groups: pd.DataFrame) -> str:
    """[`group_table`] as Markdown."""
    lines = [
        "| images | method | n | border share, median [Q1, Q3] | border-heavy (≥ 50 %) | top patch on the border | "
        "near-white share, median (images with a near-white patch) |",
        "|" + " --- |" * 7,
    ]
    for row in groups.itertuples(index=False):
        lines.append(
            f"| {row.group} | {row.method} | {row.images} | {_number(row.border_median)} [{_number(row.border_q1)}, "
            f"{_number(row.border_q3)}] | {_percent(row.border_heavy)} | {_percent(row.top_patch_border)} | "
            f"{_number(row.bright_median)} ({row.bright_images}) |"
        )
    return "\n".join(lines)


def method_comparison_markdown(comparison: pd.DataFrame, method: str, reference: str, unit: str) -> str:
    """
    [`method_comparison`] as Markdown (`unit`: `patients` or `images`, the unit of the confirmatory test; per image,
    the unit columns would repeat the image columns, so they are left out).
    """
    per_unit = unit != "images"
    header = [
        "statistic",
        f"{reference} (median; yes / no: fraction)",
        f"{method} (same)",
        "median difference",
        *([f"mean difference per {unit[:-1]}"] if per_unit else []),
        f"{method} higher (images)",
        f"images / {unit}" if per_unit else "images",
        "Wilcoxon p (images)",
        *([f"Wilcoxon p ({unit})"] if per_unit else []),
        f"Holm p ({unit})",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in comparison.itertuples(index=False):
        cells = [
            STATISTIC_NAMES[row.statistic],
            _value(row.reference_value, row.statistic),
            _value(row.method_value, row.statistic),
            f"{row.median_difference:+.3f}",
            *([f"{row.unit_mean_difference:+.3f}"] if per_unit else []),
            _percent(row.method_higher),
            f"{row.images} / {row.units}" if per_unit else str(row.images),
            _p(row.image_p),
            *([_p(row.unit_p)] if per_unit else []),
            _p(row.holm_p),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_sentence(row: pd.Series, method: str, reference: str, unit: str, alpha: float = 0.05) -> str:
    """One plain sentence on a row of [`method_comparison`]: the direction, the medians and the test's verdict."""
    name = STATISTIC_NAMES[row["statistic"]]
    direction = "more" if row["unit_mean_difference"] > 0 else "less" if row["unit_mean_difference"] < 0 else "as much"
    verdict = "significant" if row["holm_p"] < alpha else "not significant"
    return (
        f"{name}: {method} {_value(row['method_value'], row['statistic'])} vs {reference} "
        f"{_value(row['reference_value'], row['statistic'])} "
        f"({'of the images' if row['statistic'] in BINARY_STATISTICS else 'medians'}); per {unit[:-1]} {method} "
        f"has on average {direction} ({row['unit_mean_difference']:+.3f}), "
        f"{verdict} at {alpha:g} after Holm (p = {_p(row['holm_p'])}, {row['units']} {unit})."
    )


RULES = (
    "**positive mass**: each statistic reads max(a, 0) of the patch map; a map without positive mass has none (NaN).",
    f"**border share**: the share of the positive mass on the outer ring of {BORDER_WIDTH} patch (where burned-in "
    "letters, markers, scale bars and text usually sit); a uniform map scores the ring's area fraction.",
    f"**near-white share**: the share on the image's {BRIGHT_PATCHES} most near-white patches (pixels of intensity "
    f"≥ {NEAR_WHITE:g} in [0, 1] as the model sees the image; patches ranked by their fraction of such pixels, only "
    "patches with any; burned-in text is near-white, and so is bone).",
    "**top patch on the border**: whether the map's largest patch lies in the ring.",
    f"**border-heavy**: a border share ≥ {BORDER_HEAVY:g}.",
    "**test**: per image the difference FGA − TransMM of each statistic; two-sided Wilcoxon signed-rank test on the "
    "per-patient means of the differences (per image where the dataset has no patient ids), Holm across the three "
    "statistics. The groups (true class, correct or wrong prediction) are described, not tested.",
)
CAVEATS = (
    "A high border share is a hint, not proof, that the model reads a cue outside the anatomy: the maps explain the "
    "predicted class through the model's attention and gradients, and a border patch can matter for other reasons "
    "(the lung apex or the costophrenic angle at the edge of a tight crop, padding, the field edge). Look at the "
    "figures before concluding.",
    "The first grid is chosen by the statistic itself (the images with the highest FGA border share), so it shows "
    "the extreme cases by construction; the seeded random grid shows typical maps.",
    "The near-white set holds bone and dense tissue as well as burned-in text; its share says where bright patches "
    "draw attribution, not that text does.",
    "The overlays are min–max scaled per map: they show where each map is largest, not how large it is.",
)


@dataclass
class FindingsPage:
    """
    Everything `findings.md` states about one domain.

    Args:
        title (`str`): the domain in words.
        header (`str`): a Markdown paragraph on the run (command, images, model, configuration, seconds).
        unit (`str`): `patients` or `images`, the unit of the confirmatory test.
        groups (`pd.DataFrame`): [`group_table`].
        comparison (`pd.DataFrame`): [`method_comparison`] of `method` against `reference`.
        heavy (`pd.DataFrame`): the most border-heavy images under `method` (`image_id`, one border share column per
            method), listed as they are.
        figures (`list[tuple[str, str]]`): `(file name, caption)` in the findings folder.
        border_area (`float`): the ring's fraction of the patches (a uniform map's border share).
        bright_area (`float`): the median fraction of the patches in the near-white set.
        observations (`str | None`): what a person saw in the figures (`observations.md`), if written.
        ablation (`str | None`): the intervention's section ([`ablation_markdown`]), if it was run.
        ablation_line (`str | None`): its one-line result for the cross-domain summary.
    """

    title: str
    header: str
    unit: str
    groups: pd.DataFrame
    comparison: pd.DataFrame
    heavy: pd.DataFrame
    figures: list[tuple[str, str]]
    border_area: float
    bright_area: float
    method: str = "FGA"
    reference: str = "TransMM"
    observations: str | None = None
    ablation: str | None = None
    ablation_line: str | None = None

    def key_lines(self) -> list[str]:
        """The lines the cross-domain summary shows: the run, the border and near-white comparisons, what was seen."""
        everyone = self.groups[self.groups["group"] == "all"].set_index("method")
        heavy = ", ".join(f"{m} {_percent(everyone.loc[m, 'border_heavy'])}" for m in everyone.index)
        lines = [
            self.header,
            f"Border-heavy maps (≥ {BORDER_HEAVY:g} of the positive mass on the outer ring, "
            f"{_percent(self.border_area)} of the area): {heavy}.",
        ]
        lines += [
            comparison_sentence(row, self.method, self.reference, self.unit)
            for _, row in self.comparison.iterrows()
            if row["statistic"] in ("border_share", "bright_share")
        ]
        if self.ablation_line:
            lines.append(self.ablation_line)
        if self.observations:
            first = next((line.strip() for line in self.observations.splitlines() if line.strip()), "")
            lines.append(f"By eye: {first}")
        return lines

    def markdown(self) -> str:
        heavy_lines = [
            f"- `{row.image_id}`: " + ", ".join(f"{m} {getattr(row, m):.3f}" for m in (self.method, self.reference))
            for row in self.heavy.itertuples(index=False)
        ]
        lines = [
            f"# What the attributions reveal: {self.title}",
            "",
            self.header,
            "",
            "## What was measured (rules fixed in `hf_fga/evaluation/findings.py` before the results were seen)",
            "",
            *[f"- {rule}" for rule in RULES],
            "",
            "## Numbers",
            "",
            f"A uniform map puts {_percent(self.border_area)} of its mass on the border ring; the near-white set "
            f"covers {_percent(self.bright_area)} of the patches (median over images).",
            "",
            group_markdown(self.groups),
            "",
            f"**{self.method} against {self.reference}**, image by image:",
            "",
            method_comparison_markdown(self.comparison, self.method, self.reference, self.unit),
            "",
            *[
                f"- {comparison_sentence(row, self.method, self.reference, self.unit)}"
                for _, row in self.comparison.iterrows()
            ],
            "",
            f"The {len(self.heavy)} images of highest {self.method} border share ({self.method}, {self.reference}):",
            "",
            *heavy_lines,
            "",
        ]
        if self.ablation:
            lines += ["## Intervention: the border ring blanked", "", self.ablation, ""]
        lines += [
            "## Figures",
            "",
        ]
        for name, caption in self.figures:
            lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
        lines += ["## Reading", "", *[f"- {caveat}" for caveat in CAVEATS], ""]
        lines += ["## What the figures show (by eye)", ""]
        lines.append(
            self.observations.strip()
            if self.observations
            else f"Not written yet: look at the figures and write what they show in `{OBSERVATIONS_FILE}` in this "
            "folder (the script embeds it and never overwrites it)."
        )
        return "\n".join(lines) + "\n"


def ring_outline(image: Image.Image, grid: tuple[int, int], width: int = BORDER_WIDTH) -> Image.Image:
    """A copy of `image` with the inner edge of the border ring of `grid` drawn as a thin white line."""
    out = image.convert("RGB").copy()
    ph, pw = out.height / grid[0], out.width / grid[1]
    box = [width * pw, width * ph, out.width - width * pw - 1, out.height - width * ph - 1]
    ImageDraw.Draw(out).rectangle(box, outline="white", width=1)
    return out


def overlay_rows(
    images: Sequence[Image.Image],
    maps: Mapping[str, np.ndarray],
    captions: Sequence[str],
    grid: tuple[int, int],
    bright: np.ndarray | None = None,
    side: int = 180,
    columns: int = 2,
) -> Image.Image:
    """
    A sheet of captioned rows: per image, the image (its near-white patches boxed in cyan when `bright (N, h, w)` is
    given) then one overlay per method of `maps` (`{name: (N, h, w)}`), each with the border ring outlined;
    `columns` images side by side per row.
    """
    panels = []
    for n, image in enumerate(images):
        base = image.convert("RGB").resize((side, side), Image.BILINEAR)
        plain = base
        if bright is not None:
            boxes = [(int(r), int(c), "cyan") for r, c in zip(*np.nonzero(bright[n]), strict=True)]
            plain = draw_patch_boxes(base, boxes, grid, width=1)
        tiles = [ring_outline(plain, grid)] + [ring_outline(overlay(base, m[n]), grid) for m in maps.values()]
        panels.append((image_grid(tiles, len(tiles), side), captions[n]))
    rows = []
    for start in range(0, len(panels), columns):
        stack = [captioned_stack([panel], font_size=11) for panel in panels[start : start + columns]]
        sheet = Image.new("RGB", (sum(s.width for s in stack) + 10 * (len(stack) - 1), stack[0].height), "white")
        left = 0
        for part in stack:
            sheet.paste(part, (left, 0))
            left += part.width + 10
        rows.append(sheet)
    width = max(r.width for r in rows)
    out = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    top = 0
    for row in rows:
        out.paste(row, (0, top))
        top += row.height
    return out


def save_small_png(image: Image.Image, path: str | os.PathLike, max_bytes: int = 1_000_000) -> Path:
    """Save `image` as a 256-colour PNG, halving its size until the file is below `max_bytes`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size < max_bytes or min(image.size) < 64:
            return path
        image = image.resize((image.width // 2, image.height // 2), Image.BILINEAR)


def share_histogram(
    table: pd.DataFrame, statistic: str, path: str | os.PathLike, reference_line: float | None, title: str
) -> Path:
    """Overlaid histograms of one statistic per method (column `method`), with a dashed line at `reference_line`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.4))
    bins = np.linspace(0.0, 1.0, 41)
    for method, part in table.groupby("method", sort=False):
        axis.hist(part[statistic].dropna(), bins=bins, alpha=0.55, label=f"{method} (n = {part[statistic].count()})")
    if reference_line is not None:
        axis.axvline(reference_line, color="black", linestyle="--", linewidth=1, label="uniform map")
    axis.set_xlabel(STATISTIC_NAMES.get(statistic, statistic))
    axis.set_ylabel("images")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


@dataclass
class KeyFindings:
    """
    What the summary page shows of a domain's findings: its Markdown `lines` and `figures` (`(file name, caption)`,
    relative to the findings folder `folder`).
    """

    folder: Path
    lines: list[str]
    figures: list[tuple[str, str]]


def write_key_findings(folder: str | os.PathLike, lines: Sequence[str], figures: Sequence[tuple[str, str]]) -> Path:
    """Write `key_findings.json` into the findings folder (read back by [`read_key_findings`])."""
    path = Path(folder) / KEY_FINDINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"lines": list(lines), "figures": [list(f) for f in figures]}, indent=1) + "\n")
    return path


def read_key_findings(folder: str | os.PathLike) -> KeyFindings | None:
    """A findings folder's [`KeyFindings`], or `None` when it has none (the analysis was not run)."""
    path = Path(folder) / KEY_FINDINGS_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("lines"), list):
        raise ValueError(
            f"{path} is not a key-findings file (expected {{'lines': [...], 'figures': [[file, caption], ...]}}): "
            "rerun scripts/attribution_findings.py for that domain."
        )
    return KeyFindings(Path(folder), [str(x) for x in data["lines"]], [tuple(f) for f in data.get("figures", [])])


__all__ = [
    "BORDER_HEAVY",
    "BORDER_WIDTH",
    "BRIGHT_PATCHES",
    "NEAR_WHITE",
    "STATISTICS",
    "KeyFindings",
    "ablation_markdown",
    "blank_border",
    "border_ablation",
    "border_mask",
    "findings_command",
    "bright_patch_mask",
    "group_table",
    "input_intensity",
    "location_statistics",
    "method_comparison",
    "not_run_text",
    "overlay_rows",
    "patch_saturation",
    "positive_share",
    "read_key_findings",
    "save_small_png",
    "share_histogram",
    "top_patch_in",
    "write_key_findings",
]
