"""The configurations an evaluation compares (method.md §6): methods, FGA variants, gated-block sets, κ and c_max."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..attribution import get_method, list_methods

REFERENCE_METHOD = "transmm"
GATED_METHOD = "fga"
METHOD_LABELS = {
    "transmm": "TransMM",
    "rollout": "Rollout",
    "raw-attention": "Raw attention",
    "gradient-x-input": "Gradient × Input",
    "integrated-gradients": "Integrated Gradients",
    "grad-cam": "Grad-CAM",
    "cp-lrp": "CP-LRP",
    "attnlrp": "AttnLRP",
    "caap": "CAAP",
    "kernel-shap": "KernelSHAP",
}
REPORT_ORDER = (
    "transmm",
    "fga",
    "rollout",
    "raw-attention",
    "gradient-x-input",
    "integrated-gradients",
    "grad-cam",
    "cp-lrp",
    "attnlrp",
    "caap",
    "kernel-shap",
)
KNOWN_VARIANTS = (
    "combined",
    "activation",
    "gradient",
    "no-sae",
    "shuffled",
    "centered",
    "mean-centered",
    # the controls of method.md §10; those with a parameter are written `name@value`, e.g. `error-scaled@0.5`
    "error-scaled",
    "error-only",
    "transmm-power",
    "random-gates",
    "selective",
)


LIBRAGRAD = "libragrad"  # the modifier of gradient-based methods (method.md §8), written `method+libragrad`


def variant_name(variant: str) -> str:
    """The variant without its parameter or modifier: `error-scaled@0.5` → `error-scaled`, `combined+libragrad` →
    `combined`."""
    return split_modifier(variant)[0].partition("@")[0]


def split_modifier(variant: str) -> tuple[str, bool]:
    """`"combined+libragrad"` → `("combined", True)`; `"libragrad"` (a non-FGA method's) → `("", True)`."""
    parts = [part for part in str(variant or "").split("+") if part]
    libragrad = LIBRAGRAD in parts
    return "+".join(part for part in parts if part != LIBRAGRAD), libragrad


def parse_method_spec(spec: str) -> tuple[str, bool, dict[str, Any], str]:
    """
    One entry of `--methods`: `name[+libragrad][@option=value[;option=value…]]`, e.g. `gradient-x-input+libragrad`,
    `caap@block_range=2-6`, `integrated-gradients+libragrad@steps=64`.

    Returns `(name, libragrad, options, options_text)`; values are parsed as `a-b` → `(a, b)` (a block range), then
    int, float, `true`/`false`, else text. Errors name what was wrong: an unknown method, `+libragrad` on a method
    that reads no gradients, an option the method does not take (the message lists those it does).
    """
    head, _, options_text = str(spec).strip().partition("@")
    name, libragrad = split_modifier(head)
    known = known_methods()
    if name not in known:
        raise ValueError(f"Unknown method {name!r} in {spec!r}: expected some of {list(known)}.")
    method = get_method(name)
    if libragrad and not method.gradient_based:
        gradient = [m for m in known if get_method(m).gradient_based]
        raise ValueError(
            f"{spec!r}: +libragrad changes the gradients a method reads, but {name!r} reads none; it applies to "
            f"{', '.join(gradient)}."
        )
    options, texts = {}, []
    for item in filter(None, (part.strip() for part in options_text.split(";"))):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or key not in method.options:
            accepted = ", ".join(method.options) or "none"
            raise ValueError(
                f"{spec!r}: {item!r} is not an option of {name!r} (write option=value; it takes: {accepted})."
            )
        options[key] = _option_value(value)
        texts.append(f"{key}={value}")
    if options and name == GATED_METHOD:
        raise ValueError(f"{spec!r}: FGA's settings come from --variants, --layer_sets, --kappas and --cmaxes.")
    return name, libragrad, options, ";".join(texts)


def _option_value(text: str) -> Any:
    if re.fullmatch(r"\d+-\d+", text):
        return tuple(int(part) for part in text.split("-"))
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def method_variant(libragrad: bool, options_text: str = "", base: str = "") -> str:
    """The `variant` column of a configuration: `base` (FGA's variant, or a method's options) `+libragrad`."""
    return "+".join(part for part in (base or options_text, LIBRAGRAD if libragrad else "") if part)


def known_methods() -> tuple[str, ...]:
    """
    The methods an evaluation can compare, in report order: every method of the attribution registry
    (`hf_fga.list_methods()`, so a newly registered method is known without a change here). The built-in methods come
    in `REPORT_ORDER` (TransMM and FGA first, then the attention baselines, the gradient methods, LRP and CAAP), any
    other registered method after them, by name.
    """
    registered = list(list_methods())
    first = [name for name in REPORT_ORDER if name in registered]
    return (*first, *(name for name in registered if name not in first))


@dataclass(frozen=True, order=True)
class EvaluationConfiguration:
    """
    One attribution configuration of an evaluation grid.

    Args:
        method (`str`): a registered attribution method (`known_methods()`).
        variant (`str`, *optional*, defaults to `""`): the FGA variant (e.g. `combined`, `error-scaled@0.5`); for the
            other methods their options as `option=value;…` (e.g. `block_range=2-6`), empty for the defaults. Either
            may end in `+libragrad`: the method's passes run under LibraGrad's backward rules (method.md §8).
        layers (`tuple[int, ...]`, *optional*, defaults to `()`): the gated blocks (FGA only).
        kappa (`float`, *optional*, defaults to `0.0`): κ of the gate (FGA only; 0 for the other methods).
        cmax (`float`, *optional*, defaults to `0.0`): c_max of the gate (FGA only; 0 for the other methods).
    """

    method: str
    variant: str = ""
    layers: tuple[int, ...] = ()
    kappa: float = 0.0
    cmax: float = 0.0

    @property
    def is_gated(self) -> bool:
        return self.method == GATED_METHOD

    @property
    def libragrad(self) -> bool:
        """Whether the method's gradients come from LibraGrad's backward rules (`+libragrad`)."""
        return split_modifier(self.variant)[1]

    @property
    def options(self) -> dict[str, Any]:
        """A non-FGA method's options from its `variant` (`block_range=2-6` → `{"block_range": (2, 6)}`)."""
        if self.is_gated:
            return {}
        return parse_method_spec(f"{self.method}@{split_modifier(self.variant)[0]}")[2]

    @property
    def layers_text(self) -> str:
        return ",".join(str(layer) for layer in self.layers)

    @property
    def key(self) -> str:
        """A stable text key, e.g. `fga|combined|4,5,6|0.5|10` or `transmm||||` (used to resume and to join)."""
        if not self.is_gated:
            return f"{self.method}|{self.variant}|||"
        return f"{self.method}|{self.variant}|{self.layers_text}|{self.kappa:g}|{self.cmax:g}"

    @property
    def label(self) -> str:
        """A short human-readable name for reports and figures, e.g. `FGA combined [4,5,6] κ=0.5 c=10`."""
        base, libragrad = split_modifier(self.variant)
        suffix = " + LibraGrad" if libragrad else ""
        if not self.is_gated:
            options = f" ({base.replace(';', ', ')})" if base else ""
            return f"{METHOD_LABELS.get(self.method, self.method)}{options}{suffix}"
        return f"FGA {base} [{self.layers_text}] κ={self.kappa:g} c={self.cmax:g}{suffix}"

    @property
    def sort_key(self) -> tuple:
        """Report order: TransMM, the other baselines, then FGA by variant, block set, κ and c_max."""
        methods = known_methods()
        method = methods.index(self.method) if self.method in methods else len(methods)
        base, libragrad = split_modifier(self.variant)
        name, _, parameter = base.partition("@")
        variant = KNOWN_VARIANTS.index(name) if name in KNOWN_VARIANTS else -1
        value = float(parameter) if parameter.replace(".", "", 1).isdigit() else 0.0
        layers = (len(self.layers), self.layers, self.kappa, self.cmax)
        return (self.is_gated, method, libragrad, variant, value, base, *layers)

    def columns(self) -> dict[str, object]:
        """The configuration columns of a result row."""
        return {
            "config": self.key,
            "method": self.method,
            "variant": self.variant,
            "layers": self.layers_text,
            "kappa": float(self.kappa),
            "cmax": float(self.cmax),
        }

    @classmethod
    def from_columns(
        cls, method: str, variant: str, layers: str, kappa: float, cmax: float
    ) -> EvaluationConfiguration:
        parsed = tuple(int(part) for part in str(layers).split(",") if part != "")
        return cls(str(method), str(variant or ""), parsed, float(kappa), float(cmax))

    @classmethod
    def from_key(cls, key: str) -> EvaluationConfiguration:
        """The configuration of a `key` (e.g. `fga|combined|4,5,6|0.5|10`); a clear error for a malformed key."""
        parts = str(key).split("|")
        try:
            if len(parts) != 5:
                raise ValueError
            method, variant, layers, kappa, cmax = parts
            return cls.from_columns(method, variant, layers, float(kappa or 0), float(cmax or 0))
        except ValueError:
            raise ValueError(
                f"{key!r} is not a configuration key: expected 'method|variant|layers|kappa|cmax', e.g. "
                "'fga|combined|4,5,6|0.5|10' or 'transmm||||' (the `config` column of the results)."
            ) from None


REFERENCE = EvaluationConfiguration(REFERENCE_METHOD)


def key_label(key: str) -> str:
    """
    A readable name for a configuration key, possibly `tag/`-prefixed, without the `|` that would break a Markdown
    table; a key that is not a configuration's (a derived one) keeps its text, `|` replaced by `¦`.

    Example:
    ```python
    >>> key_label("fga|combined|4,5,6|0.5|10"), key_label("issue7/transmm||||"), key_label("mix|a")
    ('FGA combined [4,5,6] κ=0.5 c=10', 'issue7: TransMM', 'mix¦a')

    ```
    """
    tag, _, bare = key.rpartition("/")
    try:
        name = EvaluationConfiguration.from_key(bare).label
    except ValueError:
        return key.replace("|", "¦")
    return f"{tag}: {name}" if tag else name


def parse_list(text: str | Sequence[str] | None, field: str) -> list[str]:
    """`"a,b , c"` (or a list of such strings) → `["a", "b", "c"]`; empty entries are dropped."""
    if text is None:
        return []
    parts = [text] if isinstance(text, str) else list(text)
    values = [item.strip() for part in parts for item in str(part).split(",") if item.strip()]
    if not values:
        raise ValueError(f"`{field}` is empty: give at least one value, comma-separated.")
    return values


def parse_floats(text: str | Sequence[str] | Sequence[float], field: str) -> list[float]:
    """`"0.1,0.5,1"` → `[0.1, 0.5, 1.0]`, with an error naming `field` on anything that is not a number."""
    values = [text] if isinstance(text, int | float) else text
    if not isinstance(values, str) and all(isinstance(v, int | float) for v in values):
        return [float(v) for v in values]
    out = []
    for item in parse_list(values, field):
        try:
            out.append(float(item))
        except ValueError:
            raise ValueError(f"`{field}` must be comma-separated numbers, e.g. '0.1,0.5,1.0'; got {item!r}.") from None
    return out


def parse_layer_sets(text: str | Sequence[Sequence[int]] | None) -> list[tuple[int, ...]]:
    """
    Gated-block sets from `"4;5;6;4,5;4,5,6"` (sets separated by `;`, blocks by `,`), or a list of lists.

    `None` or `"default"` gives `[()]`: the attribution's default (every block that has an SAE or a mean residual).
    """
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "default", "all")):
        return [()]
    if not isinstance(text, str):
        return [tuple(sorted({int(block) for block in group})) for group in text]
    sets = []
    for group in text.split(";"):
        group = group.strip()
        if not group:
            continue
        try:
            blocks = tuple(sorted({int(block) for block in group.split(",") if block.strip()}))
        except ValueError:
            raise ValueError(
                f"`layer_sets` must look like '4;5;6;4,5;4,5,6' (sets separated by ';', blocks by ','); got {text!r}."
            ) from None
        if any(block < 0 for block in blocks):
            raise ValueError(f"`layer_sets` holds a negative block in {group!r}: blocks are 0-indexed.")
        sets.append(blocks)
    if not sets:
        raise ValueError(f"`layer_sets` {text!r} names no block: use e.g. '4;5;6;4,5'.")
    return list(dict.fromkeys(sets))


def expand_grid(
    methods: Iterable[str],
    variants: Iterable[str] = ("combined",),
    layer_sets: Iterable[tuple[int, ...]] = ((),),
    kappas: Iterable[float] = (0.5,),
    cmaxes: Iterable[float] = (10.0,),
) -> list[EvaluationConfiguration]:
    """
    Every configuration of the grid, reference first: TransMM (always included: it is the reference of every
    comparison, and free, since every FGA output carries it as `baseline`), the other non-FGA methods, then FGA over
    variants × layer sets × κ × c_max. Duplicates are dropped, order is stable. A method is a spec of
    [`parse_method_spec`]: `fga+libragrad` runs every FGA configuration under LibraGrad as well, `caap@block_range=2-6`
    sets a method's options.

    Example:
    ```python
    >>> [c.key for c in expand_grid(["fga"], ["combined"], [(4,), (4, 5)], [0.5], [10])]
    ['transmm||||', 'fga|combined|4|0.5|10', 'fga|combined|4,5|0.5|10']

    ```
    """
    specs = [parse_method_spec(spec) for spec in dict.fromkeys(methods)]
    variants, layer_sets = list(dict.fromkeys(variants)), list(dict.fromkeys(layer_sets))
    unknown = [v for v in variants if variant_name(v) not in KNOWN_VARIANTS]
    if unknown:
        raise ValueError(
            f"Unknown variant(s) {unknown}: expected some of {list(KNOWN_VARIANTS)} (controls with a "
            "parameter as name@value, e.g. error-scaled@0.5)."
        )
    kappas, cmaxes = list(dict.fromkeys(kappas)), list(dict.fromkeys(cmaxes))
    if any(k <= 0 for k in kappas):
        raise ValueError(f"`kappas` must all be > 0 (the gate's slope); got {kappas}.")
    if any(c <= 1 for c in cmaxes):
        raise ValueError(f"`cmaxes` must all be > 1 (the gate's range is [1/c_max, c_max]); got {cmaxes}.")
    grid = [REFERENCE]
    grid += [EvaluationConfiguration(n, method_variant(lg, text)) for n, lg, _, text in specs if n != GATED_METHOD]
    for name, libragrad, _, _ in specs:
        if name != GATED_METHOD:
            continue
        if not variants:
            raise ValueError("`variants` is empty but method 'fga' was asked for: name at least one variant.")
        for variant, layers, kappa, cmax in itertools.product(variants, layer_sets, kappas, cmaxes):
            variant = method_variant(libragrad, base=variant)
            grid.append(EvaluationConfiguration(GATED_METHOD, variant, tuple(layers), float(kappa), float(cmax)))
    return list(dict.fromkeys(grid))
