"""
The method registry: every attribution method is one [`AttributionMethod`] subclass in its own file, registered by
name with [`register_method`]; the engine ([`Attributor`]) looks methods up by name and never branches on names.

A method either derives its map from the shared [`Capture`] (one forward + one backward pass, `uses_capture = True`:
TransMM, FGA, rollout, raw attention) or runs its own passes (`uses_capture = False`: integrated gradients, CAAP, …).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor
from transformers import PreTrainedModel

from ...faithfulness.fills import PatchGrid, patch_grid
from ..objectives import Objective, prepared_objective

if TYPE_CHECKING:
    from ..capture import Capture
    from ..engine import Attributor


@dataclass
class MethodResult:
    """
    What a method returns; the engine turns it into an [`AttributionOutput`] (CPU, float32).

    Args:
        attribution (`Tensor` of shape `(B, h, w)`): the signed map on the model's patch grid.
        scores (`dict[int, Tensor]`): per gated block, raw per-patch scores `(B, h, w)` (FGA only).
        gates (`dict[int, Tensor]`): per gated block, gates `(B, h, w)` (FGA only).
        diagnostics (`dict`, *optional*): method-specific per-block diagnostics, when requested.
        contributions (`dict`, *optional*): method-specific per-patch contributions, when requested.
        logits (`Tensor` of shape `(B, C)`, *optional*): the clean images' scores, from an own-pass method that
            resolves its target (`resolves_target = True`).
        target (`Tensor` of shape `(B,)`, *optional*): the explained class per image, from such a method.
    """

    attribution: Tensor
    scores: dict[int, Tensor] = field(default_factory=dict)
    gates: dict[int, Tensor] = field(default_factory=dict)
    diagnostics: dict | None = None
    contributions: dict | None = None
    logits: Tensor | None = None
    target: Tensor | None = None


class AttributionMethod:
    """
    Base class of a registered attribution method; the registry holds one instance per class.

    Class attributes:
        name (`str`): the registry key, e.g. `"transmm"`.
        description (`str`): one line, shown by [`list_methods`].
        uses_capture (`bool`): `True` if the map is derived from the shared capture ([`explain`] is implemented),
            `False` if the method runs its own passes ([`attribute`] is implemented).
        gradient_based (`bool`, defaults to `False`): whether the method reads gradients (the `libragrad` modifier
            applies to it).
        resolves_target (`bool`, defaults to `False`): for own-pass methods: `True` if [`attribute`] accepts
            `target=None` (each image's argmax) and returns the clean `logits` and the `target` in its
            [`MethodResult`], which spares the engine its own clean forward pass (gradient × input reads both from
            its one forward pass).
        options (`Mapping[str, Any]`): the accepted options and their defaults.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    uses_capture: ClassVar[bool]
    gradient_based: ClassVar[bool] = False
    resolves_target: ClassVar[bool] = False
    options: ClassVar[Mapping[str, Any]] = {}

    def check_options(self, attributor: Attributor, **options: Any) -> dict[str, Any]:
        """
        The options of one call with defaults filled in. An unknown option raises a TypeError listing the accepted
        ones; subclasses validate values (calling `super().check_options`).
        """
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            accepted = ", ".join(self.options) or "none"
            raise TypeError(
                f"Method {self.name!r} got unknown option(s) {', '.join(map(repr, unknown))}; it accepts: {accepted}."
            )
        return {**self.options, **options}

    def hook_points(self, attributor: Attributor, options: Mapping[str, Any]) -> dict[int, str]:
        """The residual hook points `{block: "resid_pre" | "resid_post"}` the capture must record (capture methods)."""
        return {}

    def explain(self, attributor: Attributor, capture: Capture, options: Mapping[str, Any]) -> MethodResult:
        """The map derived from a capture (methods with `uses_capture = True`)."""
        raise NotImplementedError(f"Method {self.name!r} runs its own passes: call Attributor.attribute.")

    def attribute(
        self,
        attributor: Attributor,
        pixel_values: Tensor,
        target: Tensor,
        text_embeds: Tensor | None,
        options: Mapping[str, Any],
    ) -> MethodResult:
        """
        The map from the method's own passes (methods with `uses_capture = False`); `target` is resolved `(B,)`, or
        `None` (each image's argmax) for a method with `resolves_target = True`.
        """
        raise NotImplementedError(f"Method {self.name!r} derives its map from a capture: it has no own passes.")


@dataclass
class ObjectiveRun:
    """
    What an [`ObjectiveMethod`]'s core runs on.

    Args:
        model ([`PreTrainedModel`]): the explained model, prepared for own passes.
        objective (`Objective`): `(pixel_values (R, C, H, W), rows (R,)) -> y (R,)`, the target logit.
        pixels (`Tensor` of shape `(B, C, H, W)`): the images on the model's device and dtype.
        grid (`PatchGrid`): the model's patch grid.
    """

    model: PreTrainedModel
    objective: Objective
    pixels: Tensor
    grid: PatchGrid


class ObjectiveMethod(AttributionMethod):
    """
    An own-pass method whose map is a core over the logit objective of method.md §1 (gradient × input, Integrated
    Gradients, KernelSHAP, and the LRP rule sets): [`attribute`] prepares the model with
    [`hf_fga.attribution.objectives.prepared_objective`] inside [`method_context`] and returns the clean `logits` and
    `target` it records, so the method resolves its own target; a subclass implements [`explain_objective`].

    Class attributes:
        clean_forward (`bool`, defaults to `True`): run one forward pass without gradient on the clean images first
            (for cores that evaluate other inputs); `False` when the core's first call is on the clean images.
    """

    uses_capture = False
    resolves_target = True
    clean_forward: ClassVar[bool] = True

    def method_context(self, model: PreTrainedModel) -> AbstractContextManager:
        """What every pass of the method runs inside, outside the model's preparation (nothing by default)."""
        return contextlib.nullcontext()

    def explain_objective(self, run: ObjectiveRun, options: Mapping[str, Any]) -> tuple[Tensor, dict | None]:
        """
        The method's core on the prepared model `run.model`, with the checked `options`.

        Returns:
            `tuple[Tensor, dict | None]`: the attribution `(B, h, w)` and the diagnostics (or `None`).
        """
        raise NotImplementedError(f"Method {self.name!r} must implement explain_objective.")

    def attribute(
        self,
        attributor: Attributor,
        pixel_values: Tensor,
        target: Tensor | None,
        text_embeds: Tensor | None,
        options: Mapping[str, Any],
    ) -> MethodResult:
        model = attributor.model
        grid = patch_grid(model, pixel_values)
        with (
            self.method_context(model),
            prepared_objective(
                model, pixel_values, target, text_embeds, attributor.linear_backend, clean_forward=self.clean_forward
            ) as (objective, pixels, record),
        ):
            attribution, diagnostics = self.explain_objective(ObjectiveRun(model, objective, pixels, grid), options)
        return MethodResult(
            attribution=attribution, logits=record["logits"], target=record["target"], diagnostics=diagnostics
        )


def check_integer(
    name: str, value: Any, minimum: int = 1, meaning: str | None = None, none_means: str | None = None
) -> int | None:
    """
    A method option that must be an integer (not a bool) of at least `minimum`; anything else is a ValueError that
    names the option, what it got and what it expects.

    Args:
        name (`str`): the option's name.
        value (`Any`): the value passed.
        minimum (`int`, *optional*, defaults to 1): the smallest value accepted.
        meaning (`str`, *optional*): what the integer counts (and its default), for the message.
        none_means (`str`, *optional*): accept `None` too, which means this (for the message); by default `None` is
            refused.

    Returns:
        `int | None`: `value`, unchanged.

    Example:
    ```python
    >>> check_integer("batch_size", 64, meaning="patched runs per forward pass")
    64
    >>> check_integer("seed", -1, minimum=0)
    Traceback (most recent call last):
    ValueError: seed=-1: expected an integer >= 0.

    ```
    """
    if value is None and none_means is not None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        accepted = f"None ({none_means}) or " if none_means is not None else ""
        detail = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name}={value!r}: expected {accepted}an integer >= {minimum}{detail}.")
    return value


_REGISTRY: dict[str, AttributionMethod] = {}


def register_method(cls: type[AttributionMethod]) -> type[AttributionMethod]:
    """
    Class decorator: register one instance of `cls` under `cls.name`. A second method of the same name raises a
    ValueError (unregister the first with [`unregister_method`] to replace it on purpose).
    """
    for attribute in ("name", "description", "uses_capture"):
        if not hasattr(cls, attribute):
            raise TypeError(f"{cls.__name__} must define the class attribute {attribute!r} to be registered.")
    if cls.name in _REGISTRY:
        raise ValueError(
            f"An attribution method named {cls.name!r} is already registered ({type(_REGISTRY[cls.name]).__name__}); "
            "choose another name."
        )
    _REGISTRY[cls.name] = cls()
    return cls


def unregister_method(name: str) -> None:
    """Remove a registered method (tests and plugins that replace one); unknown names raise like [`get_method`]."""
    get_method(name)
    del _REGISTRY[name]


def get_method(name: str) -> AttributionMethod:
    """The registered method called `name`; an unknown name raises a ValueError listing the registered ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown method {name!r}: expected one of {sorted(_REGISTRY)}.") from None


def list_methods() -> dict[str, str]:
    """Every registered method: name → one-line description, sorted by name."""
    return {name: _REGISTRY[name].description for name in sorted(_REGISTRY)}
