"""Location statistics of attribution maps (hf_fga.evaluation.findings) against direct float64 computations."""

from __future__ import annotations

import doctest
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import stats

from hf_fga.evaluation import findings
from hf_fga.evaluation.summary import Domain
from hf_fga.evaluation.summary_report import findings_markdown

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "attribution_findings.py"
GRID = (4, 5)
PATCH = 3  # pixels per patch side: images are (12, 15)


def reference_statistics(a: np.ndarray, image: np.ndarray) -> dict[str, float]:
    """One map (h, w) and its image (H, W), by loops over patches, from the rules of the module docstring."""
    h, w = a.shape
    positive = total = border = 0.0
    saturation = {}
    for r in range(h):
        for c in range(w):
            value = max(float(a[r, c]), 0.0)
            total += value
            on_ring = r == 0 or c == 0 or r == h - 1 or c == w - 1
            border += value if on_ring else 0.0
            pixels = image[r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH]
            saturation[(r, c)] = sum(1.0 for p in pixels.ravel() if p >= findings.NEAR_WHITE) / pixels.size
    ranked = sorted((p for p in saturation if saturation[p] > 0), key=lambda p: (-saturation[p], p))
    bright = ranked[: findings.BRIGHT_PATCHES]
    bright_mass = sum(max(float(a[p]), 0.0) for p in bright)
    top = max(((r, c) for r in range(h) for c in range(w)), key=lambda p: (a[p], -p[0], -p[1]))
    nan = float("nan")
    positive = total
    return {
        "border_share": border / positive if positive > 0 else nan,
        "bright_share": (bright_mass / positive if positive > 0 else nan) if bright else nan,
        "top_patch_border": (float(top[0] in (0, h - 1) or top[1] in (0, w - 1)) if a.max() > 0 else nan),
        "bright_area": len(bright) / (h * w),
        "positive_mass": total,
    }


@pytest.fixture
def maps_and_images() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    maps = rng.normal(0.2, 1.0, size=(6, *GRID))
    maps[1] = 0.0  # no mass at all
    maps[2] = -np.abs(maps[2]) - 0.1  # negative only
    maps[3, 0, 2] = 50.0  # the top patch on the ring
    images = rng.uniform(0.0, 0.95, size=(6, GRID[0] * PATCH, GRID[1] * PATCH))
    images[4] = 0.5  # no near-white pixel: no near-white set
    images[5] = rng.uniform(0.92, 1.0, size=images[5].shape)  # every patch near-white: the set is the top 10
    return maps, images


def test_statistics_match_a_direct_computation(maps_and_images):
    maps, images = maps_and_images
    got = findings.location_statistics(maps, images)
    expected = pd.DataFrame([reference_statistics(a, im) for a, im in zip(maps, images, strict=True)])
    pd.testing.assert_frame_equal(got, expected, rtol=1e-12, atol=1e-15)
    assert got.loc[[1, 2], ["border_share", "bright_share", "top_patch_border"]].isna().all().all()
    assert np.isnan(got.loc[4, "bright_share"]) and got.loc[4, "bright_area"] == 0.0
    assert got.loc[5, "bright_area"] == findings.BRIGHT_PATCHES / (GRID[0] * GRID[1])
    assert got.loc[3, "top_patch_border"] == 1.0


def test_shares_scale_and_sign():
    ring = findings.border_mask(GRID)
    uniform = np.ones((1, *GRID))
    assert findings.positive_share(uniform, ring)[0] == pytest.approx(ring.mean())
    a = np.random.default_rng(1).normal(size=(3, *GRID))
    np.testing.assert_allclose(findings.positive_share(7.5 * a, ring), findings.positive_share(a, ring), rtol=1e-13)
    only_inner = np.where(ring, -3.0, 1.0)[None]  # negative mass on the ring does not count
    assert findings.positive_share(only_inner, ring)[0] == 0.0
    assert np.isnan(findings.positive_share(np.zeros((1, *GRID)), ring)[0])
    ties = np.zeros((1, *GRID))
    ties[0, 1, 1] = ties[0, 0, 0] = 1.0  # first in raster order wins: (0, 0), on the ring
    assert findings.top_patch_in(ties, ring)[0] == 1.0


def test_helpers_and_errors():
    assert findings.border_mask((5, 5), width=2).sum() == 24
    with pytest.raises(ValueError, match="border width"):
        findings.border_mask((3, 3), width=2)
    saturation = np.array([[[0.0, 0.5], [0.5, 0.25]]])
    np.testing.assert_array_equal(findings.bright_patch_mask(saturation, 2), [[[False, True], [True, False]]])
    np.testing.assert_array_equal(findings.bright_patch_mask(saturation, 9), saturation > 0)
    pixels = np.random.default_rng(2).normal(size=(2, 3, 4, 4))
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    expected = np.clip(pixels * np.array(std)[:, None, None] + np.array(mean)[:, None, None], 0, 1).mean(axis=1)
    np.testing.assert_allclose(findings.input_intensity(pixels, mean, std), expected, rtol=1e-14)
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        findings.positive_share(np.ones(GRID), findings.border_mask(GRID))
    with pytest.raises(ValueError, match="finite"):
        findings.location_statistics(np.full((1, *GRID), np.nan), np.zeros((1, 12, 15)))
    with pytest.raises(ValueError, match="multiples of the patch grid"):
        findings.patch_saturation(np.zeros((1, 13, 15)), GRID)
    with pytest.raises(ValueError, match="one image per map"):
        findings.location_statistics(np.ones((2, *GRID)), np.zeros((1, 12, 15)))
    assert doctest.testmod(findings).failed == 0


def comparison_table() -> pd.DataFrame:
    """Two methods on 8 images of 3 patients; image 7 has no near-white patch (NaN)."""
    rng = np.random.default_rng(3)
    rows = []
    for image in range(8):
        for method, shift in (("TransMM", 0.0), ("FGA", 0.1)):
            rows.append(
                {
                    "image_id": f"i{image}",
                    "unit": f"p{image % 3}",
                    "method": method,
                    "border_share": 0.2 + shift * (image + 1) / 8 + rng.normal(0, 0.01),
                    "bright_share": np.nan if image == 7 else rng.uniform(),
                    "top_patch_border": float(rng.uniform() < 0.5),
                }
            )
    return pd.DataFrame(rows)


def test_comparison_is_per_patient_with_holm():
    table = comparison_table()
    got = findings.method_comparison(table, "FGA", "TransMM").set_index("statistic")
    p_values = []
    for statistic in findings.STATISTICS:
        wide = table.pivot(index="image_id", columns="method", values=statistic)
        d = (wide["FGA"] - wide["TransMM"]).dropna()
        patients = {}
        for image, value in d.items():
            patients.setdefault(f"p{int(image[1:]) % 3}", []).append(value)
        means = np.array([np.mean(v) for _, v in sorted(patients.items())])
        row = got.loc[statistic]
        assert row["images"] == len(d) and row["units"] == len(means)
        assert row["median_difference"] == pytest.approx(np.median(d), rel=1e-12)
        assert row["unit_mean_difference"] == pytest.approx(means.mean(), rel=1e-12)
        expected_p = 1.0 if not means.any() else stats.wilcoxon(means).pvalue
        assert row["unit_p"] == pytest.approx(expected_p, rel=1e-12)
        p_values.append(row["unit_p"])
    assert got.loc["top_patch_border", "method_value"] == table[table.method == "FGA"]["top_patch_border"].mean()
    assert got.loc["border_share", "method_value"] == table[table.method == "FGA"]["border_share"].median()
    order = np.argsort(p_values)
    holm = np.maximum.accumulate(np.minimum(1, (3 - np.arange(3)) * np.array(p_values)[order]))
    np.testing.assert_allclose(got["holm_p"].to_numpy()[order], holm, rtol=1e-12)
    groups = findings.group_table(table, {"all": pd.Series(True, index=[f"i{i}" for i in range(8)])})
    fga = groups.set_index("method").loc["FGA"]
    assert fga["images"] == 8 and fga["bright_images"] == 7
    assert fga["border_heavy"] == (table[table.method == "FGA"]["border_share"] >= findings.BORDER_HEAVY).mean()


def test_page_key_findings_and_summary_section(tmp_path):
    table = comparison_table()
    page = findings.FindingsPage(
        title="Domain a",
        header="8 images, 3 patients.",
        unit="patients",
        groups=findings.group_table(table, {"all": pd.Series(True, index=table["image_id"].unique())}),
        comparison=findings.method_comparison(table, "FGA", "TransMM"),
        heavy=pd.DataFrame({"image_id": ["i7"], "FGA": [0.3], "TransMM": [0.2]}),
        figures=[("grid.png", "the grid")],
        border_area=0.7,
        bright_area=0.1,
        observations="Markers in two images.\nMore text.",
    )
    text = page.markdown()
    assert "![the grid](grid.png)" in text and "Markers in two images." in text and "`i7`: FGA 0.300" in text
    lines = page.key_lines()
    assert lines[0] == "8 images, 3 patients." and lines[-1] == "By eye: Markers in two images."
    assert lines[2].startswith("border share: FGA ") and "after Holm" in lines[2]
    folder = tmp_path / "findings" / "a"
    findings.write_key_findings(folder, lines, page.figures)
    Image.new("RGB", (4, 4)).save(folder / "grid.png")
    assert findings.read_key_findings(folder).lines == lines
    assert findings.read_key_findings(tmp_path / "findings" / "b") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / findings.KEY_FINDINGS_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a key-findings file"):
        findings.read_key_findings(tmp_path / "bad")
    names = ("a", "breast_ultrasound", "c")
    domains = [Domain(n, f"Domain {n}", tmp_path / n, tmp_path / "c.txt", "`make`") for n in names]
    section = findings_markdown(domains, tmp_path / "findings", tmp_path)
    assert "### Domain a\n\n- 8 images, 3 patients." in section
    assert "[findings.md](findings/a/findings.md)" in section and "![the grid](findings/a/grid.png)" in section
    command = "`python scripts/attribution_findings.py --domain breast_ultrasound --output"
    assert f"### Domain breast_ultrasound\n\n**not run yet**: {command}" in section
    assert "### Domain c\n\n**not run yet**: the package bundles no model of this domain" in section


def test_figure_helpers(tmp_path):
    images = [Image.new("RGB", (28, 28), (40 * i, 90, 200)) for i in range(3)]
    maps = {m: np.random.default_rng(4).uniform(size=(3, 4, 4)) for m in ("TransMM", "FGA")}
    sheet = findings.overlay_rows(images, maps, ["a", "b", "c"], (4, 4), np.ones((3, 4, 4), bool), side=40)
    assert sheet.width == 2 * 3 * 40 + 10  # two images a row, three tiles each
    path = findings.save_small_png(sheet, tmp_path / "sheet.png", max_bytes=100)  # halves until it is tiny
    assert path.is_file() and Image.open(path).width < sheet.width
    table = comparison_table()
    assert findings.share_histogram(table, "border_share", tmp_path / "h.png", 0.5, "t").stat().st_size > 1000


def test_script_refuses_a_domain_without_its_model(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("attribution_findings", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def missing(name="chest_xray"):
        raise FileNotFoundError(f"The bundled classifier of the {name!r} domain is missing")

    monkeypatch.setattr(module.bundled, "model_dir", missing)
    with pytest.raises(SystemExit, match="need the domain.s bundled model"):
        module.main(["--domain", "breast_ultrasound", "--output", str(tmp_path)])
    with pytest.raises(SystemExit):
        module.parse_args(["--domain", "chest_xray", "--output", str(tmp_path), "--limit", "1"])


def write_dataset(root: Path, count: int, patients: bool = True) -> None:
    """A tiny chest X-ray-like split: noise images with a white square, both classes, two patients (or no ids)."""
    import io

    import datasets

    rng = np.random.default_rng(5)
    images = []
    for _ in range(count):
        pixels = rng.integers(0, 200, size=(48, 48), dtype=np.uint8)
        pixels[:8, :8] = 255  # a near-white corner, as a burned-in marker would be
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=["NORMAL", "PNEUMONIA"]),
            "patient_id": datasets.Value("string"),
            "file_name": datasets.Value("string"),
        }
    )
    table = {
        "image": images,
        "label": [n % 2 for n in range(count)],
        "patient_id": [f"person{n % 2}" for n in range(count)],
        "file_name": [f"person{n % 2}_img{n}.png" for n in range(count)],
    }
    if not patients:
        del table["patient_id"], features["patient_id"]
    folder = root / "chest_xray_pneumonia" / "data"
    folder.mkdir(parents=True)
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(folder / "test-00000-of-00001.parquet"))


def test_script_end_to_end_on_the_bundled_model(tmp_path):
    import datasets
    from transformers import AutoImageProcessor

    from hf_fga import bundled
    from hf_fga.attribution import Attributor
    from hf_fga.introspection import load_vision_model
    from hf_fga.sae import load_saes

    write_dataset(tmp_path / "data", 5)
    spec = importlib.util.spec_from_file_location("attribution_findings", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "out"
    argv = ["--domain", "chest_xray", "--output", str(out), "--data_root", str(tmp_path / "data"), "--limit", "4"]
    argv += ["--batch_size", "3", "--figure_count", "2", "--config", "fga|combined|0,1|0.5|10"]
    assert module.main(argv) == 0
    table = pd.read_csv(out / "per_image.csv")
    assert (
        len(table) == 8 and set(table["method"]) == {"TransMM", "FGA"} and set(table["unit"]) == {"person0", "person1"}
    )
    # the FGA rows are the engine's own map for that configuration, through the module's statistics
    first = table[table["method"] == "FGA"].iloc[0]
    index = int(first["image_id"].split("img")[1].split(".")[0])
    image = datasets.load_dataset(str(tmp_path / "data" / "chest_xray_pneumonia"), split="test")[index]["image"]
    processor = AutoImageProcessor.from_pretrained(bundled.model_dir())
    pixels = processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]
    attr = Attributor(load_vision_model(str(bundled.model_dir())), load_saes(str(bundled.sae_dir())))
    direct = attr.attribute(pixels, method="fga", variant="combined", layers=[0, 1], kappa=0.5, cmax=10.0)
    share = findings.positive_share(direct.attribution.numpy(), findings.border_mask(direct.grid))[0]
    assert first["border_share"] == pytest.approx(share, rel=1e-5)  # the CSV keeps 6 digits
    text = (out / "findings.md").read_text()
    assert "4 test images (a subset drawn with seed 0 from 5), 2 patients" in text and "Not written yet" in text
    assert findings.read_key_findings(out).figures[0][0] == "figure_border_top.png"
    for name in ("figure_border_top.png", "figure_random.png", "border_share_histogram.png"):
        assert 0 < (out / name).stat().st_size < 1_000_000
    # the intervention: the same image with its border ring blanked, classified directly
    ablation = pd.read_csv(out / "border_ablation.csv").set_index("image_id")
    model = load_vision_model(str(bundled.model_dir()))
    blanked = findings.blank_border(pixels.numpy(), direct.grid)
    with torch.no_grad():
        clean_p = torch.softmax(model(pixel_values=pixels).logits, -1)[0].double()
        blanked_p = torch.softmax(model(pixel_values=torch.from_numpy(blanked)).logits, -1)[0].double()
    predicted = int(clean_p.argmax())
    row = ablation.loc[first["image_id"]]
    assert row["drop"] == pytest.approx(float(clean_p[predicted] - blanked_p[predicted]), abs=1e-5)
    assert bool(row["changed"]) == (int(blanked_p.argmax()) != predicted)
    assert row["FGA"] == pytest.approx(first["border_share"], rel=1e-5)
    assert "## Intervention: the border ring blanked" in text and "predictions change" in text
    assert any(line.startswith("Blanking the border ring") for line in findings.read_key_findings(out).lines)


def test_blank_border_and_the_ablation_table_against_direct_computations():
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(2, 3, 8, 12))  # a 4 × 6 grid of 2 × 2 patches
    blanked = findings.blank_border(pixels, (4, 6))
    for b in range(2):
        for c in range(3):
            mean = pixels[b, c].mean()
            for y in range(8):
                for x in range(12):
                    ring = y < 2 or y >= 6 or x < 2 or x >= 10
                    assert blanked[b, c, y, x] == (mean if ring else pixels[b, c, y, x])
    with pytest.raises(ValueError, match="does not split into a 5 × 6 patch grid"):
        findings.blank_border(pixels, (5, 6))
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        findings.blank_border(pixels[0], (4, 6))
    clean = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    after = np.array([[0.3, 0.6, 0.1], [0.1, 0.7, 0.2]])
    table = findings.border_ablation(clean, after)
    assert table["prediction"].tolist() == [0, 1] and table["blanked_prediction"].tolist() == [1, 1]
    assert table["changed"].tolist() == [True, False]
    assert np.allclose(table["drop"], [0.4, -0.1]) and np.allclose(table["blanked_probability"], [0.3, 0.7])
    with pytest.raises(ValueError, match="both be \\(images, classes\\)"):
        findings.border_ablation(clean, after[:1])
    frame = pd.DataFrame(
        {"label": ["a", "b", "b", "a"], "prediction": ["a", "b", "a", "a"], "blanked_prediction": ["b", "b", "a", "a"],
         "changed": [True, False, False, False], "drop": [0.4, 0.0, 0.1, 0.3], "M": [0.9, 0.1, 0.2, 0.8]}
    )  # fmt: skip
    text = findings.ablation_markdown(frame, ["M"])
    assert "**1 of 4 predictions change (25.0 %)**" in text
    assert "| clean | 0.750 | 0.750 |" in text  # recalls a 2/2, b 1/2
    assert "| border blanked | 0.500 | 0.500 |" in text  # a 1/2, b 1/2
    rho = stats.spearmanr(frame["M"], frame["drop"])[0]
    assert f"| M | {rho:+.3f} |" in text


def test_script_without_patient_ids_tests_per_image(tmp_path):
    write_dataset(tmp_path / "data", 3, patients=False)
    spec = importlib.util.spec_from_file_location("attribution_findings", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "out"
    assert module.main(["--domain", "chest_xray", "--output", str(out), "--data_root", str(tmp_path / "data")]) == 0
    table = pd.read_csv(out / "per_image.csv")
    assert (table["unit"] == table["image_id"]).all()
    text = (out / "findings.md").read_text()
    assert "3 test images (the whole test split), no patient ids, so the tests are per image" in text
    assert "images / images" not in text and "| Wilcoxon p (images) | Holm p (images) |" in text


def test_a_split_without_file_names_is_identified_by_row_index(tmp_path):
    """CIFAR-10 has no file_name column: the ids are the rows of the whole split (as the evaluations' ids), also in
    a --limit subset."""
    import argparse

    import datasets

    write_dataset(tmp_path / "data", 6, patients=False)
    folder = tmp_path / "data" / "chest_xray_pneumonia" / "data"
    parquet = folder / "test-00000-of-00001.parquet"
    datasets.Dataset.from_parquet(str(parquet)).remove_columns("file_name").to_parquet(str(parquet))
    spec = importlib.util.spec_from_file_location("attribution_findings", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = argparse.Namespace(domain="chest_xray", data_root=tmp_path / "data", split="test", limit=3, seed=0)
    subset, size = module.load_split(args)
    table, has_patients = module.image_table(subset)
    expected = sorted(np.random.default_rng(0).choice(6, 3, replace=False).tolist())
    assert size == 6 and not has_patients
    assert table["image_id"].tolist() == table["unit"].tolist() == [str(row) for row in expected]
