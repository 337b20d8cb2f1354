"""
The SAEs and dictionaries of the controls of method.md §10 on a bundled ViT (`--domain`, default `chest_xray`), as
fixed in `docs/results/<domain>_controls/plan.md` §5. Resumable: every finished part is skipped on a rerun.

1. Lower-fidelity SAEs: the gated blocks (`--blocks`) trained with the project's trainer and the domain's bundled
   SAEs' settings (`SAE_SETTINGS`, as in the domain's build script) except k, for k in `--ks`; per block and target
   explained variance (0.90, 0.75) the k whose held-out explained variance is closest, assembled into the sets
   `ev0.90/` and `ev0.75/`.
2. Matched dictionaries: PCA and random orthonormal (seed 0) dictionaries of each block's `resid_post` patch
   residuals (`hf_fga.sae.dictionaries`, as `pca_dictionary` / `random_dictionary`, directions computed once), fitted
   on `--fit_images` images (seed 0) of the SAEs' training images (chest X-ray: the train split without the
   validation patients; breast ultrasound: the train split), with k matched to the bundled SAE's explained variance
   on the validation sample's patch tokens (±0.005), as the sets `pca/`, `random/`. The validation sample is the
   evaluation tool's: the domain's validation images (`splits.json`), seeded permutation, first
   `--validation_images`.

Weights go to `--output_dir` (default `runs/controls_saes` for chest X-ray, `runs/<domain>_controls_saes` otherwise);
the cards and quality tables to `--report_dir` (default `docs/results/<domain>_controls/saes`), and a copy of every
built set to `<report_dir>/weights/<set>/` (a few MB; committed). SAE training is not bit-reproducible across machines
(a fresh checkout may run on another CPU), so a set that a test stage has scored must not be rebuilt: when every set of
a stage has a copy under `weights/`, the stage restores the copies into `--output_dir` instead of building, and the
fingerprints in `weights_sha256.json` are checked either way.

    nice -n 10 python scripts/build_controls_saes.py                 # one thread, everything (chest X-ray)
    python scripts/build_controls_saes.py --stages dictionaries      # only the dictionaries
    python scripts/build_controls_saes.py --domain breast_ultrasound --blocks 0,1,2 --validation_images 117
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from hf_fga import bundled
from hf_fga.introspection import load_vision_model
from hf_fga.sae import SparseAutoencoder, load_saes, save_sae_set
from hf_fga.sae.activations import residual_activations
from hf_fga.sae.dictionaries import (
    dictionary_sae,
    match_explained_variance,
    principal_directions,
    random_orthonormal_directions,
)
from hf_fga.sae.model_card import QUALITY_FIELDS
from hf_fga.sae.quality import sae_quality
from hf_fga.sae.training import SaeTrainingArguments, train_saes

TARGETS = (0.90, 0.75)
_COMMON_SETTINGS = dict(batch_size=2048, lr=1e-3, warmup_steps=30, dead_tokens=50_000, aux_coefficient=0.0625, seed=0)
# per domain, the bundled SAEs' training settings (the domain's build script), all but k; and the data licence
SAE_SETTINGS = {
    "chest_xray": dict(expansion_factor=4, epochs=1.0, **_COMMON_SETTINGS),  # scripts/build_bundled_assets.sh
    "breast_ultrasound": dict(  # scripts/build_breast_ultrasound_assets.sh
        expansion_factor=2, epochs=8.0, eval_fraction=0.1, **_COMMON_SETTINGS
    ),
    "cifar10": dict(  # scripts/build_cifar10_assets.sh (its own batch and warm-up)
        expansion_factor=8,
        epochs=2.0,
        batch_size=4096,
        lr=1e-3,
        warmup_steps=50,
        dead_tokens=50_000,
        aux_coefficient=0.0625,
        eval_fraction=0.05,
        seed=0,
    ),
}
LICENSES = {"chest_xray": "cc-by-4.0", "breast_ultrasound": "cc0-1.0", "cifar10": "unknown"}


class Assets:
    """The bundled files of a domain as relative paths (as the cards record them) and its validation split."""

    def __init__(self, domain: str):
        if domain not in SAE_SETTINGS:
            raise SystemExit(f"no control settings for the domain {domain!r}: known are {sorted(SAE_SETTINGS)}.")
        self.domain, self.info = domain, bundled.domain(domain)
        # a shipped domain by its path in the repository (as the cards record it); an external one (CIFAR-10) where
        # its build script put it (hf_fga.bundled.domain_root, which names the script while it is not built)
        external = self.info.root_variable is not None
        root = bundled.domain_root(domain) if external else Path("hf_fga/bundled", self.info.subfolder)
        if external and not (root / "splits.json").is_file():
            raise SystemExit(f"{root} holds no built {domain} domain: run {self.info.build_script} first.")
        self.model, self.saes, self.splits = str(root / "model"), str(root / "saes"), root / "splits.json"
        record = json.loads(self.splits.read_text())
        # the validation images: by file name, or by row index where the dataset has no file names (CIFAR-10)
        self.ids_key = "validation_file_names" if "validation_file_names" in record else "validation_rows"
        # the split they come from (chest X-ray, CIFAR-10: carved out of train; else the dataset's own)
        self.validation_split = record.get("split_of", "train" if self.ids_key == "validation_rows" else "validation")
        self.flag = "" if domain == bundled.DEFAULT_DOMAIN else f" --domain {domain}"  # in the recorded commands


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_train(data: str, assets: Assets):
    """
    (the SAEs' training images, the dataset of the validation split, the rows of its validation images), as
    `datasets`: chest X-ray's validation images are carved out of its train split, so they leave the training images.
    """
    import datasets

    held_out = set(json.loads(assets.splits.read_text())[assets.ids_key])
    split = assets.validation_split
    train = datasets.load_dataset(data, split="train")
    validation = train if split == "train" else datasets.load_dataset(data, split=split)
    if assets.ids_key == "validation_rows":  # row indices as strings, the evaluation tool's default ids
        is_val = np.array([str(i) in held_out for i in range(len(validation))])
    else:
        is_val = np.array([name in held_out for name in validation["file_name"]])
    if not is_val.any():
        raise SystemExit(f"no validation image of {assets.splits} is in the {split} split of {data}.")
    if split == "train":
        train = train.select(np.flatnonzero(~is_val))
    return train, validation, np.flatnonzero(is_val)


def lower_fidelity(args, assets: Assets, fit_set, blocks: list[int]) -> dict[int, dict[int, dict]]:
    """Train one SAE set per k (skipping finished ones); returns {k: {block: held-out metrics}}."""
    expansion = SAE_SETTINGS[assets.domain]["expansion_factor"]
    for block in blocks:  # e.g. chest X-ray's block 5 SAE was trained with settings of its own
        config = json.loads((Path(assets.saes) / f"block_{block}" / "config.json").read_text())
        if config["d_sae"] != expansion * config["d_in"]:
            raise SystemExit(
                f"the bundled SAE of block {block} ({assets.saes}) has {config['d_sae']} features, not "
                f"{expansion} × {config['d_in']}: it was trained with other settings than "
                f"SAE_SETTINGS[{assets.domain!r}], so lower-fidelity SAEs would not differ from it in k alone. Add "
                "its settings before using it."
            )
    metrics = {}
    for k in args.ks:
        out = Path(args.output_dir) / f"topk_k{k}"
        if not (out / "metrics.json").is_file():
            log(f"training k={k} on blocks {blocks} -> {out}")
            training = SaeTrainingArguments(
                model_name_or_path=assets.model,
                output_dir=str(out),
                dataset_label=assets.info.dataset,
                license=LICENSES[assets.domain],
                blocks=blocks,
                k=k,
                cache_dir=str(Path(args.output_dir) / "activations"),
                torch_threads=args.threads,
                command=f"python scripts/build_controls_saes.py{assets.flag} --ks {k}",
                **SAE_SETTINGS[assets.domain],
            )
            train_saes(training, dataset=fit_set)
        metrics[k] = {int(b): m for b, m in json.loads((out / "metrics.json").read_text()).items()}
    return metrics


def assemble_lower_fidelity(args, metrics: dict[int, dict[int, dict]], blocks: list[int]) -> list[str]:
    lines = [
        "| target EV | block | chosen k | held-out EV | L0 | dead features | within ±0.03 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for target in TARGETS:
        chosen = {
            b: min(metrics, key=lambda k, b=b: abs(metrics[k][b]["explained_variance"] - target)) for b in blocks
        }
        saes = {b: load_saes(Path(args.output_dir) / f"topk_k{k}")[b] for b, k in chosen.items()}
        save_sae_set(saes, Path(args.output_dir) / f"ev{target:.2f}")
        for b, k in chosen.items():
            m = metrics[k][b]
            within = "yes" if abs(m["explained_variance"] - target) <= 0.03 else "no"
            lines.append(
                f"| {target:.2f} | {b} | {k} | {m['explained_variance']:.4f} | {m['l0']:.1f} | "
                f"{m['dead_fraction']:.3f} | {within} |"
            )
    ladder = ["| k | " + " | ".join(f"block {b} EV" for b in blocks) + " |", "| --- |" + " --- |" * len(blocks)]
    ladder += [
        f"| {k} | " + " | ".join(f"{metrics[k][b]['explained_variance']:.4f}" for b in blocks) + " |"
        for k in sorted(metrics, reverse=True)
    ]
    return ["### Lower-fidelity SAEs (held-out tokens of the trainer)", "", *ladder, "", *lines]


@torch.no_grad()
def patch_residuals(model, processor, dataset, rows, blocks: list[int], batch: int = 32) -> dict[int, torch.Tensor]:
    """`resid_post` patch residuals `(images·N, d)` of each block for dataset `rows`, float32."""
    parts: dict[int, list[torch.Tensor]] = {b: [] for b in blocks}
    for start in range(0, len(rows), batch):
        images = [image.convert("RGB") for image in dataset.select(rows[start : start + batch])["image"]]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        for block, tokens in residual_activations(model, pixels, blocks, "resid_post", "patches").items():
            parts[block].append(tokens.reshape(-1, tokens.shape[-1]).float())
    return {b: torch.cat(p) for b, p in parts.items()}


def quality_row(name: str, block: int, sae: SparseAutoencoder, quality: dict, target: float | None = None) -> str:
    cells = " | ".join(f"{quality[key]:.4f}" for key, _ in QUALITY_FIELDS)
    gap = "" if target is None else f"{quality['explained_variance'] - target:+.4f}"
    return f"| {name} | {block} | {sae.config.k} | {sae.config.d_sae} | {cells} | {quality['eval_tokens']} | {gap} |"


def dictionaries(args, assets: Assets, fit_set, validation, val_rows, blocks: list[int]) -> list[str]:
    from transformers import AutoImageProcessor

    out = Path(args.output_dir)
    model = load_vision_model(assets.model).eval()
    processor = AutoImageProcessor.from_pretrained(assets.model)
    fit_rows = np.random.default_rng(0).permutation(len(fit_set))[: args.fit_images]
    sample = np.random.default_rng(args.seed).permutation(val_rows)[: args.validation_images]
    log(f"residuals of {len(fit_rows)} fit images and {len(sample)} validation images")
    fit = patch_residuals(model, processor, fit_set, fit_rows, blocks)
    held_out = patch_residuals(model, processor, validation, sample, blocks)
    trained = load_saes(assets.saes)
    header = [
        "| dictionary | block | k | d_sae | "
        + " | ".join(label for _, label in QUALITY_FIELDS)
        + " | tokens | EV − trained SAE's |",
        "| --- " * (len(QUALITY_FIELDS) + 6) + "|",
    ]
    lines = [f"### Matched dictionaries (the {len(sample)} validation images' patch tokens)", "", *header]
    for block in blocks:
        reference = trained[block].float().eval()
        quality = sae_quality(reference, held_out[block].split(8192))
        target = quality["explained_variance"]
        lines.append(quality_row("trained SAE (bundled)", block, reference, quality))
        info = dict(
            dataset=assets.info.dataset,
            dataset_split="train without the validation patients" if assets.validation_split == "train" else "train",
            seed=0,
            license=LICENSES[assets.domain],
            training_tokens=int(fit[block].shape[0]),
            command=f"python scripts/build_controls_saes.py{assets.flag} --stages dictionaries",
        )
        tokens = fit[block]
        mean, principal, _ = principal_directions(tokens)  # once per block: each k reuses the same directions
        bases = {"pca": principal, "random": random_orthonormal_directions(tokens.shape[1], seed=0)}
        for kind, directions in bases.items():
            kwargs = dict(hook_layer=block, hook_point="resid_post", base_model_name_or_path=assets.model)
            try:
                sae, _ = match_explained_variance(
                    lambda k, u=directions, mu=mean, kwargs=kwargs: dictionary_sae(u, mu, k, **kwargs),
                    held_out[block],
                    target,
                    k_max=directions.shape[1],
                )
            except ValueError as error:  # plan.md §5: an unmatched dictionary is reported and its tests dropped
                lines.append(f"| {kind} | {block} | unmatched: {error} |")
                continue
            matched = sae_quality(sae, held_out[block].split(8192))
            sae.config.training_info = {
                **info,
                "dictionary": kind,
                "matched_to": assets.saes,
                "metrics": {key: matched[key] for key, _ in QUALITY_FIELDS},
            }
            save_sae_set({block: sae}, out / kind / f"part_{block}")
            lines.append(quality_row(kind, block, sae, matched, target))
    for kind in ("pca", "random"):
        parts = {b: load_saes(out / kind / f"part_{b}")[b] for b in blocks if (out / kind / f"part_{b}").is_dir()}
        if parts:
            save_sae_set(parts, out / kind)
            for b in blocks:
                shutil.rmtree(out / kind / f"part_{b}", ignore_errors=True)
    return lines


SETS = ("pca", "random", "ev0.90", "ev0.75")  # the SAE sets the controls' test stages score
STAGE_SETS = {"lower_fidelity": ("ev0.90", "ev0.75"), "dictionaries": ("pca", "random")}


def restore_committed(stage: str, output_dir: Path, weights_dir: Path) -> bool:
    """Copy the committed sets of `stage` into `output_dir` when all of them are committed; True when it did."""
    kinds = STAGE_SETS[stage]
    if not all((weights_dir / kind / "sae_set.json").is_file() for kind in kinds):
        return False
    for kind in kinds:
        shutil.copytree(weights_dir / kind, output_dir / kind, dirs_exist_ok=True)
    log(f"{stage}: restored the committed sets {list(kinds)} from {weights_dir} (not rebuilt)")
    return True


def keep_copies(output_dir: Path, weights_dir: Path) -> None:
    """Copy every built set (weights, configs, cards) to `weights_dir`, the folder that is committed."""
    for kind in SETS:
        if (output_dir / kind / "sae_set.json").is_file():
            shutil.copytree(output_dir / kind, weights_dir / kind, dirs_exist_ok=True)


def weight_fingerprints(output_dir: Path) -> dict[str, str]:
    """SHA-256 of each built set's weights (its blocks' `model.safetensors`, in block order), by set name."""
    fingerprints = {}
    for kind in SETS:
        files = sorted((output_dir / kind).glob("block_*/model.safetensors"))
        if files:
            digest = hashlib.sha256()
            for path in files:
                digest.update(path.read_bytes())
            fingerprints[kind] = digest.hexdigest()
    return fingerprints


def check_fingerprints(output_dir: Path, record: Path) -> None:
    """
    Compare the built sets with the fingerprints in `record` (written by the first build whose sets were scored):
    a rebuilt set that differs would mix two SAEs in one test run, so that stops the build; sets not yet recorded
    are added.
    """
    built = weight_fingerprints(output_dir)
    known = json.loads(record.read_text()) if record.is_file() else {}
    changed = sorted(kind for kind in built if kind in known and known[kind] != built[kind])
    if changed:
        raise SystemExit(
            f"the rebuilt SAE set(s) {changed} in {output_dir} differ from the ones recorded in {record}, whose test "
            "scores are committed: scoring on with them would mix two SAEs in one run. Rebuild on the machine "
            "settings of the first build (one thread), or move the affected test_* results aside and score them "
            "again from the start (and delete their lines in the record)."
        )
    record.write_text(json.dumps({**known, **built}, indent=1, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default=bundled.DEFAULT_DOMAIN, choices=sorted(SAE_SETTINGS))
    parser.add_argument("--data", default=None, help="the dataset folder (default /work/shared/data/<its name>)")
    parser.add_argument("--output_dir", default=None, help="default runs/controls_saes, runs/<domain>_controls_saes")
    parser.add_argument("--report_dir", default=None, help="default docs/results/<domain>_controls/saes")
    parser.add_argument("--stages", default="lower_fidelity,dictionaries")
    parser.add_argument("--blocks", default="0,1,2")
    parser.add_argument("--ks", type=lambda s: [int(k) for k in s.split(",")], default=[8, 4, 2, 1])
    parser.add_argument("--fit_images", type=int, default=1000)
    parser.add_argument("--validation_images", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation sample (plan.md §6)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    assets = Assets(args.domain)
    args.data = args.data or f"/work/shared/data/{assets.info.dataset}"
    first = args.domain == bundled.DEFAULT_DOMAIN  # chest X-ray's folder keeps its first name
    args.output_dir = args.output_dir or ("runs/controls_saes" if first else f"runs/{args.domain}_controls_saes")
    args.report_dir = args.report_dir or f"docs/results/{args.domain}_controls/saes"
    torch.set_num_threads(args.threads)
    blocks = [int(b) for b in args.blocks.split(",")]
    stages = set(args.stages.split(","))
    unknown = stages - {"lower_fidelity", "dictionaries"}
    if unknown:
        parser.error(f"unknown stage(s) {sorted(unknown)}: use lower_fidelity, dictionaries.")
    fit_set, validation, val_rows = load_train(args.data, assets)
    report = Path(args.report_dir)
    report.mkdir(parents=True, exist_ok=True)
    weights = report / "weights"
    output = Path(args.output_dir)
    if "lower_fidelity" in stages and not restore_committed("lower_fidelity", output, weights):
        lines = assemble_lower_fidelity(args, lower_fidelity(args, assets, fit_set, blocks), blocks)
        (report / "lower_fidelity.md").write_text("\n".join(lines) + "\n")
        for target in TARGETS:
            shutil.copy(output / f"ev{target:.2f}" / "README.md", report / f"ev{target:.2f}_card.md")
        log("lower-fidelity SAEs done")
    if "dictionaries" in stages and not restore_committed("dictionaries", output, weights):
        done = all((output / kind / "sae_set.json").is_file() for kind in ("pca", "random"))
        if not done or not (report / "dictionaries.md").is_file():
            lines = dictionaries(args, assets, fit_set, validation, val_rows, blocks)
            (report / "dictionaries.md").write_text("\n".join(lines) + "\n")
        for kind in ("pca", "random"):
            if (output / kind / "README.md").is_file():
                shutil.copy(output / kind / "README.md", report / f"{kind}_card.md")
        log("dictionaries done")
    check_fingerprints(output, report / "weights_sha256.json")
    keep_copies(output, weights)


if __name__ == "__main__":
    main()
