"""Importers for Prisma and SAELens SAEs, on files written here in their formats."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hf_fga.sae import load_prisma_sae, load_saelens_sae, load_saes
from tests.helpers import tiny_sae


def _weights(sae):
    return {name: getattr(sae, name).detach().clone() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}


def _assert_same_sae(imported, reference, x):
    torch.testing.assert_close(imported.encode(x), reference.encode(x))
    torch.testing.assert_close(imported(x).reconstruction, reference(x).reconstruction)


def _prisma_config(**overrides):
    cfg = {
        "model_class_name": "HookedViT",
        "model_name": "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K",
        "hook_point": "blocks.1.hook_resid_post",
        "hook_point_layer": 1,
        "layer_subtype": "hook_resid_post",
        "hook_point_head_index": None,
        "d_in": 32,
        "expansion_factor": 4,
        "activation_fn_str": "relu",
        "activation_fn_kwargs": {},
        "normalize_activations": None,
        "l1_coefficient": 1e-4,
        "lr": 1e-4,
        "dataset_path": "imagenet",
        "cls_token_only": False,
    }
    return {**cfg, **overrides}


@pytest.mark.parametrize("weights_format", ["pt", "pt_nested", "safetensors"])
def test_prisma_relu_round_trip(tmp_path, weights_format):
    reference = tiny_sae(activation="relu", layer=1)
    (tmp_path / "config.json").write_text(json.dumps(_prisma_config()))
    if weights_format == "safetensors":
        save_file(_weights(reference), str(tmp_path / "weights.safetensors"))
    elif weights_format == "pt":
        torch.save(_weights(reference), tmp_path / "n_images_1000.pt")
    else:
        torch.save({"state_dict": _weights(reference)}, tmp_path / "n_images_1000.pt")
    sae = load_prisma_sae(tmp_path)
    assert sae.config.hook_layer == 1 and sae.config.hook_point == "resid_post" and sae.config.activation == "relu"
    assert sae.config.d_sae == 128 and sae.config.base_model_name_or_path.startswith("open-clip:")
    _assert_same_sae(sae, reference, torch.randn(6, 32))
    assert list(load_saes(tmp_path)) == [1]  # auto-detected


def test_prisma_topk_layer_norm(tmp_path):
    reference = tiny_sae(activation="topk", k=8, layer=2, normalize_activations="layer_norm")
    cfg = _prisma_config(
        hook_point_layer=[2],
        activation_fn_str="topk",
        activation_fn_kwargs={"k": 8},
        normalize_activations="layer_norm",
    )
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file(_weights(reference), str(tmp_path / "sae.safetensors"))
    sae = load_prisma_sae(tmp_path)
    assert sae.config.k == 8 and sae.config.normalize_activations == "layer_norm" and sae.config.hook_layer == 2
    _assert_same_sae(sae, reference, 2 + 3 * torch.randn(5, 32))


class _Payload:
    """Unpickling this would create a file: proof that the loader executed pickled code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_objects_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_prisma_config()))
    marker = tmp_path / "code_ran"
    weights = _weights(tiny_sae(activation="relu", layer=1))
    torch.save({"cfg": _Payload(marker), "state_dict": weights}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="refuses to unpickle"):
        load_prisma_sae(tmp_path)
    assert not marker.exists()


def test_prisma_non_residual_hook_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_prisma_config(layer_subtype="hook_mlp_out")))
    save_file(_weights(tiny_sae(activation="relu")), str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="hook_mlp_out"):
        load_prisma_sae(tmp_path)


def _saelens_flat(**overrides):
    cfg = {
        "architecture": "standard",
        "d_in": 32,
        "d_sae": 128,
        "dtype": "float32",
        "device": "cpu",
        "model_name": "gpt2-small",
        "hook_name": "blocks.3.hook_resid_pre",
        "hook_layer": 3,
        "hook_head_index": None,
        "activation_fn_str": "relu",
        "activation_fn_kwargs": {},
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "normalize_activations": "none",
        "dataset_path": "Skylion007/openwebtext",
    }
    return {**cfg, **overrides}


def _saelens_nested(**overrides):
    cfg = {
        "d_in": 32,
        "d_sae": 128,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"model_name": "vit-b", "hook_name": "blocks.4.hook_resid_post", "dataset_path": "imagenet"},
        "architecture": "topk",
        "k": 8,
        "rescale_acts_by_decoder_norm": False,
    }
    return {**cfg, **overrides}


def _write_saelens(folder, cfg, weights):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(weights, str(folder / "sae_weights.safetensors"))


def test_saelens_flat_relu(tmp_path):
    reference = tiny_sae(activation="relu", layer=3, hook_point="resid_pre")
    _write_saelens(tmp_path, _saelens_flat(), _weights(reference))
    sae = load_saelens_sae(tmp_path)
    assert (sae.config.hook_layer, sae.config.hook_point, sae.config.activation) == (3, "resid_pre", "relu")
    assert sae.config.training_info["dataset"] == "Skylion007/openwebtext"
    _assert_same_sae(sae, reference, torch.randn(6, 32))


def test_saelens_nested_topk_without_b_dec_on_input(tmp_path):
    reference = tiny_sae(activation="topk", k=8, layer=4, apply_b_dec_to_input=False)
    _write_saelens(tmp_path, _saelens_nested(), _weights(reference))
    sae = load_saelens_sae(tmp_path)
    assert (sae.config.hook_layer, sae.config.k, sae.config.apply_b_dec_to_input) == (4, 8, False)
    assert sae.config.base_model_name_or_path == "vit-b"
    _assert_same_sae(sae, reference, torch.randn(6, 32))


def test_saelens_expected_average_with_factor_becomes_constant_scale(tmp_path):
    reference = tiny_sae(activation="relu", layer=3, normalize_activations="constant_scale", norm_scaling_factor=2.5)
    cfg = _saelens_flat(
        normalize_activations="expected_average_only_in", norm_scaling_factor=2.5, hook_name="blocks.3.hook_resid_post"
    )
    _write_saelens(tmp_path, cfg, _weights(reference))
    sae = load_saelens_sae(tmp_path)
    assert sae.config.normalize_activations == "constant_scale" and sae.config.norm_scaling_factor == 2.5
    _assert_same_sae(sae, reference, torch.randn(6, 32))


def test_saelens_finetuning_scaling_factor_is_folded(tmp_path):
    reference = tiny_sae(activation="relu", layer=3, hook_point="resid_pre")
    weights = _weights(reference)
    scaling = torch.rand(128) + 0.5
    weights["scaling_factor"] = scaling
    _write_saelens(tmp_path, _saelens_flat(finetuning_scaling_factor=True), weights)
    sae = load_saelens_sae(tmp_path)
    x = torch.randn(4, 32)
    f = reference.encode(x)
    torch.testing.assert_close(sae(x).reconstruction, (f * scaling) @ reference.W_dec + reference.b_dec)


@pytest.mark.parametrize(
    "cfg, extra_weights, match",
    [
        (_saelens_nested(architecture="jumprelu"), {"threshold": torch.ones(128)}, "jumprelu"),
        (_saelens_nested(architecture="gated"), {}, "gated"),
        (_saelens_flat(), {"threshold": torch.ones(128)}, "JumpReLU"),
        (_saelens_flat(normalize_activations="constant_norm_rescale"), {}, "constant_norm_rescale"),
        (_saelens_flat(normalize_activations="expected_average_only_in"), {}, "norm_scaling_factor"),
        (_saelens_nested(rescale_acts_by_decoder_norm=True), {}, "rescale_acts_by_decoder_norm"),
        (_saelens_flat(hook_name="blocks.2.attn.hook_z"), {}, "hook_name"),
    ],
)
def test_saelens_unsupported_variants_are_clear_errors(tmp_path, cfg, extra_weights, match):
    _write_saelens(tmp_path, cfg, {**_weights(tiny_sae(activation="relu")), **extra_weights})
    with pytest.raises(ValueError, match=match):
        load_saelens_sae(tmp_path)


def test_shape_mismatch_names_the_weight(tmp_path):
    _write_saelens(tmp_path, _saelens_flat(d_sae=64), _weights(tiny_sae(activation="relu")))
    with pytest.raises(ValueError, match="W_enc has shape"):
        load_saelens_sae(tmp_path)


def test_missing_weights_file(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps(_saelens_flat()))
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors"):
        load_saelens_sae(tmp_path)
