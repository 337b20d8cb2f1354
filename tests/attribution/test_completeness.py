"""The completeness error (method.md §8) against a direct float64 computation, its exactness on affine models, and
the `completeness` evaluate module."""

from __future__ import annotations

import evaluate
import pytest
import torch
from torch import nn

from hf_fga.attribution.completeness import (
    bias_like_parameters,
    completeness_error,
    completeness_terms,
    model_completeness_terms,
)
from hf_fga.metrics import metric_path
from tests.attribution import direct_methods as direct
from tests.attribution.test_own_pass_methods import MODELS64
from tests.attribution.test_restore import assert_same, snapshot
from tests.helpers import pixel_batch, tiny_vit

# Written out per architecture from method.md §8 (biases, LayerNorm β, position embeddings, CLS/distillation token).
EXTRA_BIAS_LIKE = {
    "vit": ["vit.embeddings.cls_token", "vit.embeddings.position_embeddings"],
    "deit": ["deit.embeddings.cls_token", "deit.embeddings.distillation_token", "deit.embeddings.position_embeddings"],
    "clip": [
        "vision_model.embeddings.class_embedding",
        "vision_model.embeddings.position_embedding.weight",
        "text_model.embeddings.position_embedding.weight",  # unused with precomputed text embeddings: 0 gradient
    ],
}


@pytest.mark.parametrize("kind", range(len(MODELS64)), ids=[m[0] for m in MODELS64])
def test_matches_direct_float64(kind):
    name, model, text_embeds = MODELS64[kind]
    names = [n for n, _ in model.named_parameters() if n.endswith(".bias")] + EXTRA_BIAS_LIKE[name]
    assert sorted(bias_like_parameters(model)) == sorted(names)
    pixels = pixel_batch(2, seed=11).double()
    target = torch.tensor([1, 0])
    terms = model_completeness_terms(model, pixels, target, text_embeds)
    for b in range(2):
        y, input_term, bias_term = direct.completeness_terms(model, pixels[b], int(target[b]), names, text_embeds)
        assert terms["scores"][b].item() == pytest.approx(y, rel=1e-12)
        assert terms["input_terms"][b].item() == pytest.approx(input_term, rel=1e-9, abs=1e-14)
        assert terms["bias_terms"][b].item() == pytest.approx(bias_term, rel=1e-9, abs=1e-14)
        assert terms["errors"][b].item() == pytest.approx(abs(y - input_term - bias_term) / abs(y), rel=1e-9)
    # plain gradients of a ViT are far from complete
    assert (terms["errors"] > 1e-3).all()


def test_affine_objective_is_complete():
    """y = w·x + b is homogeneous of degree 1 in (x, b): the error is 0 to float64 rounding."""
    torch.manual_seed(0)
    layer = nn.Linear(3 * 8 * 8, 1).double()
    pixels = torch.randn(3, 3, 8, 8, dtype=torch.float64)

    def objective(pixel_values, rows):
        return layer(pixel_values.flatten(1))[:, 0]

    terms = completeness_terms(objective, pixels, {"bias": layer.bias})
    assert (terms["errors"] < 1e-12).all()
    assert (terms["bias_terms"] == layer.bias.detach().expand(3)).all()


def test_model_restored_and_backward_context_entered():
    model = tiny_vit(num_layers=2)
    model.train()
    before = snapshot(model)
    entered = []

    def context(m):
        entered.append(m)
        return torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)

    model_completeness_terms(model, pixel_batch(2), backward_context=context)
    assert entered == [model]
    assert_same(before, snapshot(model))


def test_evaluate_module_matches_library():
    _, model, _ = MODELS64[0]
    terms = model_completeness_terms(model, pixel_batch(3, seed=12).double())
    module = evaluate.load(metric_path("completeness"))
    result = module.compute(
        **{k: terms[k].tolist() for k in ("scores", "input_terms", "bias_terms")}, return_per_image=True
    )
    assert result["completeness_per_image"] == pytest.approx(terms["errors"].tolist(), rel=1e-12)
    assert result["completeness"] == pytest.approx(terms["errors"].mean().item(), rel=1e-12)


def test_evaluate_module_rejects_bad_input():
    module = evaluate.load(metric_path("completeness"))
    with pytest.raises(ValueError, match="exactly 0"):
        module.compute(scores=[1.0, 0.0], input_terms=[0.0, 0.0], bias_terms=[0.0, 0.0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        module.compute(scores=[1.0], input_terms=[float("nan")], bias_terms=[0.0])
    with pytest.raises(ValueError, match="exactly 0"):
        completeness_error(torch.zeros(1), torch.zeros(1), torch.zeros(1))
