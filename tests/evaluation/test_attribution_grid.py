import torch

from hf_fga.attribution import FeatureGradientAttribution
from hf_fga.evaluation.attribution_grid import attribute_configurations
from hf_fga.evaluation.configuration import expand_grid
from tests.helpers import pixel_batch, tiny_sae, tiny_vit

VARIANTS = ["combined", "activation", "gradient", "no-sae", "shuffled", "centered", "mean-centered"]


def _attribution():
    model = tiny_vit(num_layers=4)  # blocks 0, 1 are not degenerate (not L-2 or L-1)
    saes = {0: tiny_sae(layer=0), 1: tiny_sae(layer=1, seed=1, activation="relu")}
    means = {0: torch.linspace(-0.1, 0.1, 32), 1: torch.full((32,), 0.05)}
    return FeatureGradientAttribution(model, saes, mean_residuals=means)


def test_every_configuration_equals_its_own_attribute_call():
    attr = _attribution()
    grid = expand_grid(["fga", "rollout", "raw-attention"], VARIANTS, [(0, 1)], [0.5], [10.0])
    pixel_values = pixel_batch(3)
    out = attribute_configurations(attr, pixel_values, grid)
    assert set(out.maps) == {c.key for c in grid}
    for configuration in grid:
        kwargs = {"method": configuration.method}
        if configuration.is_gated:
            kwargs.update(
                variant=configuration.variant,
                layers=list(configuration.layers),
                kappa=configuration.kappa,
                cmax=configuration.cmax,
            )
        expected = attr.attribute(pixel_values, **kwargs)
        torch.testing.assert_close(out.maps[configuration.key], expected.attribution, rtol=0, atol=0)
    reference = attr.attribute(pixel_values, variant="combined", layers=[0, 1], return_diagnostics=True)
    torch.testing.assert_close(out.logits, reference.logits)
    assert torch.equal(out.target, reference.target)
    for block in (0, 1):
        for key, value in reference.diagnostics[block].items():
            torch.testing.assert_close(out.diagnostics[block][key], value)


def test_one_forward_pass_for_the_whole_grid():
    attr = _attribution()
    grid = expand_grid(["fga", "rollout"], ["combined", "centered"], [(0,), (1,), (0, 1)], [0.5, 1.0], [2.0])
    # the first call on a model also checks its oneDNN linears against the stock forward (hf_fga.onednn.check_once)
    attribute_configurations(attr, pixel_batch(1), grid[:1])
    calls = []
    handle = attr.model.vit.register_forward_hook(lambda *args: calls.append(1))
    attribute_configurations(attr, pixel_batch(2), grid)
    handle.remove()
    assert len(grid) == 14 and len(calls) == 1


def test_default_layers_and_label_targets():
    attr = _attribution()
    grid = expand_grid(["fga"], ["combined"])  # layers (): every block with an SAE
    pixel_values = pixel_batch(2)
    target = torch.tensor([2, 0])
    out = attribute_configurations(attr, pixel_values, grid, target=target)
    expected = attr.attribute(pixel_values, target=target)
    torch.testing.assert_close(out.maps[grid[1].key], expected.attribution, rtol=0, atol=0)
    assert out.hook_points == {0: "resid_post", 1: "resid_post"} and torch.equal(out.target, target)
