"""Model cards (README.md with YAML metadata) for SAEs, filled in from `hub_cards/sae_card.md`."""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

from .configuration_sae import SparseAutoencoderConfig

# hf_fga/templates links to the repository's hub_cards/, so the templates also ship inside a built wheel.
HUB_CARDS = Path(__file__).resolve().parents[1] / "templates"
CARD_TEMPLATE = HUB_CARDS / "sae_card.md"
TOKEN_PHRASES = {"patches": "patch tokens (not CLS)", "cls": "the CLS token", "all": "all tokens (CLS and patches)"}
SET_CARD_TEMPLATE = HUB_CARDS / "sae_set_card.md"
QUALITY_FIELDS = (
    ("explained_variance", "explained variance"),
    ("l0", "L0"),
    ("dead_fraction", "dead features"),
    ("cosine_similarity", "cosine(x, x̂)"),
)


def _yaml_list(key: str, values: list[str]) -> str:
    if not values:
        return ""
    return f"{key}:\n" + "".join(f"- {json.dumps(v)}\n" for v in values)


def quality_table(metrics: dict[str, float]) -> str:
    """A one-row markdown table of the held-out quality figures (method.md §4); empty figures are said so."""
    if not metrics:
        return "Not recorded: this SAE was saved without held-out quality figures."
    header = "| " + " | ".join(label for _, label in QUALITY_FIELDS) + " |"
    rule = "|" + " --- |" * len(QUALITY_FIELDS)
    cells = []
    for key, _ in QUALITY_FIELDS:
        value = metrics.get(key)
        cells.append("n/a" if value is None else f"{value:.4f}")
    return "\n".join([header, rule, "| " + " | ".join(cells) + " |"])


def _read_template(path: Path) -> Template:
    if not path.is_file():
        raise FileNotFoundError(
            f"SAE card template not found at {path}: it ships in the repository's hub_cards/ folder; pass "
            "template=... to use another one."
        )
    return Template(path.read_text(encoding="utf-8"))


def _metrics_row(label: str, metrics: dict) -> str:
    cells = ["n/a" if metrics.get(key) is None else f"{metrics[key]:.4f}" for key, _ in QUALITY_FIELDS]
    return f"| {label} | " + " | ".join(cells) + " |"


def render_sae_set_card(configs: dict[int, SparseAutoencoderConfig], template: str | Path | None = None) -> str:
    """The README.md at the root of an SAE set: metadata, one quality row per block, the training command."""
    blocks = sorted(configs)
    infos = {b: dict(configs[b].training_info or {}) for b in blocks}
    bases = sorted({c.base_model_name_or_path for c in configs.values() if c.base_model_name_or_path})
    datasets = sorted({i["dataset"] for i in infos.values() if i.get("dataset")})
    hook_points = sorted({c.hook_point for c in configs.values()})
    commands = sorted({i["command"] for i in infos.values() if i.get("command")})
    header = "| block | " + " | ".join(label for _, label in QUALITY_FIELDS) + " |"
    rows = [header, "|---|" + "---|" * len(QUALITY_FIELDS)]
    rows += [_metrics_row(str(b), infos[b].get("metrics", {})) for b in blocks]
    values = dict(
        license=json.dumps(infos[blocks[0]].get("license", "apache-2.0")),
        base_model_yaml=_yaml_list("base_model", bases),
        datasets_yaml=_yaml_list("datasets", datasets),
        base_model_display=", ".join(bases) or "an unrecorded base model",
        blocks=", ".join(map(str, blocks)),
        first_block=blocks[0],
        hook_point=" / ".join(hook_points),
        quality="\n".join(rows) if any(i.get("metrics") for i in infos.values()) else quality_table({}),
        command_block="\n\n".join(f"```bash\n{c}\n```" for c in commands) or "The training command was not recorded.",
    )
    path = Path(template) if template is not None else SET_CARD_TEMPLATE
    return _read_template(path).substitute(values).rstrip() + "\n"


def render_sae_card(config: SparseAutoencoderConfig, template: str | Path | None = None) -> str:
    """
    The README.md of one SAE: YAML metadata (library_name, license, tags, base_model, datasets) and a body with the
    base model, block, hook point, architecture, k or λ, training tokens, the held-out quality figures, the exact
    training command and seed, all read from `config` and its `training_info` (written by the harness or importer).
    """
    path = Path(template) if template is not None else CARD_TEMPLATE
    info = dict(config.training_info or {})
    base = config.base_model_name_or_path
    datasets = [info["dataset"]] if info.get("dataset") else []
    if config.activation == "topk":
        architecture, sparsity = "Top-K", f"k = {config.k}"
    else:
        architecture, sparsity = "ReLU (L1)", f"λ = {config.l1_coefficient:g}"
    normalization = config.normalize_activations
    if normalization == "constant_scale":
        normalization = f"constant scale × {config.norm_scaling_factor:.6g}"
    command = info.get("command")
    command_block = f"```bash\n{command}\n```" if command else "The training command was not recorded."
    provenance = f"Imported from the {info['source_format']} format." if info.get("source_format") else ""
    tokens = info.get("training_tokens")
    values = dict(
        license=json.dumps(info.get("license", "apache-2.0")),
        base_model_yaml=_yaml_list("base_model", [base] if base else []),
        datasets_yaml=_yaml_list("datasets", datasets),
        base_model_display=base or "an unrecorded base model",
        hook_layer=config.hook_layer,
        hook_point=config.hook_point,
        token_scope=config.token_scope,
        token_phrase=TOKEN_PHRASES.get(config.token_scope, f"{config.token_scope} tokens"),
        architecture=architecture,
        sparsity=sparsity,
        d_in=config.d_in,
        d_sae=config.d_sae,
        expansion=f"{config.expansion_factor:g}",
        normalization=normalization,
        dataset=info.get("dataset", "not recorded"),
        training_tokens=f"{tokens:,}" if isinstance(tokens, int) else "not recorded",
        seed=info.get("seed", "not recorded"),
        quality=quality_table(info.get("metrics", {})),
        command_block=command_block,
        provenance=provenance,
    )
    return _read_template(path).substitute(values).rstrip() + "\n"
