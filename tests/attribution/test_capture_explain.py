"""One capture, many maps: `explain` on one `capture` equals separate `attribute` calls, for every configuration."""

from __future__ import annotations

import ast
import contextlib
import inspect

import pytest
import torch

import hf_fga.evaluation.attribution_grid as attribution_grid
from hf_fga.attribution import Attributor, Capture
from tests.attribution.tiny_models import clip_label_inputs, tiny_deit
from tests.helpers import pixel_batch, tiny_clip, tiny_sae, tiny_vit

CONFIGURATIONS = [
    dict(method="transmm"),
    dict(method="rollout"),
    dict(method="raw-attention"),
    dict(method="fga"),
    dict(method="fga", variant="combined", layers=[0], kappa=1.0, cmax=50.0),
    dict(method="fga", variant="activation", layers=[0, 1]),
    dict(method="fga", variant="gradient", layers=[1], kappa=0.1),
    dict(method="fga", variant="no-sae", layers=[0, 1], return_diagnostics=True),
    dict(method="fga", variant="shuffled", shuffle_seed=3, return_contributions=True, num_contributions=4),
    dict(method="fga", variant="centered", return_diagnostics=True, return_contributions=True),
    dict(method="fga", variant="mean-centered", layers=[1], cmax=2.0),
]


def _assert_outputs_equal(a, b) -> None:
    for name in ("attribution", "baseline", "logits", "probabilities", "target"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, msg=name)
    assert a.grid == b.grid
    for name in ("scores", "gates"):
        assert getattr(a, name).keys() == getattr(b, name).keys()
        for block, value in getattr(a, name).items():
            torch.testing.assert_close(value, getattr(b, name)[block], rtol=0, atol=0)
    assert (a.diagnostics is None) == (b.diagnostics is None)
    for block, terms in (a.diagnostics or {}).items():
        for key, value in terms.items():
            torch.testing.assert_close(value, b.diagnostics[block][key], rtol=0, atol=0, equal_nan=True)
    assert (a.contributions is None) == (b.contributions is None)
    for block, (values, indices) in (a.contributions or {}).items():
        torch.testing.assert_close(values, b.contributions[block][0], rtol=0, atol=0)
        assert torch.equal(indices, b.contributions[block][1])


@pytest.fixture(scope="module")
def attr():
    model = tiny_vit(num_layers=4)  # blocks 0, 1 are not degenerate
    saes = {0: tiny_sae(layer=0, seed=1), 1: tiny_sae(layer=1, seed=2, activation="relu", hook_point="resid_pre")}
    return Attributor(model, saes, mean_residuals={1: torch.linspace(-0.1, 0.1, 32)})


def test_one_capture_explains_every_configuration_as_attribute_does(attr):
    pixels, target = pixel_batch(3, seed=5), torch.tensor([0, 2, 1])
    capture = attr.capture(pixels, target=target)
    assert isinstance(capture, Capture) and capture.hook_points == {0: "resid_post", 1: "resid_pre"}
    for options in CONFIGURATIONS:
        _assert_outputs_equal(attr.explain(capture, **options), attr.attribute(pixels, target=target, **options))
    # and again, in another order: explain never changes the capture's inputs
    for options in reversed(CONFIGURATIONS):
        _assert_outputs_equal(attr.explain(capture, **options), attr.attribute(pixels, target=target, **options))


@pytest.mark.parametrize("family", ["deit", "clip"])
def test_capture_and_explain_for_deit_and_clip(family):
    model = tiny_deit(seed=2) if family == "deit" else tiny_clip(seed=3)
    attr = Attributor(model, {1: tiny_sae(layer=1)})
    text = clip_label_inputs(model)[1] if family == "clip" else None
    pixels = pixel_batch(2, seed=2)
    capture = attr.capture(pixels, text_embeds=text)
    for options in (dict(method="transmm"), dict(method="fga", kappa=2.0), dict(method="fga", variant="no-sae")):
        _assert_outputs_equal(attr.explain(capture, **options), attr.attribute(pixels, text_embeds=text, **options))


def test_capture_runs_one_forward_pass(attr):
    attr.capture(pixel_batch(1))  # the first call on a model also checks its oneDNN linears (one-time)
    calls = []
    handle = attr.model.vit.register_forward_hook(lambda *args: calls.append(1))
    try:
        capture = attr.capture(pixel_batch(2))
        for kappa in (0.1, 0.5, 1.0, 2.0):
            attr.explain(capture, kappa=kappa)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_explain_names_the_hook_points_a_capture_lacks(attr):
    capture = attr.capture(pixel_batch(1), hook_points=[0])
    assert capture.hook_points == {0: "resid_post"}
    attr.explain(capture, layers=[0])
    with pytest.raises(ValueError, match=r"reads \{1: 'resid_pre'\}: capture with hook_points=\{1: 'resid_pre', 0"):
        attr.explain(capture, layers=[0, 1])
    with pytest.raises(ValueError, match=r"Block 7 in hook_points is out of range"):
        attr.capture(pixel_batch(1), hook_points=[7])
    with pytest.raises(ValueError, match=r"hook_points\[0\] must be one of"):
        attr.capture(pixel_batch(1), hook_points={0: "mlp_out"})


def test_backward_context_is_entered_around_the_pass(attr):
    seen = []

    @contextlib.contextmanager
    def halve_gradients(model):
        """A backward-only change: the gradient leaving the classifier head is halved (exactly, in floating point)."""

        def halve(module, args, output):
            output.register_hook(lambda grad: 0.5 * grad)

        handle = model.classifier.register_forward_hook(halve)
        seen.append(model)
        try:
            yield
        finally:
            handle.remove()
            seen.append("exit")

    pixels = pixel_batch(2)
    plain = attr.capture(pixels)
    changed = attr.capture(pixels, backward_context=halve_gradients)
    assert seen == [attr.model, "exit"] and not attr.model.classifier._forward_hooks
    torch.testing.assert_close(changed.logits, plain.logits, rtol=0, atol=0)  # the forward pass is unchanged
    for a, b in zip(changed.attention_grads, plain.attention_grads, strict=True):
        torch.testing.assert_close(a, 0.5 * b, rtol=0, atol=0)
    for key, value in plain.residual_grads.items():
        torch.testing.assert_close(changed.residual_grads[key], 0.5 * value, rtol=0, atol=0)


def test_attribution_grid_uses_only_the_public_api():
    """No `._name` attribute access and no import of a private name in hf_fga/evaluation/attribution_grid.py."""
    tree = ast.parse(inspect.getsource(attribution_grid))
    private = [
        node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr.startswith("_")
    ] + [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert private == []
