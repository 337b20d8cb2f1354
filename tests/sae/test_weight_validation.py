"""Damaged SAE weights and configs are refused with errors naming the file, the tensor or field, and the fix."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_fga.sae import SparseAutoencoder, SparseAutoencoderConfig, load_prisma_sae, load_saelens_sae, load_saes
from tests.helpers import tiny_sae
from tests.sae.test_convert import _prisma_config, _saelens_flat, _weights, _write_saelens

NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")


def _saved(tmp_path, **kwargs):
    """A saved hf_fga SAE folder and its weights file."""
    tiny_sae(**kwargs).save_pretrained(tmp_path)
    return tmp_path, tmp_path / "model.safetensors"


def _rewrite(path, change):
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


# ------------------------------------------------------------------------------------------- SparseAutoencoder
@pytest.mark.parametrize("name", NAMES)
def test_missing_tensor_is_refused_not_randomly_initialised(tmp_path, name):
    folder, weights = _saved(tmp_path)
    _rewrite(weights, lambda t: t.pop(name))
    for load in (SparseAutoencoder.from_pretrained, load_saes):
        with pytest.raises(ValueError, match=rf"model\.safetensors lacks the tensor\(s\) \['{name}'\]"):
            load(folder)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_tensor_is_refused(tmp_path, name, value):
    folder, weights = _saved(tmp_path)

    def poison(tensors):
        tensors[name].view(-1)[3] = value

    _rewrite(weights, poison)
    with pytest.raises(ValueError, match=rf"model\.safetensors: tensor {name} has 1 NaN or infinite value"):
        load_saes(folder)


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, "2.0"])
def test_bad_norm_scaling_factor_in_config_json_names_file_and_field(tmp_path, value):
    folder, _ = _saved(tmp_path, normalize_activations="constant_scale", norm_scaling_factor=2.0)
    config = json.loads((folder / "config.json").read_text())
    config["norm_scaling_factor"] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"{folder}.*norm_scaling_factor must be a finite real number > 0"):
        SparseAutoencoder.from_pretrained(folder)


def test_transposed_tensor_is_named_as_transposed(tmp_path):
    folder, weights = _saved(tmp_path)
    _rewrite(weights, lambda t: t.update(W_dec=t["W_dec"].T.contiguous()))
    with pytest.raises(
        ValueError, match=r"tensor W_dec has shape \(32, 128\), expected \(128, 32\); it looks transposed"
    ):
        SparseAutoencoder.from_pretrained(folder)


def test_shape_from_another_config_is_named(tmp_path):
    folder, weights = _saved(tmp_path)
    _rewrite(weights, lambda t: t.update(b_enc=torch.zeros(64)))
    with pytest.raises(
        ValueError, match=r"b_enc has shape \(64,\), expected \(128,\); the config \(d_in=32, d_sae=128\)"
    ):
        load_saes(folder)


def test_truncated_file_is_named(tmp_path):
    folder, weights = _saved(tmp_path)
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match=rf"{weights} is not a readable safetensors file .*truncated or corrupt"):
        SparseAutoencoder.from_pretrained(folder)


def test_intact_sae_still_loads(tmp_path):
    folder, _ = _saved(tmp_path)
    loaded, info = SparseAutoencoder.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"]
    for name, parameter in tiny_sae().named_parameters():
        torch.testing.assert_close(getattr(loaded, name), parameter)


# ------------------------------------------------------------------------------------------------- importers
@pytest.mark.parametrize("name", NAMES)
def test_saelens_missing_tensor(tmp_path, name):
    weights = _weights(tiny_sae(activation="relu"))
    weights.pop(name)
    _write_saelens(tmp_path, _saelens_flat(), weights)
    with pytest.raises(ValueError, match=rf"sae_weights\.safetensors lacks the tensor\(s\) \['{name}'\]"):
        load_saelens_sae(tmp_path)


def test_saelens_non_finite_and_transposed_and_truncated(tmp_path):
    weights = _weights(tiny_sae(activation="relu"))
    weights["b_dec"][0] = math.nan
    _write_saelens(tmp_path / "nan", _saelens_flat(), weights)
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors: tensor b_dec has 1 NaN"):
        load_saelens_sae(tmp_path / "nan")
    weights = _weights(tiny_sae(activation="relu"))
    weights["W_enc"] = weights["W_enc"].T.contiguous()
    _write_saelens(tmp_path / "transposed", _saelens_flat(), weights)
    with pytest.raises(ValueError, match="tensor W_enc has shape .* it looks transposed"):
        load_saelens_sae(tmp_path / "transposed")
    _write_saelens(tmp_path / "cut", _saelens_flat(), _weights(tiny_sae(activation="relu")))
    file = tmp_path / "cut" / "sae_weights.safetensors"
    file.write_bytes(file.read_bytes()[:50])
    with pytest.raises(ValueError, match=rf"{file} is not a readable safetensors file"):
        load_saes(tmp_path / "cut")


def test_saelens_bad_config_value_names_the_file(tmp_path):
    _write_saelens(tmp_path, _saelens_flat(l1_coefficient=math.nan), _weights(tiny_sae(activation="relu")))
    with pytest.raises(ValueError, match=r"cfg\.json: SparseAutoencoderConfig\.l1_coefficient must be a finite"):
        load_saelens_sae(tmp_path)


def test_prisma_missing_tensor_and_nan(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_prisma_config()))
    weights = _weights(tiny_sae(activation="relu", layer=1))
    weights.pop("W_enc")
    save_file(weights, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"w\.safetensors lacks the tensor\(s\) \['W_enc'\]"):
        load_prisma_sae(tmp_path)
    weights = _weights(tiny_sae(activation="relu", layer=1))
    weights["W_dec"][1, 2] = -math.inf
    torch.save(weights, tmp_path / "w.pt")
    (tmp_path / "w.safetensors").unlink()
    with pytest.raises(ValueError, match=r"w\.pt: tensor W_dec has 1 NaN or infinite"):
        load_prisma_sae(tmp_path)


def test_prisma_config_without_a_hook_is_a_clear_error(tmp_path):
    config = _prisma_config()
    for key in ("hook_point", "hook_point_layer", "layer_subtype"):
        config.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(_weights(tiny_sae(activation="relu", layer=1)), str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"config\.json names no hook: expected hook_point_layer and layer_subtype"):
        load_prisma_sae(tmp_path)


def test_prisma_hook_from_the_hook_point_name_alone(tmp_path):
    config = _prisma_config(hook_point="blocks.1.hook_resid_post")
    config.pop("hook_point_layer")
    config.pop("layer_subtype")
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(_weights(tiny_sae(activation="relu", layer=1)), str(tmp_path / "w.safetensors"))
    sae = load_prisma_sae(tmp_path)
    assert sae.config.hook_layer == 1 and sae.config.hook_point == "resid_post"


# --------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("l1_coefficient", math.nan, "must be a finite real number >= 0, got nan"),
        ("l1_coefficient", math.inf, "must be a finite real number >= 0, got inf"),
        ("l1_coefficient", "0.1", r"got '0\.1' \(a str\): pass a number, not a string"),
        ("l1_coefficient", True, r"got True \(a bool\)"),
        ("norm_scaling_factor", 0.0, "must be a finite real number > 0, got 0.0"),
        ("norm_scaling_factor", math.nan, "must be a finite real number > 0, got nan"),
        ("d_in", 16.0, r"must be an integer >= 1, got 16\.0 \(a float\): pass an integer"),
        ("d_sae", "64", r"must be an integer >= 1, got '64' \(a str\)"),
        ("k", True, r"got True \(a bool\)"),
        ("k", 65, r"must be an integer in \[1, 64\]"),
        ("hook_layer", 1.5, "must be an integer >= 0"),
        ("apply_b_dec_to_input", "yes", "must be True or False"),
    ],
)
def test_config_numbers_are_validated(field, value, expected):
    with pytest.raises(ValueError, match=rf"SparseAutoencoderConfig\.{field} .*{expected}"):
        SparseAutoencoderConfig(**{"d_in": 16, "d_sae": 64, "k": 4, field: value})


def test_config_accepts_any_real_numeric_type():
    config = SparseAutoencoderConfig(
        d_in=np.int64(16),
        d_sae=np.int32(64),
        k=np.int16(4),
        hook_layer=np.uint8(2),
        l1_coefficient=np.float32(0.25),
        norm_scaling_factor=np.float64(3.0),
        normalize_activations="constant_scale",
    )
    assert (config.d_in, config.d_sae, config.k, config.hook_layer) == (16, 64, 4, 2)
    assert type(config.d_in) is int and type(config.l1_coefficient) is float
    assert (config.l1_coefficient, config.norm_scaling_factor) == (0.25, 3.0)
    assert json.loads(config.to_json_string())["d_in"] == 16
