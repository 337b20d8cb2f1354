import pytest
import torch
from transformers import AutoConfig, AutoModel

import hf_fga
from hf_fga import SparseAutoencoder, SparseAutoencoderConfig
from tests.helpers import tiny_sae


def test_parameter_names_and_shapes():
    sae = SparseAutoencoder(SparseAutoencoderConfig(d_in=16, d_sae=48, k=4))
    shapes = {n: tuple(p.shape) for n, p in sae.named_parameters()}
    assert shapes == {"W_enc": (16, 48), "b_enc": (48,), "W_dec": (48, 16), "b_dec": (16,)}
    # Gao et al. init: unit-norm decoder rows, encoder = decoder transpose.
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(48))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)


@pytest.mark.parametrize("activation", ["relu", "topk"])
def test_encode_decode_match_formula_float64(activation):
    sae = tiny_sae(activation=activation, k=8, l1_coefficient=0.01).double()
    x = torch.randn(5, 32, dtype=torch.float64)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    f = torch.relu(pre)
    if activation == "topk":
        keep = f.topk(8, dim=-1).indices
        f = torch.zeros_like(f).scatter(-1, keep, f.gather(-1, keep))
    torch.testing.assert_close(sae.encode(x), f)
    out = sae(x)
    x_hat = f @ sae.W_dec + sae.b_dec
    torch.testing.assert_close(out.reconstruction, x_hat)
    torch.testing.assert_close(out.mse_loss, ((x - x_hat) ** 2).sum(-1).mean())
    torch.testing.assert_close(out.loss, out.mse_loss + 0.01 * f.abs().sum(-1).mean())


def test_sparse_decode_equals_dense():
    sae = tiny_sae(k=8)
    x = torch.randn(2, 7, 32)
    values, indices = sae.encode_topk(x)
    torch.testing.assert_close(sae.decode_sparse(values, indices) + sae.b_dec, sae.decode(sae.encode(x)))


def test_constant_scale_folds_into_decoder():
    sae = tiny_sae(normalize_activations="constant_scale", norm_scaling_factor=4.0).double()
    x = torch.randn(6, 32, dtype=torch.float64)
    f = sae.encode(x)
    x_hat = f @ sae.decoder_in_residual_space() + sae.decoder_bias_in_residual_space()
    torch.testing.assert_close(x_hat, sae(x).reconstruction)


def test_layer_norm_round_trip_in_residual_space():
    sae = tiny_sae(normalize_activations="layer_norm", activation="relu").double()
    x = 3 + 5 * torch.randn(4, 32, dtype=torch.float64)
    out = sae(x)
    assert out.reconstruction.shape == x.shape
    assert (out.reconstruction.mean(-1) - x.mean(-1)).abs().max() < 2.0


def test_wrong_width_is_a_clear_error():
    sae = tiny_sae()
    with pytest.raises(ValueError, match="d_in=32"):
        sae.encode(torch.randn(3, 31))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(activation="gelu"), "activation"),
        (dict(hook_point="attn_out"), "hook_point"),
        (dict(token_scope="everything"), "token_scope"),
        (dict(k=0), "k"),
        (dict(d_in=-1), "d_in"),
        (dict(l1_coefficient=-1.0), "l1_coefficient"),
        (dict(hook_layer=-2), "hook_layer"),
        (dict(normalize_activations="batch"), "normalize_activations"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    base = dict(d_in=16, d_sae=32, k=4)
    with pytest.raises(ValueError, match=field):
        SparseAutoencoderConfig(**{**base, **kwargs})


def test_save_and_auto_load_round_trip(tmp_path):
    sae = tiny_sae(layer=2)
    sae.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SparseAutoencoderConfig)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, SparseAutoencoder) and loaded.config.hook_layer == 2
    for name, p in sae.named_parameters():
        torch.testing.assert_close(getattr(loaded, name), p)


def test_import_twice_is_harmless():
    hf_fga._register()
    hf_fga._register()
