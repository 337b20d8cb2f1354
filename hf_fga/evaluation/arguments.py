"""The arguments of `scripts/evaluate_faithfulness.py`, as `HfArgumentParser` dataclasses."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field


@dataclass
class DataArguments:
    """Which images are evaluated."""

    dataset: str | None = field(
        default=None, metadata={"help": "A local dataset folder or a Hub id, loaded with datasets.load_dataset."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "The dataset configuration name, if any."})
    split: str = field(default="test", metadata={"help": "The split to evaluate."})
    image_column: str = field(default="image", metadata={"help": "The column holding the images."})
    label_column: str | None = field(
        default="label", metadata={"help": "The column of class indices (for correctness); 'none' for no labels."}
    )
    id_column: str | None = field(
        default=None, metadata={"help": "A column of unique image ids (e.g. file_name); default: the row index."}
    )
    limit: int | None = field(
        default=None,
        metadata={
            "help": "Evaluate a seeded random subset of this many images, in random order (subsets of one seed "
            "are nested; a limit >= the split size shuffles the whole split)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the subset drawn with --limit."})
    include_ids: str | None = field(
        default=None,
        metadata={
            "help": "A JSON file of ids to keep: a list, or an object whose list --ids_key names (e.g. "
            "hf_fga/bundled/splits.json with --ids_key validation_file_names --ids_column file_name)."
        },
    )
    exclude_ids: str | None = field(default=None, metadata={"help": "A JSON file of ids to drop (same format)."})
    ids_key: str | None = field(default=None, metadata={"help": "The key of the id list inside the JSON objects."})
    ids_column: str | None = field(
        default=None, metadata={"help": "The column the JSON ids are matched against (default: --id_column)."}
    )


@dataclass
class ModelArguments:
    """What is explained, and with what."""

    model: str | None = field(
        default=None, metadata={"help": "A model folder or Hub id (ViT-family classifier or CLIPModel)."}
    )
    sae: str | None = field(
        default=None,
        metadata={
            "help": "SAEs as hf_fga.sae.load_saes takes them: a set folder / Hub id, or several separated by "
            "','. Needed by the SAE variants (combined, activation, gradient, shuffled, centered)."
        },
    )
    mean_residuals: str | None = field(
        default=None,
        metadata={
            "help": "A safetensors file of mean residuals μ_ℓ (save_mean_residuals) for "
            "mean-centered; without it μ_ℓ is computed from --mean_residuals_split."
        },
    )
    mean_residuals_split: str | None = field(
        default=None, metadata={"help": "The split of the dataset μ_ℓ is computed on when no file is given."}
    )
    mean_residuals_limit: int = field(default=256, metadata={"help": "Images used to compute μ_ℓ."})
    feature_importance: str | None = field(
        default=None,
        metadata={
            "help": "A safetensors file of feature importances (save_feature_importance, "
            "scripts/compute_feature_importance.py) for the selective variant."
        },
    )
    candidate_labels: str | None = field(
        default=None, metadata={"help": "CLIP: comma-separated labels (default: the label column's class names)."}
    )
    device: str | None = field(default=None, metadata={"help": "Device (default: accelerate's for this process)."})


@dataclass
class EvaluationArguments:
    """The configuration grid, the metrics and where results go."""

    output_dir: str = field(metadata={"help": "Folder for results/*.parquet, report.md, summary.csv, figures/."})
    methods: str = field(
        default="transmm,fga",
        metadata={
            "help": "Comma-separated registered methods (hf_fga.list_methods()): transmm, fga, rollout, "
            "raw-attention, gradient-x-input, integrated-gradients, grad-cam, caap, ..."
        },
    )
    variants: str = field(
        default="combined",
        metadata={
            "help": "FGA variants: combined, activation, gradient, no-sae, shuffled, centered, mean-centered; "
            "controls (method.md §10): error-scaled@λ, error-only, transmm-power@γ, random-gates, "
            "selective@m (with --feature_importance)."
        },
    )
    layer_sets: str | None = field(
        default=None, metadata={"help": "Gated-block sets, e.g. '4;5;6;4,5;4,5,6' (default: every block with an SAE)."}
    )
    kappas: str = field(default="0.5", metadata={"help": "κ values, comma-separated (a grid is a sweep)."})
    cmaxes: str = field(default="10", metadata={"help": "c_max values, comma-separated."})
    presets: str = field(default="papers", metadata={"help": "Metric preset: papers, thesis, or both."})
    metrics: str = field(
        default="saco,faithfulness_correlation,pixel_flipping", metadata={"help": "Comma-separated metrics."}
    )
    fill: str = field(
        default="mean", metadata={"help": "What a perturbed patch is filled with: mean, zero, black, blur, uniform."}
    )
    baseline: str | None = field(default=None, metadata={"help": "Deprecated alias of --fill."})
    preset_overrides: str | None = field(
        default=None,
        metadata={
            "help": "JSON object of FaithfulnessPreset fields applied to every preset, e.g. "
            '\'{"fc_runs": 50, "fc_subset_size": 10}\' (small images need a smaller FC subset).'
        },
    )
    metric_seed: int = field(default=0, metadata={"help": "Seed of the metrics' randomness (per image id)."})
    target: str = field(
        default="predicted", metadata={"help": "The explained class: 'predicted' (argmax) or 'label'."}
    )
    batch_size: int = field(default=8, metadata={"help": "Images per attribution batch (and per written chunk)."})
    perturbation_batch_size: int = field(default=64, metadata={"help": "Perturbed inputs per forward pass."})
    linear_backend: str = field(
        default="auto",
        metadata={
            "help": "How the attribution pass and the perturbation forwards run linear layers (and SAE "
            "encoders): auto (oneDNN on CPU where it agrees with the stock forward; hf_fga.onednn), onednn, or "
            "default (stock)."
        },
    )
    num_threads: int | None = field(
        default=None,
        metadata={
            "help": "torch threads per process (torch.set_num_threads), recorded in run.json and the report. "
            "Results are bitwise identical for any number of processes at the same thread count; the default "
            "keeps the launch's count (accelerate launch gives each of N processes cores / N threads, and "
            "float32 sums then differ in their last bits, ~1e-8 in the scores)."
        },
    )
    precision: str = field(
        default="float32",
        metadata={
            "help": "Precision of the attribution pass, the SAE encoders and the perturbation forwards: float32 "
            "or bfloat16 (torch.autocast; hf_fga.precision). The report says which produced it."
        },
    )
    precision_check: int = field(
        default=0,
        metadata={
            "help": "After the run, score the first N selected images again in the other precision and record "
            "per image and metric |score(bfloat16) - score(float32)| in precision_check.csv and the report."
        },
    )
    shuffle_seed: int = field(default=12345, metadata={"help": "Seed of the shuffled-decoder permutation."})
    skip_reference: bool = field(
        default=False,
        metadata={
            "help": "Do not score TransMM (the reference every grid includes) unless --methods names it: for runs "
            "whose images another run already scored with TransMM (the report then has no % change against it)."
        },
    )
    report_only: bool = field(default=False, metadata={"help": "Only rebuild the report from the parquet files."})
    no_report: bool = field(default=False, metadata={"help": "Do not write the report at the end."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (main process only)."})

    def __post_init__(self) -> None:
        if self.baseline is not None:
            warnings.warn(
                "--baseline is deprecated and will be removed: pass --fill (what a perturbed patch is filled with); "
                "`baseline` names the TransMM map in attribution outputs.",
                FutureWarning,
                stacklevel=2,
            )
            self.fill, self.baseline = self.baseline, None
