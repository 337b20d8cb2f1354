"""The bundled classifier's model card (README.md with YAML metadata), filled in from `hub_cards/classifier_card.md`.

Every number comes from the run's `training_results.json` (written by `scripts/train_classifier.py`) and, once the
SAEs exist, from the SAE set's per-block quality figures; the commands are quoted from
`scripts/build_bundled_assets.sh`. Nothing is hard-coded.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

from hf_fga.sae.training_arguments import SaeTrainingArguments

REPO = Path(__file__).resolve().parents[2]
CARD_TEMPLATE = REPO / "hub_cards" / "classifier_card.md"
BUILD_SCRIPT = REPO / "scripts" / "build_bundled_assets.sh"
# the cards of the other bundled domains: dataset -> (template, build script, bundled folder)
DOMAIN_CARDS = {
    "breast_ultrasound": (
        REPO / "hub_cards" / "breast_ultrasound_card.md",
        REPO / "scripts" / "build_breast_ultrasound_assets.sh",
        "hf_fga/bundled/breast_ultrasound",
    ),
}
CIFAR10_CARD = (REPO / "hub_cards" / "cifar10_card.md", REPO / "scripts" / "build_cifar10_assets.sh")
RESULTS_NAME = "training_results.json"
SAE_QUALITY = (
    ("explained_variance", "explained variance"),
    ("l0", "L0"),
    ("dead_fraction", "dead features"),
    ("cosine_similarity", "cosine(x, x̂)"),
)


def build_commands(script: str | Path = BUILD_SCRIPT, only: str | None = None) -> list[str]:
    """
    The command lines of the build script (comments, `set`, `cd` and `export` lines left out); with `only`, just the
    lines that start with it (e.g. `"$PY scripts/"`, for a script that also parses its arguments).
    """
    skip = ("#", "set ", "cd ", "export ")
    lines = Path(script).read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and not line.lstrip().startswith(skip)]
    return kept if only is None else [line for line in kept if line.startswith(only)]


def sae_rows(sae_dir: str | Path) -> list[dict]:
    """One dict per block of an SAE set: block, architecture, d_sae, k and the held-out quality figures."""
    rows = []
    for config_path in sorted(Path(sae_dir).glob("block_*/config.json"), key=lambda p: int(p.parent.name[6:])):
        config = json.loads(config_path.read_text(encoding="utf-8"))
        info = config.get("training_info") or {}
        rows.append(
            {
                "block": config["hook_layer"],
                "hook_point": config.get("hook_point"),
                "d_in": config["d_in"],
                "d_sae": config["d_sae"],
                "k": config.get("k") if config.get("activation") == "topk" else None,
                "training_tokens": info.get("training_tokens"),
                "eval_tokens": info.get("eval_tokens"),
                "eval_fraction": held_out_fraction(info),
                **{key: (info.get("metrics") or {}).get(key) for key, _ in SAE_QUALITY},
            }
        )
    return rows


def held_out_fraction(info: dict) -> float:
    """The fraction of images an SAE was evaluated on: recorded, else read from its command, else the default."""
    if info.get("eval_fraction") is not None:
        return float(info["eval_fraction"])
    words = str(info.get("command", "")).split()
    for flag in ("--eval_fraction", "--eval-fraction"):
        if flag in words[:-1]:
            return float(words[words.index(flag) + 1])
    return SaeTrainingArguments.eval_fraction


def sae_table(rows: list[dict]) -> str:
    """A markdown table of the SAE set's quality per block (like Table 7.1 of the thesis)."""
    header = "| block | hook point | d_sae | k | training tokens | held-out tokens | "
    lines = [header + " | ".join(label for _, label in SAE_QUALITY) + " |", "|" + " --- |" * (6 + len(SAE_QUALITY))]
    for row in rows:
        figures = ["n/a" if row[key] is None else f"{row[key]:.4f}" for key, _ in SAE_QUALITY]
        tokens = [f"{row[k]:,}" if isinstance(row[k], int) else "n/a" for k in ("training_tokens", "eval_tokens")]
        cells = [str(row["block"]), f"`{row['hook_point']}`", str(row["d_sae"]), str(row["k"]), *tokens, *figures]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sae_section(
    sae_dir: str | Path | None,
    folder: str = "hf_fga/bundled",
    call: str = "bundled.sae_dir()",
    train_images: str = "the train split without the validation patients",
) -> str:
    if sae_dir is None or not Path(sae_dir).is_dir() or not sae_rows(sae_dir):
        return ""
    return (
        f"## Bundled SAEs\n\nTop-K SAEs for every block, shipped in `{folder}/saes/` (read with "
        f"`hf_fga.sae.load_saes({call})`), trained on the patch tokens of {train_images}; quality on the patch "
        f"tokens of held-out images ({100 * sae_rows(sae_dir)[0]['eval_fraction']:g} % of those images, split by "
        "image):\n\n"
        f"{sae_table(sae_rows(sae_dir))}\n"
    )


def render_classifier_card(results: dict, commands: list[str], sae_dir: str | Path | None = None) -> str:
    """
    The README.md of the bundled classifier.

    Args:
        results (`dict`): the content of `training_results.json` (written by `scripts/train_classifier.py`); needs
            `test` (accuracy, balanced_accuracy, recall_per_class, confusion_matrix, num_examples), `args` and the
            run's figures.
        commands (`list[str]`): the commands that produced the assets, quoted verbatim.
        sae_dir (`str` or `Path`, *optional*): the bundled SAE set; its quality table is added when present.
    """
    test = test_figures(results)
    cm = test["confusion_matrix"]
    values = dict(
        test_recall_normal=f"{test['recall_per_class']['NORMAL']:.4f}",
        test_recall_pneumonia=f"{test['recall_per_class']['PNEUMONIA']:.4f}",
        cm00=cm[0][0],
        cm01=cm[0][1],
        cm10=cm[1][0],
        cm11=cm[1][1],
        num_val_patients=results.get("num_validation_patients", "n/a"),
        val_percent=f"{100 * results['args']['val_fraction']:g}",
        sae_section=sae_section(sae_dir),
    )
    return render_card(CARD_TEMPLATE, results, commands, values)


def test_figures(results: dict) -> dict:
    if "test" not in results:
        raise ValueError("results has no 'test' entry: run train_classifier.py with --evaluate_test True first.")
    return results["test"]


def render_card(template: str | Path, results: dict, commands: list[str], extra: dict) -> str:
    """
    Fill a card template with the figures of `results` (see [`render_classifier_card`]) and the `extra` values.

    Placeholders for every domain: the test figures (`$test_accuracy`, `$test_balanced_accuracy`, `$num_test`,
    `$results_table`, `$confusion_table`, `$label_list`), the run's figures and arguments, and `$commands`.
    """
    args, test = results["args"], test_figures(results)
    grid, low_grid = args["image_size"] // args["patch_size"], args["low_res"] // args["patch_size"]
    labels = list(test["recall_per_class"])
    values = dict(
        num_test=test["num_examples"],
        test_accuracy=f"{test['accuracy']:.4f}",
        test_balanced_accuracy=f"{test['balanced_accuracy']:.4f}",
        results_table=results_table(test),
        confusion_table=confusion_table(labels, test["confusion_matrix"]),
        label_list=", ".join(f"{i} `{name}`" for i, name in enumerate(labels)),
        val_balanced_accuracy=f"{results['validation_balanced_accuracy']:.4f}",
        num_val=results["num_validation_images"],
        num_train=results["num_train_images"],
        best_epoch=results["best_epoch"],
        train_seconds=f"{results['train_seconds']:.0f}",
        train_minutes=f"{results['train_seconds'] / 60:.0f}",
        num_threads=results["num_threads"],
        torch_version=results["torch_version"],
        num_parameters=f"{results['num_parameters']:,}",
        gflops=f"{results['forward_gflops']:.3f}",
        pixel_mean=f"{results['pixel_mean']:.4f}",
        pixel_std=f"{results['pixel_std']:.4f}",
        num_layers=args["num_hidden_layers"],
        hidden_size=args["hidden_size"],
        num_heads=args["num_attention_heads"],
        grid=grid,
        low_grid=low_grid,
        first_full_epoch=args["low_res_epochs"] + 1,
        commands="\n".join(commands),
        **{
            key: args[key]
            for key in (
                "intermediate_size",
                "image_size",
                "patch_size",
                "seed",
                "low_res_epochs",
                "low_res",
                "epochs",
                "crop_scale_min",
                "max_rotation_deg",
                "brightness",
                "contrast",
                "label_smoothing",
                "learning_rate",
                "weight_decay",
                "batch_size",
                "warmup_epochs",
                "max_grad_norm",
            )
        },
    )
    values.update(extra)
    return Template(Path(template).read_text(encoding="utf-8")).substitute(values).rstrip() + "\n"


def results_table(test: dict) -> str:
    """Accuracy, balanced accuracy and the recall of every class on the test split, as a markdown table."""
    recalls = test["recall_per_class"]
    header = "| split | accuracy | balanced accuracy | " + " | ".join(f"recall {name}" for name in recalls) + " |"
    cells = [f"{test['accuracy']:.4f}", f"{test['balanced_accuracy']:.4f}", *(f"{r:.4f}" for r in recalls.values())]
    return "\n".join([header, "|" + " --- |" * (1 + len(cells)), "| test | " + " | ".join(cells) + " |"])


def confusion_table(labels: list[str], matrix: list[list[int]]) -> str:
    """A confusion matrix (rows: true label with its count, columns: predicted label) as a markdown table."""
    lines = ["| | " + " | ".join(f"predicted {name}" for name in labels) + " |", "|" + " --- |" * (1 + len(labels))]
    for name, row in zip(labels, matrix, strict=True):
        lines.append(f"| {name} ({sum(row)}) | " + " | ".join(str(n) for n in row) + " |")
    return "\n".join(lines)


def write_domain_card(model_dir: str | Path, dataset: str, sae_dir: str | Path | None = None) -> Path:
    """The card of another bundled domain's classifier (`DOMAIN_CARDS`), written to `<model_dir>/README.md`."""
    if dataset not in DOMAIN_CARDS:
        raise ValueError(f"No card template for the dataset {dataset!r}: templates exist for {sorted(DOMAIN_CARDS)}.")
    template, build_script, folder = DOMAIN_CARDS[dataset]
    model_dir = Path(model_dir)
    results = json.loads((model_dir / RESULTS_NAME).read_text(encoding="utf-8"))
    train_images = f"the {results['num_train_images']} train images"
    sae = sae_section(sae_dir, folder, f'bundled.sae_dir("{dataset}")', train_images)
    commands = build_commands(build_script) if Path(build_script).is_file() else []
    card = render_card(template, results, commands, {"sae_section": sae})
    (model_dir / "README.md").write_text(card, encoding="utf-8")
    return model_dir / "README.md"


def write_classifier_card(model_dir: str | Path, sae_dir: str | Path | None = None) -> Path:
    """Render the card from `<model_dir>/training_results.json` and the build script; write `<model_dir>/README.md`."""
    model_dir = Path(model_dir)
    results_path = model_dir / RESULTS_NAME
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path} is missing: export the model with scripts/train_classifier.py first.")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    card = render_classifier_card(results, build_commands(), sae_dir)
    (model_dir / "README.md").write_text(card, encoding="utf-8")
    return model_dir / "README.md"


def write_cifar10_card(model_dir: str | Path, sae_dir: str | Path | None = None) -> Path:
    """
    The card of the CIFAR-10 ViT (`scripts/train_cifar10.py`), from `<model_dir>/training_results.json`, the SAE set's
    quality table when `sae_dir` holds one, and the `$PY scripts/` commands of `scripts/build_cifar10_assets.sh`;
    written to `<model_dir>/README.md`.
    """
    template, build_script = CIFAR10_CARD
    model_dir = Path(model_dir)
    results_path = model_dir / RESULTS_NAME
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path} is missing: export the model with scripts/train_cifar10.py first.")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    args, test = results["args"], test_figures(results)
    labels = list(test["recall_per_class"])
    grid = 32 // args["patch_size"]
    train_images = f"the {results['num_train_images']} train images (the validation rows left out)"
    values = dict(
        num_test=test["num_examples"],
        test_accuracy=f"{test['accuracy']:.4f}",
        results_table=results_table(test),
        confusion_table=confusion_table(labels, test["confusion_matrix"]),
        label_list=", ".join(f"{i} `{name}`" for i, name in enumerate(labels)),
        num_layers=args["num_hidden_layers"],
        hidden_size=args["hidden_size"],
        num_heads=args["num_attention_heads"],
        grid=grid,
        num_patches=grid * grid,
        num_parameters=f"{results['num_parameters']:,}",
        gflops=f"{results['forward_gflops']:.4f}",
        best_epoch=results["best_epoch"],
        val_accuracy=f"{results['validation_accuracy']:.4f}",
        num_val=results["num_validation_images"],
        num_train=results["num_train_images"],
        train_hours=f"{results['train_seconds'] / 3600:.2f}",
        sae_section=sae_section(sae_dir, "<HF_FGA_CIFAR10_DIR>", 'bundled.sae_dir("cifar10")', train_images),
        commands="\n".join(build_commands(build_script, only="$PY scripts/")),
        **{
            key: results[key] if key in results else args[key]
            for key in ("epochs", "global_steps", "device", "torch_version")
        },
        **{
            key: args[key]
            for key in (
                "intermediate_size",
                "patch_size",
                "pad",
                "mix_prob",
                "mixup_alpha",
                "cutmix_alpha",
                "label_smoothing",
                "learning_rate",
                "weight_decay",
                "batch_size",
                "warmup_epochs",
                "seed",
            )
        },
    )
    card = Template(Path(template).read_text(encoding="utf-8")).substitute(values).rstrip() + "\n"
    (model_dir / "README.md").write_text(card, encoding="utf-8")
    return model_dir / "README.md"
