"""
The method registry: every attribution method is one [`AttributionMethod`] subclass in its own file, registered by
name with [`register_method`]; the engine ([`Attributor`]) looks methods up by name and never branches on names.

A method either derives its map from the shared [`Capture`] (one forward + one backward pass, `uses_capture = True`:
TransMM, FGA, rollout, raw attention) or runs its own passes (`uses_capture = False`: integrated gradients, CAAP, …).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

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
