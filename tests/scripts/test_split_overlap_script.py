"""
scripts/split_overlap.py on a tiny synthetic breast ultrasound folder and test run with known answers: which test
images repeat a train or validation image, the label conflict, the model's scores split by overlap, and the paired
comparison restricted to the images without a near-duplicate.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import split_overlap  # noqa: E402

CONFIG = "fga|combined|0,1,2|0.5|10"


def png(seed: int) -> bytes:
    base = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.kron(base, np.ones((8, 8), dtype=np.uint8))).save(buffer, format="PNG")
    return buffer.getvalue()


def write_split(folder: Path, split: str, rows: list[tuple[str, int, int]]) -> None:
    """rows: (file name, label, image seed)."""
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["benign", "malignant", "normal"]),
         "file_name": datasets.Value("string")}
    )  # fmt: skip
    data = {
        "image": [{"bytes": png(seed), "path": None} for _, _, seed in rows],
        "label": [label for _, label, _ in rows],
        "file_name": [name for name, _, _ in rows],
    }
    datasets.Dataset.from_dict(data, features=features).to_parquet(
        str(folder / "data" / f"{split}-00000-of-00001.parquet")
    )


@pytest.fixture()
def layout(tmp_path):
    data = tmp_path / "data" / "breast_ultrasound"
    (data / "data").mkdir(parents=True)
    write_split(data, "train", [("tr0", 0, 10), ("tr1", 1, 11), ("tr2", 2, 12), ("tr3", 0, 13)])
    write_split(data, "validation", [("va0", 0, 20), ("va1", 2, 21)])
    # te_dup repeats tr1 (same label); te_conflict repeats va0 (benign) but is labelled malignant; two are new
    write_split(data, "test", [("te_dup", 1, 11), ("te_conflict", 1, 20), ("te_new0", 0, 30), ("te_new1", 2, 31)])
    run = tmp_path / "results" / "breast_ultrasound" / "test"
    (run / "results").mkdir(parents=True)
    (run.parent / "chosen_configuration.txt").write_text(f"chosen configuration: {CONFIG}\n")
    ids = ["te_dup", "te_conflict", "te_new0", "te_new1"]
    predictions = [1, 0, 0, 0]  # right, wrong, right, wrong
    rows = []
    for preset in ("papers", "thesis"):
        for config, shift in (("transmm||||", 0.0), (CONFIG, 0.1), (CONFIG.replace("combined", "centered"), 0.05)):
            for i, (image, prediction) in enumerate(zip(ids, predictions, strict=True)):
                rows.append(
                    {
                        "image_id": image, "config": config, "preset": preset, "fill": "mean",
                        "prediction": prediction, "saco": 0.5 + shift * (i + 1),
                        "faithfulness_correlation": 0.3 + shift, "pixel_flipping": 0.4 - shift * (i + 1),
                    }
                )  # fmt: skip
    pd.DataFrame(rows).to_parquet(run / "results" / "part-000-000000-test.parquet")
    return tmp_path, run


def test_script_finds_the_repeats_and_splits_the_scores(layout):
    root, run = layout
    output = root / "out"
    assert split_overlap.main(
        ["--domain", "breast_ultrasound", "--data_root", str(root / "data"), "--run", str(run),
         "--output", str(output), "--figure_count", "4"]
    ) == 0  # fmt: skip
    overlap = pd.read_csv(output / "overlap.csv").set_index("image_id")
    assert bool(overlap.loc["te_dup", "near_duplicate"]) and overlap.loc["te_dup", "match"] == "tr1"
    assert overlap.loc["te_conflict", "match_split"] == "validation" and overlap.loc["te_conflict", "match"] == "va0"
    assert bool(overlap.loc["te_conflict", "identical"]) and overlap.loc["te_conflict", "match_label"] == "benign"
    assert not overlap.loc[["te_new0", "te_new1"], "near_duplicate"].any()
    text = (output / "overlap.md").read_text()
    assert "**2 of 4 test images (50%) have a near-duplicate** among them (2 byte-identical)" in text
    assert "1 near-duplicate pair(s) carry different labels: test `te_conflict` (malignant) = validation `va0`" in text
    # duplicated: te_dup right (malignant), te_conflict wrong (malignant) → accuracy 0.5, one class, recall 0.5
    assert "| with a near-duplicate | 2 | 0.500 | 0.500 | 1 |" in text
    # without: te_new0 benign right, te_new1 normal wrong → accuracy 0.5, balanced (1 + 0) / 2
    assert "| without | 2 | 0.500 | 0.500 | 2 |" in text
    assert "| all | 4 | 0.500 | 0.500 | 3 |" in text  # benign 1/1, malignant 1/2, normal 0/1 → 0.5
    # 0.1 × (3 + 4) / 2, and its bootstrap CI over the two images (no patient ids: each image its own unit)
    assert "| papers | FGA combined | SaCo | without a near-duplicate | 2 | +0.35 | +0.3 | +0.4 |" in text
    assert "per image (no patient ids)" in text
    rows = [line for line in text.splitlines() if line.startswith("| papers |")]
    assert [line.split(" | ")[1:4] for line in rows[:3]] == [
        ["FGA combined", "SaCo", "all"], ["FGA combined", "SaCo", "without a near-duplicate"],
        ["FGA combined", "Faithfulness Correlation", "all"],
    ]  # fmt: skip
    assert (output / "pairs.png").stat().st_size > 5_000
    assert json.loads((output / "run.json").read_text())["threshold"] == 0.99


def test_script_errors_say_what_to_do(layout, tmp_path):
    root, run = layout
    with pytest.raises(SystemExit, match="holds no results/"):
        split_overlap.main(
            ["--domain", "breast_ultrasound", "--data_root", str(root / "data"), "--run", str(tmp_path / "empty")]
        )
    with pytest.raises(SystemExit, match="does not exist: pass --data_root"):
        split_overlap.main(
            ["--domain", "breast_ultrasound", "--data_root", str(tmp_path / "nowhere"), "--run", str(run)]
        )
