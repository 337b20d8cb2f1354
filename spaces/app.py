"""
The Feature-Gradient Attribution Space: FGA against TransMM on a bundled ViT (offline; a picker chooses among the
bundled domains whose assets are complete: chest X-ray, breast ultrasound...), the gates of each gated block, this
image's faithfulness scores, and the SAE features that changed the map, with their prototypes.

Run it with `python spaces/app.py`; tests build it with `build_demo(explainer)` and never launch it at import.
"""

# ruff: noqa: E402  (analytics must be switched off, and the import paths set, before gradio and hf_fga load)
from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no analytics, ever

import functools
import logging
import re
import sys
import textwrap
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the Space's own helpers (fga_space/)
if (HERE.parent / "hf_fga" / "__init__.py").is_file():  # running from a checkout of the repository: use its hf_fga
    sys.path.insert(1, str(HERE.parent))

import gradio as gr
import torch
from fga_space import QUICK_SETTINGS, quick_faithfulness
from PIL import Image
from transformers import pipeline

import hf_fga  # registers the feature-gradient-attribution task
from hf_fga import bundled
from hf_fga.attribution import VARIANTS, load_mean_residuals
from hf_fga.cafe import verdict
from hf_fga.evaluation.configuration import METHOD_LABELS
from hf_fga.feature_drivers import AMPLIFIER
from hf_fga.images import MIN_SIDE, load_image
from hf_fga.pipelines import TASK, FeatureGradientAttributionPipeline
from hf_fga.pipelines.feature_gradient_attribution import FEATURE_VARIANTS
from hf_fga.prototypes import PrototypeIndex
from hf_fga.viz import (
    cafe_panels,
    captioned_stack,
    draw_patch_boxes,
    feature_card,
    fit_within,
    gate_image,
    overlay,
    side_by_side,
)

ASSETS = HERE / "assets"  # the default domain's precomputed prototypes; another domain's in its bundled subfolder
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 25_000_000
DISPLAY_SIDE = 448  # images are shown (and overlaid) at most this many pixels on their long side
MAX_FEATURE_CARDS = 6  # features shown: the drivers of the most changed patches (method.md §7)
TORCH_THREADS_ENV = "FGA_SPACE_TORCH_THREADS"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
AMPLIFIER_COLOUR, SUPPRESSOR_COLOUR = "#00c853", "#ff1744"
UPLOAD_FORMATS = "a JPEG, PNG, BMP, TIFF or WebP picture"
LOG = logging.getLogger("fga_space")
COMPARED_DEFAULT = "transmm"  # the method shown beside FGA by default: its baseline, from the same pass
SLOW_METHODS = ("integrated-gradients", "caap", "kernel-shap")  # many forward passes: seconds on a CPU
HUB_PROTOTYPES = "Prototypes are precomputed for the bundled models' SAEs only."


METRICS_OUTPUT = 6  # position of the metrics table among the handler's outputs (see `Explanation.as_tuple`)


class SpaceInputError(ValueError):
    """Something the visitor can fix (an image, a model id): shown in the page, never as a traceback."""


@dataclass
class Explainer:
    """
    What the Space explains with: a loaded `feature-gradient-attribution` pipeline and its context.

    Args:
        pipe: the pipeline (model, image processor, SAEs and the `FeatureGradientAttribution` attributor).
        name (`str`): shown in the page.
        default_blocks (`list[int]`): the gated blocks ticked at start.
        examples (`list[str]`): example image paths.
        prototypes (`PrototypeIndex`, *optional*): precomputed feature prototypes for these SAEs.
        mean_blocks (`list[int]`, *optional*): the blocks with a mean patch residual (the `mean-centered` control).
        domain (`str`, *optional*): the bundled domain (`hf_fga.bundled.list_domains()`) it explains; `None` for
            any other model.
        no_prototypes (`str`, *optional*): why `prototypes` is `None` (shown where the prototypes would be).
    """

    pipe: FeatureGradientAttributionPipeline
    name: str
    default_blocks: list[int]
    examples: list[str]
    prototypes: PrototypeIndex | None = None
    mean_blocks: list[int] = field(default_factory=list)
    domain: str | None = None
    no_prototypes: str = HUB_PROTOTYPES

    @property
    def blocks(self) -> list[int]:
        return sorted(self.pipe.saes)

    @property
    def labels(self) -> list[str]:
        config = self.pipe.model.config
        return [config.id2label[i] for i in range(config.num_labels)]

    @property
    def title(self) -> str:
        """The model in words: its bundled domain's title, or its name."""
        return f"bundled {bundled.domain(self.domain).title} ViT" if self.domain else self.name


def comparison_methods() -> list[str]:
    """The registered methods that can be shown beside FGA (every one but FGA itself), TransMM first."""
    names = [name for name in hf_fga.list_methods() if name != "fga"]
    return sorted(names, key=lambda name: name != COMPARED_DEFAULT)


def method_label(name: str) -> str:
    """The display name of a registered method (its report label where it has one, else its name)."""
    return METHOD_LABELS.get(name, name)


def default_blocks(blocks: Sequence[int], num_layers: int) -> list[int]:
    """
    Blocks ticked by default: those with an SAE, less the last two when others remain (at the output of the last
    block every patch gradient is 0, and at block L−2 the `combined` score is degenerate: method.md §3).
    """
    usable = [b for b in blocks if b < num_layers - 2]
    return usable or list(blocks)


def make_explainer(
    model,
    sae,
    name: str,
    examples: Sequence[str] = (),
    assets: Path | None = ASSETS,
    mean_residuals=None,
    domain: str | None = None,
) -> Explainer:
    """
    Load the pipeline once (with the mean residuals that the `mean-centered` control needs, when given), and the
    prototypes in `assets` when they were computed for these SAEs (by `scripts/build_space_assets.py --name NAME`);
    `domain` names the bundled domain the model is.
    """
    if isinstance(mean_residuals, (str, Path)):
        mean_residuals = load_mean_residuals(mean_residuals)
    pipe = pipeline(TASK, model=model, sae=sae, mean_residuals=mean_residuals)
    if pipe.model.config.model_type == "clip":
        raise SpaceInputError(
            f"{name} is a CLIP model: this Space explains image classifiers only (CLIP needs candidate labels). "
            "Use the library's pipeline with candidate_labels=[...] instead."
        )
    prototypes, missing = None, HUB_PROTOTYPES
    if assets is not None:
        what = f"the {bundled.domain(domain).title} model" if domain else name
        missing = f"No prototypes are precomputed for {what}'s SAEs."
        if (Path(assets) / "prototypes.json").is_file():
            index = PrototypeIndex.load(assets)
            if index.matches(pipe.saes) and index.meta.get("model") == name:
                prototypes = index
            else:
                missing = f"The precomputed prototypes are for other SAEs than {what}'s: they need rebuilding."
    blocks = default_blocks(sorted(pipe.saes), pipe.model.config.num_hidden_layers)
    examples = [str(p) for p in examples]
    return Explainer(pipe, name, blocks, examples, prototypes, sorted(mean_residuals or {}), domain, missing)


def domain_assets(domain: str) -> Path:
    """The Space's precomputed prototypes of a bundled domain: `ASSETS`, in the domain's bundled subfolder."""
    return ASSETS / bundled.domain(domain).subfolder


EXPLAINERS: dict[str, Explainer] = {}  # the bundled domains loaded so far, by name


def bundled_explainer(domain: str = bundled.DEFAULT_DOMAIN) -> Explainer:
    """
    A bundled domain's ViT, its SAE set, mean residuals, example images and prototypes (loaded offline on first use,
    then kept in `EXPLAINERS`: switching domains never reloads one).
    """
    if domain not in EXPLAINERS:
        try:
            means = str(bundled.mean_residuals_path(domain))
        except FileNotFoundError:
            means = None
        EXPLAINERS[domain] = make_explainer(
            str(bundled.model_dir(domain)),
            str(bundled.sae_dir(domain)),
            "bundled",
            bundled.example_images(domain),
            assets=domain_assets(domain),
            mean_residuals=means,
            domain=domain,
        )
    return EXPLAINERS[domain]


def domain_explainer(name: str) -> Explainer:
    """The picker's choice: the explainer of an offered bundled domain, or a `SpaceInputError`."""
    offered = bundled.available_domains()
    if name not in offered:
        raise SpaceInputError(
            f"The domain `{str(name)[:40]}` is not offered here; choose one of {', '.join(offered) or 'none'}."
        )
    try:
        return bundled_explainer(name)
    except Exception as error:  # damaged files: the details stay in the server log
        LOG.warning("loading the bundled %s domain failed: %r", name, error)
        raise SpaceInputError(
            f"The {bundled.domain(name).title} model could not be loaded; choose another domain."
        ) from error


def check_hub_id(value: str, what: str) -> str:
    """A Hub repo id `owner/name`; local paths and anything else are refused with a message."""
    value = (value or "").strip()
    if not HUB_ID.match(value) or ".." in value or Path(value).exists():  # a relative folder would load locally
        raise SpaceInputError(
            f"{what} must be a Hugging Face Hub id of the form `owner/name` (letters, digits, `-`, `_`, `.`), got "
            f"`{value[:80]}`. Local paths are not accepted."
        )
    return value


@functools.lru_cache(maxsize=2)
def hub_explainer(model_id: str, sae_id: str) -> Explainer:
    """A Hub classifier and SAE set, loaded on first use and kept (two at most)."""
    try:
        return make_explainer(model_id, sae_id, f"{model_id} + {sae_id}", assets=None)
    except SpaceInputError:
        raise
    except Exception as error:  # network, missing repo, incompatible SAE: all end up as a message in the page
        LOG.warning("loading %s with SAEs %s failed: %r", model_id, sae_id, error)
        raise SpaceInputError(
            f"Could not load `{model_id}` with SAEs `{sae_id}` from the Hub: one of them does not exist, is private, "
            "or the SAEs were trained for another model. Check both ids, or leave them empty to use the bundled "
            "model (without a network connection only the bundled model is available)."
        ) from error


def read_upload(path: str | Image.Image | None) -> Image.Image:
    """
    The uploaded file as an RGB image, or a `SpaceInputError` in the visitor's words. The file size and the image's
    dimensions (from its header: PIL reads them without decoding the pixels) are checked before it is decoded.
    """
    if path is None:
        raise SpaceInputError("Pick an example or upload an image first.")
    if isinstance(path, Image.Image):
        return decode_upload(path, path.size)
    file = Path(path)
    if not file.is_file():
        raise SpaceInputError("The uploaded file could not be found; please upload it again.")
    size = file.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise SpaceInputError(
            f"The upload is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB. Upload a smaller or "
            "more compressed picture (a JPEG is usually enough)."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as probe:
                dimensions = probe.size
    except Image.DecompressionBombError:
        raise SpaceInputError(too_large_message(None)) from None
    except Exception as error:
        LOG.info("unreadable upload: %r", error)
        raise SpaceInputError(f"The upload is not a readable image. Upload {UPLOAD_FORMATS}.") from None
    return decode_upload(str(file), dimensions)


def too_large_message(dimensions: tuple[int, int] | None) -> str:
    what = f"{dimensions[0]}×{dimensions[1]} pixels" if dimensions else "too large to open"
    return (
        f"The image is {what}; the limit is {MAX_UPLOAD_PIXELS:,} pixels (about 5000 × 5000). Downscale it and upload "
        "it again."
    )


def decode_upload(source: str | Image.Image, dimensions: tuple[int, int]) -> Image.Image:
    """Check the dimensions, then decode with the library's `load_image`; its errors become the visitor's words."""
    width, height = dimensions
    if width * height > MAX_UPLOAD_PIXELS:
        raise SpaceInputError(too_large_message(dimensions))
    if min(width, height) < MIN_SIDE:
        raise SpaceInputError(
            f"The image is {width}×{height} pixels: too small to explain. Upload a picture at least "
            f"{MIN_SIDE}×{MIN_SIDE} pixels (the model looks at it in 16 × 16 pixel patches)."
        )
    try:
        return load_image(source, name="the upload")
    except Exception as error:  # corrupt data, unusual pixel formats: the details stay in the server log
        LOG.info("undecodable upload: %r", error)
        raise SpaceInputError(
            f"The upload could not be decoded: the file is damaged or stores its pixels in an unusual format. "
            f"Upload {UPLOAD_FORMATS} (8- or 16-bit, grayscale or colour)."
        ) from None


def metrics_markdown(scores: dict[str, dict[str, float]]) -> str:
    rows = [
        "| metric | TransMM | FGA | change |",
        "| --- | --- | --- | --- |",
    ]
    for key, title, better in (
        ("saco", "SaCo ↑", 1),
        ("faithfulness_correlation", "Faithfulness Correlation ↑", 1),
        ("pixel_flipping", "Pixel Flipping AUC ↓", -1),
    ):
        base, fga = scores["TransMM"][key], scores["FGA"][key]
        delta = fga - base
        verdict = "better" if better * delta > 0 else ("worse" if better * delta < 0 else "same")
        rows.append(f"| {title} | {base:.3f} | {fga:.3f} | {delta:+.3f} ({verdict}) |")
    return "\n".join(rows) + (
        f"\n\n<sub>This image only, FGA against TransMM (whichever method is shown beside FGA); quick settings: "
        f"{QUICK_SETTINGS}.</sub>"
    )


def feature_panel(explainer: Explainer, image: Image.Image, result: dict, variant: str, prototype_ierfs: bool = False):
    """
    (boxed image, sheet of feature cards, Markdown table) for the pipeline's `top_features` (method.md §7); with
    `prototype_ierfs`, each prototype is overlaid with its own iERF for the feature (precomputed with the assets).
    """
    grid = result["attribution"].shape
    found = sorted(
        ((block, feature) for block, features in result["top_features"].items() for feature in features),
        key=lambda item: abs(item[1]["contribution"]),
        reverse=True,
    )
    if not found:
        why = (
            f"The `{variant}` variant does not read SAE features; choose `combined` (or `shuffled`) to see them."
            if variant not in FEATURE_VARIANTS
            else "No feature contributed to the most changed patches."
        )
        return image, None, why
    index = explainer.prototypes
    with_ierfs = prototype_ierfs and index is not None and index.has_ierfs
    marks, numbers, cards = [], [], []
    rows = [
        "| # | block | feature | role | push on ŝ | patches | why it fires (CaFE) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n, (block, feature) in enumerate(found, start=1):
        colour = AMPLIFIER_COLOUR if feature["sign"] == AMPLIFIER else SUPPRESSOR_COLOUR
        strip, note = None, textwrap.fill(explainer.no_prototypes, 34)
        if index is not None:
            strip = index.strip(block, feature["index"], ierfs=with_ierfs)
            note = "This feature never fired on\nthe reference split."
        boxes = [(p // grid[1], p % grid[1], colour) for p in feature["patches"]]
        marks += boxes
        numbers += [str(n)] * len(boxes)
        caption = (
            f"#{n} · block {block} · feature {feature['index']} · {feature['sign']} "
            f"({feature['contribution']:+.2f}) · its top reference images, yellow = where it fires"
            + (", overlaid: their iERFs" if with_ierfs else "")
        )
        card = feature_card(image, boxes, grid, strip, note)
        why = "–"
        if "ierf" in feature:  # CaFE (method.md §9): where the feature fires vs what makes it fire
            why = verdict(feature["locality_share"], feature["non_local"], feature["at_cls"])
            panels = cafe_panels(image, feature["activation_map"], feature["ierf"], feature["position"], grid)
            card = side_by_side(card, panels)
            caption += f" · then: its activation map and its iERF (white box: the peak) · {why}"
        cards.append((card, caption))
        rows.append(
            f"| {n} | {block} | {feature['index']} | {feature['sign']} | {feature['contribution']:+.2f} | "
            f"{len(feature['patches'])} | {why} |"
        )
    legend = (
        "Green boxes: the feature **amplified** the gate of that patch; red: it **suppressed** it. Each feature is "
        "the one that pushed hardest on the normalised score ŝ of one of the patches whose attribution FGA changed "
        "most against TransMM (method.md §7). Why it fires (CaFE, method.md §9): its activation map beside its iERF, "
        "the input patches that drive its activation at its peak token; **non-local** when under 25% of the iERF's "
        "positive mass lies in the 3×3 patches around the peak."
    )
    if with_ierfs:
        legend += (
            " The prototypes are overlaid with their own iERFs for the feature (at their peak patch, gradient × "
            "input, positive part): what makes the feature fire on each reference image."
        )
    elif prototype_ierfs:
        legend += "\n\n⚠️ " + (
            index.ierf_problem + " Showing the plain prototypes."
            if index is not None
            else explainer.no_prototypes + " Neither are their iERFs."
        )
    boxed = draw_patch_boxes(image, marks, grid, width=3, labels=numbers)
    return boxed, captioned_stack(cards), legend + "\n\n" + "\n".join(rows)


@dataclass
class Explanation:
    """Everything one click shows, in the order of the page's output components."""

    message: str
    prediction: dict[str, float] | None
    image: Image.Image | None
    transmm: Image.Image | None  # the map of the method compared with FGA (TransMM by default)
    fga: Image.Image | None
    gates: list[tuple[Image.Image, str]]
    metrics: str
    feature_image: Image.Image | None
    feature_cards: Image.Image | None
    features: str
    pending: tuple | None = None  # (model, pixel_values, maps) until `score` fills in the metrics
    compared: str = "TransMM"  # the caption of `transmm`: the compared method's label
    panel: tuple | None = None  # (explainer, shown image, result, variant): `feature_panel`'s inputs, for the toggle

    def as_tuple(self) -> tuple:
        """The outputs in page order (`METRICS_OUTPUT` is the index of the metrics table)."""
        return (
            self.message,
            self.prediction,
            self.image,
            gr.update(value=self.transmm, label=self.compared),  # its caption follows the chosen method
            self.fga,
            self.gates,
            self.metrics,
            self.feature_image,
            self.feature_cards,
            self.features,
        )

    @classmethod
    def failure(cls, message: str) -> Explanation:
        return cls(f"⚠️ {message}", None, None, None, None, [], "", None, None, "")


def explain(
    explainer: Explainer,
    image: Image.Image,
    variant: str = "combined",
    blocks: Sequence[int] | None = None,
    kappa: float = 0.5,
    cmax: float = 10.0,
    metrics: bool = True,
    method: str = COMPARED_DEFAULT,
    prototype_ierfs: bool = False,
) -> Explanation:
    """
    Explain one image with the pipeline (FGA and TransMM from one pass, the gates, the features behind the change)
    and score both maps. With another `method` than `"transmm"` (any registered one but `"fga"`), the pipeline runs
    a second time with that method for the same class, and its map is shown instead of TransMM's; the faithfulness
    table still compares FGA with TransMM. `prototype_ierfs` overlays the prototypes with their iERFs.
    """
    methods = comparison_methods()
    if method not in methods:
        raise SpaceInputError(f"Unknown method `{method}`; choose one of {', '.join(methods)}.")
    if variant not in VARIANTS:
        raise SpaceInputError(f"Unknown variant `{variant}`; choose one of {', '.join(VARIANTS)}.")
    available = explainer.blocks
    chosen = sorted({int(b) for b in (blocks if blocks is not None else explainer.default_blocks)})
    if not chosen:
        raise SpaceInputError(f"Tick at least one gated block (this SAE set has blocks {available}).")
    missing = [b for b in chosen if b not in available]
    if missing:
        raise SpaceInputError(f"Blocks {missing} have no SAE; this SAE set covers blocks {available}.")
    if not (kappa > 0 and cmax > 1):
        raise SpaceInputError(f"κ must be > 0 and c_max > 1; got κ={kappa}, c_max={cmax}.")
    if variant == "mean-centered" and any(b not in explainer.mean_blocks for b in chosen):
        raise SpaceInputError(
            "The `mean-centered` control needs the model's mean patch residuals, which this model does not ship; "
            "choose another variant."
        )
    pipe = explainer.pipe
    try:
        result = pipe(
            image,
            method="fga",
            variant=variant,
            layers=chosen,
            kappa=float(kappa),
            cmax=float(cmax),
            top_k_features=MAX_FEATURE_CARDS,
            explain_features=MAX_FEATURE_CARDS,
        )
    except ValueError as error:  # the library's messages name its API: the details stay in the server log
        LOG.warning("explaining failed: %r", error)
        raise SpaceInputError(
            "This image could not be explained with this model and SAE set. Try another image, other gated blocks, "
            "or the bundled model."
        ) from error
    compared = result["baseline"]
    if method != COMPARED_DEFAULT:
        try:
            compared = pipe(image, method=method, target=result["target"])["attribution"]
        except (ValueError, RuntimeError) as error:  # e.g. a method this architecture does not support
            LOG.warning("explaining with %s failed: %r", method, error)
            raise SpaceInputError(
                f"{method_label(method)} could not explain this image with this model; choose another method."
            ) from error
    pixel_values = pipe.image_processor(images=image, return_tensors="pt")["pixel_values"].to(pipe.model.dtype)
    with torch.no_grad():
        probabilities = pipe.model(pixel_values=pixel_values).logits.softmax(dim=-1)[0].tolist()
    shown = fit_within(image, DISPLAY_SIDE)
    labels = explainer.labels
    gates = [
        (gate_image(g, float(cmax)), f"block {b}: gates {float(g.min()):.2f} – {float(g.max()):.2f}")
        for b, g in sorted(result["gates"].items())
    ]
    feature_image, cards, features = feature_panel(explainer, shown, result, variant, prototype_ierfs)
    message = (
        f"**{result['label']}** with probability {result['score']:.3f} · model: {explainer.title} · variant "
        f"`{variant}`, blocks {chosen}, κ = {kappa:g}, c_max = {cmax:g} · beside {method_label(method)}"
    )
    explanation = Explanation(
        message,
        dict(zip(labels, probabilities, strict=True)),
        shown,
        overlay(shown, compared),
        overlay(shown, result["attribution"]),
        gates,
        "_Computing this image's faithfulness scores…_",
        feature_image,
        cards,
        features,
        (pipe.model, pixel_values, {"TransMM": result["baseline"], "FGA": result["attribution"]}),
        method_label(method),
        (explainer, shown, result, variant),
    )
    return score(explanation) if metrics else explanation


def score(explanation: Explanation) -> Explanation:
    """Fill in the faithfulness table of an explanation made with `metrics=False`."""
    if explanation.pending is not None:
        model, pixel_values, maps = explanation.pending
        try:
            explanation.metrics = metrics_markdown(quick_faithfulness(model, pixel_values, maps))
        except ValueError as error:  # e.g. a grid too small for K = 10 SaCo groups or 20-patch subsets
            explanation.metrics = f"_This image's faithfulness scores are not available for this model: {error}_"
        explanation.pending = None
    return explanation


def resolve_explainer(
    default: Explainer,
    model_id: str,
    sae_id: str,
    domain: str | None = None,
    pick: Callable[[str], Explainer] | None = None,
) -> Explainer:
    """The Hub model when an id is given, else the picked domain's explainer (`pick(domain)`), else `default`."""
    if (model_id or "").strip() or (sae_id or "").strip():
        return hub_explainer(check_hub_id(model_id, "The model id"), check_hub_id(sae_id, "The SAE repo id"))
    if pick is not None and domain:
        return pick(domain)
    return default


def make_handler(default: Explainer, with_panel: bool = False, pick: Callable[[str], Explainer] | None = None):
    """
    The click handler, a generator: it shows the maps, gates and features first, then adds the faithfulness scores
    (the slower part). Every visitor-facing failure becomes a warning and a message, never a traceback. With
    `with_panel`, each update also carries the feature panel's inputs (`Explanation.panel`, for a `gr.State` that
    the prototype iERF toggle redraws from), after the page's outputs. With `pick` (e.g. [`domain_explainer`]), the
    handler's last input, the domain picker's value, chooses the explainer; `default` explains without one.
    """

    def handle(
        image_path,
        variant,
        blocks,
        kappa,
        cmax,
        model_id="",
        sae_id="",
        method=COMPARED_DEFAULT,
        prototype_ierfs=False,
        domain=None,
    ):
        try:
            explainer = resolve_explainer(default, model_id, sae_id, domain, pick)
            if explainer is not default:
                blocks = [b for b in blocks if b in explainer.blocks] or explainer.default_blocks
            image = read_upload(image_path)
            explanation = explain(
                explainer,
                image,
                variant,
                blocks,
                kappa,
                cmax,
                metrics=False,
                method=method,
                prototype_ierfs=bool(prototype_ierfs),
            )
        except SpaceInputError as error:
            gr.Warning(str(error))
            yield Explanation.failure(str(error)).as_tuple() + ((None,) if with_panel else ())
            return
        yield explanation.as_tuple() + ((explanation.panel,) if with_panel else ())
        # Only the metrics change: re-sending the images would make Gradio rewrite files the browser may be reading.
        metrics = score(explanation).metrics
        count = len(explanation.as_tuple()) + int(with_panel)
        yield tuple(metrics if n == METRICS_OUTPUT else gr.skip() for n in range(count))

    return handle


def redraw_features(panel: tuple | None, prototype_ierfs: bool) -> tuple:
    """
    The prototype iERF toggle: the feature panel (boxed image, cards, table) of the last explanation redrawn with
    or without the prototypes' iERFs, nothing recomputed; nothing changes before the first explanation.
    """
    if panel is None:
        return gr.skip(), gr.skip(), gr.skip()
    explainer, shown, result, variant = panel
    return feature_panel(explainer, shown, result, variant, bool(prototype_ierfs))


def tolerant_upload(component: gr.Image) -> gr.Image:
    """
    Make an `gr.Image` hand the handler the uploaded file's path even when it is not a decodable image, so that the
    handler reports the problem in the page instead of Gradio failing in its preprocessing. (An instance attribute,
    not a subclass: Gradio writes a `.pyi` stub next to the module of every component subclass.)
    """
    decode = component.preprocess

    def preprocess(payload):
        try:
            return decode(payload)
        except Exception:
            return None if payload is None else payload.path

    component.preprocess = preprocess
    return component


INTRO = """
# Feature-Gradient Attribution
**TransMM** (Chefer et al. 2021) weighs attention by its gradient. **FGA** adds, at the gated blocks, a per-patch
gate from sparse-autoencoder features: a patch's score is Σₖ fₖ · (Dᵀg)ₖ (feature activation × the gradient
projected onto the feature), robustly normalised and mapped to a gate in [1/c_max, c_max]. Pick a **domain** (the
bundled model that explains), then an example or an upload of that kind of image, and press **Explain**. **Compare
FGA with** shows another registered attribution method's map in place of TransMM's.

On the chest X-ray model (618 test X-rays, tested per patient) FGA is more faithful than TransMM on SaCo and Pixel
Flipping, not on Faithfulness Correlation; but **the SAE's features are not what makes it so**: in the pre-registered
controls the trained SAE beats neither a control without SAE features (gradient × centred residual) nor a PCA or
random dictionary of equal fidelity on any metric, and where a meaningless dictionary differs it is slightly ahead
(`docs/results/chest_xray_controls.md`). On the breast ultrasound model (BUSI, 118 test images, test balanced
accuracy 0.698) the same holds: FGA beats TransMM on SaCo and Pixel Flipping (and here on Faithfulness
Correlation too), the control without SAE features gains as much, and the pre-registered controls find the trained
SAE no better than a PCA or random dictionary of equal fidelity (`docs/results/breast_ultrasound_controls.md`).
"""


def domain_markdown(explainer: Explainer) -> str:
    """The picked model in words: its classes, its SAE blocks, and whether (or how) its prototypes are precomputed."""
    prototypes = "prototypes precomputed" if explainer.prototypes is not None else explainer.no_prototypes
    if explainer.prototypes is None and explainer.domain is not None:
        command = f"python scripts/build_space_assets.py --domain {explainer.domain}"
        prototypes = f"{prototypes.removesuffix('.')} (`{command}` builds them)."
    return (
        f"**{explainer.title}** · classes: {', '.join(explainer.labels)} · SAEs at blocks "
        f"{', '.join(map(str, explainer.blocks))} · {prototypes}"
    )


def unbuilt_markdown(offered: Sequence[str]) -> str:
    """The bundled domains this installation does not offer (their assets are incomplete), with their build scripts."""
    unbuilt = [bundled.domain(name) for name in bundled.list_domains() if name not in offered]
    if not unbuilt:
        return ""
    listed = "; ".join(f"**{d.title}**, built by `{d.build_script}`" for d in unbuilt)
    return f"Not offered (assets not built in this installation): {listed}."


def examples_label(explainer: Explainer) -> str:
    if explainer.domain is None:
        return "Examples"
    return f"Examples ({bundled.domain(explainer.domain).title}, test split)"


def switch_domain(name: str) -> tuple:
    """
    The picker's change: the domain's example gallery, gated blocks and description, from its explainer (loaded on
    its first pick and kept). A domain that cannot be loaded leaves the page as it was, with a warning.
    """
    try:
        explainer = domain_explainer(name)
    except SpaceInputError as error:
        gr.Warning(str(error))
        return gr.skip(), gr.skip(), f"⚠️ {error}"
    return (
        gr.Dataset(samples=[[path] for path in explainer.examples], label=examples_label(explainer)),
        gr.CheckboxGroup(choices=explainer.blocks, value=explainer.default_blocks),
        domain_markdown(explainer),
    )


def build_demo(explainer: Explainer | None = None) -> gr.Blocks:
    """
    The Space's page. Without `explainer`, its domain picker offers the bundled domains whose assets are complete
    (`hf_fga.bundled.available_domains()`, the default first; each loaded on its first pick and kept) and names the
    others; tests pass a small `explainer`, then the picker's only choice.
    """
    offered = bundled.available_domains() if explainer is None else []
    if explainer is None:
        if not offered:
            raise RuntimeError(
                "No bundled domain is complete (model, SAEs, mean residuals and examples): "
                + " ".join(bundled.missing_assets())
            )
        explainer = bundled_explainer(offered[0])
    choices = [(bundled.domain(name).title, name) for name in offered] or [(explainer.title, explainer.name)]
    handle = make_handler(explainer, with_panel=True, pick=domain_explainer if offered else None)
    with gr.Blocks(title="Feature-Gradient Attribution") as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                domain = gr.Dropdown(
                    choices,
                    value=choices[0][1],
                    label="Domain",
                    info="The bundled domains whose model, SAEs, mean residuals and examples are all installed.",
                    interactive=len(choices) > 1,
                    elem_id="fga-domain",
                )
                domain_note = gr.Markdown(domain_markdown(explainer), elem_id="fga-domain-note")
                if offered:
                    gr.Markdown(unbuilt_markdown(offered), elem_id="fga-unbuilt")
                image = tolerant_upload(  # image_mode=None: Gradio hands over the file without decoding it
                    gr.Image(type="filepath", image_mode=None, label="Image", sources=["upload"], elem_id="fga-input")
                )
                variant = gr.Dropdown(list(VARIANTS), value="combined", label="Variant", elem_id="fga-variant")
                method = gr.Dropdown(
                    [(method_label(name), name) for name in comparison_methods()],
                    value=COMPARED_DEFAULT,
                    label="Compare FGA with",
                    info=(
                        f"Shown beside FGA. {', '.join(method_label(m) for m in SLOW_METHODS)} take many passes: "
                        "seconds on a CPU. The faithfulness table compares FGA with TransMM whatever is chosen."
                    ),
                    elem_id="fga-method",
                )
                blocks = gr.CheckboxGroup(
                    explainer.blocks, value=explainer.default_blocks, label="Gated blocks", elem_id="fga-blocks"
                )
                kappa = gr.Slider(0.05, 5.0, value=0.5, step=0.05, label="κ (gate sensitivity)")
                cmax = gr.Slider(1.5, 100.0, value=10.0, step=0.5, label="c_max (gates lie in [1/c_max, c_max])")
                with gr.Accordion("Another model from the Hub (needs a network)", open=False):
                    model_id = gr.Textbox(label="Model id (owner/name)", placeholder="google/vit-base-patch16-224")
                    sae_id = gr.Textbox(label="SAE set repo id (owner/name)")
                run = gr.Button("Explain", variant="primary", elem_id="fga-run")
                examples = None
                if explainer.examples:
                    examples = gr.Examples(
                        [[path] for path in explainer.examples],
                        inputs=[image],
                        label=examples_label(explainer),
                        examples_per_page=12,
                        elem_id="fga-examples",
                    )
            with gr.Column(scale=3):
                message = gr.Markdown(elem_id="fga-message")
                prediction = gr.Label(num_top_classes=3, label="Prediction", elem_id="fga-prediction")
                with gr.Row():
                    shown = gr.Image(label="Image", interactive=False, elem_id="fga-image")
                    transmm = gr.Image(label="TransMM", interactive=False, elem_id="fga-transmm")
                    fga = gr.Image(label="FGA", interactive=False, elem_id="fga-fga")
                gates = gr.Gallery(
                    label="Gates per block (red < 1 < green, log scale)",
                    columns=4,
                    height=250,
                    object_fit="contain",
                    fit_columns=False,
                    elem_id="fga-gates",
                )
                metrics = gr.Markdown(elem_id="fga-metrics")
        gr.Markdown("## The features behind the change")
        with gr.Row(elem_id="fga-feature-panel"):
            feature_image = gr.Image(
                label="Features (green amplifier, red suppressor)",
                interactive=False,
                elem_id="fga-feature-image",
                scale=1,
            )
            with gr.Column(scale=2):
                features = gr.Markdown(elem_id="fga-features")
                prototype_ierfs = gr.Checkbox(
                    value=False,
                    label="Show the prototypes' iERFs",
                    info="Overlay each prototype with what makes the feature fire on it (its iERF, precomputed).",
                    elem_id="fga-prototype-ierfs",
                )
                cards = gr.Image(
                    label="Features and their prototypes",
                    show_label=False,
                    interactive=False,
                    elem_id="fga-feature-cards",
                )
        panel = gr.State(None)
        inputs = [image, variant, blocks, kappa, cmax, model_id, sae_id, method, prototype_ierfs, domain]
        outputs = [message, prediction, shown, transmm, fga, gates, metrics, feature_image, cards, features, panel]
        run.click(handle, inputs=inputs, outputs=outputs, api_name="explain")
        if offered:  # a complete domain has examples
            switched = [examples.dataset, blocks, domain_note]
            domain.change(switch_domain, inputs=[domain], outputs=switched, api_name=False)
        prototype_ierfs.change(
            redraw_features, inputs=[panel, prototype_ierfs], outputs=[feature_image, cards, features], api_name=False
        )
    return demo


def configure_torch_threads() -> int:
    """
    Set torch's intra-op threads from `FGA_SPACE_TORCH_THREADS` (default 1) and return the count. A click is many
    small operations: on a small shared CPU, threads mostly wait for each other (on the 2 shared cores this was
    developed on, one thread made the attribution pass ~30x and the metrics ~3x faster than two).
    """
    threads = int(os.environ.get(TORCH_THREADS_ENV, "1"))
    torch.set_num_threads(threads)
    return threads


if __name__ == "__main__":
    configure_torch_threads()
    build_demo().queue(default_concurrency_limit=1, max_size=16).launch(max_file_size="10mb")
