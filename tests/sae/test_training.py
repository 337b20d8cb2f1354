"""End-to-end tests of the SAE training harness on a tiny random ViT and an in-memory dataset."""

import json
import os

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessorPil

import hf_fga.sae.trainer as trainer
import hf_fga.sae.training as training
from hf_fga.sae import load_saes
from hf_fga.sae.activations import residual_activations, select_tokens, shuffled_batches
from hf_fga.sae.training import SaeTrainingArguments, evaluate_sae, geometric_median, sae_training_loss, train_saes
from tests.helpers import IMAGE_SIZE, PATCH, pixel_batch, tiny_clip, tiny_sae, tiny_vit


def _dataset(n: int = 60, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)) for _ in range(n)]
    return datasets.Dataset.from_dict({"img": images}).cast_column("img", datasets.Image())


def _processor() -> ViTImageProcessorPil:
    return ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def _args(tmp_path, name: str, **overrides) -> SaeTrainingArguments:
    base = dict(
        model_name_or_path="tiny-vit",
        output_dir=str(tmp_path / name),
        image_column="img",
        blocks=[0, 2],
        expansion_factor=4,
        k=4,
        batch_size=64,
        epochs=2,
        warmup_steps=3,
        lr=1e-2,
        harvest_batch_size=16,
        shard_tokens=100,
        buffer_shards=2,
        checkpoint_every=4,
        log_every=5,
        dead_tokens=256,
        seed=3,
    )
    return SaeTrainingArguments(**{**base, **overrides})


def test_train_saves_a_loadable_set_with_cards_and_metrics(tmp_path):
    args = _args(tmp_path, "run")
    saes = train_saes(args, model=tiny_vit(), dataset=_dataset(), image_processor=_processor())
    assert sorted(saes) == [0, 2]
    out = tmp_path / "run"
    loaded = load_saes(out)
    assert sorted(loaded) == [0, 2]
    for block, sae in loaded.items():
        assert sae.config.hook_layer == block and sae.config.hook_point == "resid_post"
        for name, p in saes[block].named_parameters():
            torch.testing.assert_close(getattr(sae, name), p)
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(sae.config.d_sae))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"0", "2"}
    for m in metrics.values():
        assert 0 < m["explained_variance"] <= 1 and m["l0"] <= 4 and 0 <= m["dead_fraction"] <= 1
    card = (out / "block_2" / "README.md").read_text()
    assert "library_name: hf_fga" in card and f"{metrics['2']['explained_variance']:.4f}" in card
    assert f"{metrics['2']['training_tokens']:,}" in card and "seed | 3" in card
    assert "| 2 |" in (out / "metrics.md").read_text()


def test_explained_variance_rises_with_training(tmp_path):
    data = _dataset()
    short = train_saes(_args(tmp_path, "short", epochs=0.05, blocks=[1]), tiny_vit(), data, _processor())
    long = train_saes(_args(tmp_path, "long", epochs=3, blocks=[1]), tiny_vit(), data, _processor())
    ev_short = short[1].config.training_info["metrics"]["explained_variance"]
    ev_long = long[1].config.training_info["metrics"]["explained_variance"]
    assert ev_long > ev_short + 0.05


def test_resume_after_interruption_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    data = _dataset()
    reference = train_saes(_args(tmp_path, "ref"), tiny_vit(), data, _processor())

    calls = {"n": 0}
    original = trainer.normalize_decoder

    def interrupt_at_block2_step9(sae):
        original(sae)
        calls["n"] += 1
        if calls["n"] == 28 + 9:  # 28 steps per block: block 2, step 9; its last checkpoint is at step 8
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "normalize_decoder", interrupt_at_block2_step9)
    with pytest.raises(KeyboardInterrupt):
        train_saes(_args(tmp_path, "resumed"), tiny_vit(), data, _processor())
    monkeypatch.setattr(trainer, "normalize_decoder", original)
    resumed = train_saes(_args(tmp_path, "resumed"), tiny_vit(), data, _processor())
    for block in (0, 2):
        for name, p in reference[block].named_parameters():
            assert torch.equal(getattr(resumed[block], name), p), (block, name)
        assert reference[block].config.training_info["metrics"] == resumed[block].config.training_info["metrics"]


def test_relu_training_and_clip_harvest(tmp_path):
    args = _args(tmp_path, "clip", activation="relu", l1_coefficient=1e-3, blocks=[1], hook_point="resid_pre")
    saes = train_saes(args, model=tiny_clip(), dataset=_dataset(), image_processor=_processor())
    sae = saes[1]
    assert sae.config.activation == "relu" and sae.config.hook_point == "resid_pre"
    assert sae.config.training_info["metrics"]["explained_variance"] > 0


def test_residual_activations_match_hidden_states():
    model = tiny_vit(num_layers=3)
    pixels = pixel_batch(2)
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states
    before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.vit.layers]
    got = residual_activations(model, pixels, [0, 2], "resid_post", "patches")
    torch.testing.assert_close(got[0], hidden[1][:, 1:].reshape(-1, 32))
    torch.testing.assert_close(got[2], hidden[3][:, 1:].reshape(-1, 32))
    pre = residual_activations(model, pixels, [1], "resid_pre", "all")
    torch.testing.assert_close(pre[1], hidden[1].reshape(-1, 32))
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.vit.layers] == before


def test_select_tokens_skips_extra_prefix_tokens():
    hidden = torch.arange(2 * 18 * 3, dtype=torch.float32).reshape(2, 18, 3)  # CLS + distillation + 16 patches
    pixels = torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.equal(select_tokens(hidden, pixels, PATCH, "patches"), hidden[:, 2:].reshape(-1, 3))
    assert torch.equal(select_tokens(hidden, pixels, PATCH, "cls"), hidden[:, 0])


def test_shuffled_batches_cover_each_row_once(tmp_path):
    from safetensors.torch import save_file

    files = []
    for i, n in enumerate([10, 7, 13]):
        path = tmp_path / f"s{i}.safetensors"
        save_file({"activations": torch.arange(n, dtype=torch.float32)[:, None] + 100 * i}, str(path))
        files.append(path)
    batches = list(shuffled_batches(files, 4, seed=1, epoch=0, buffer_shards=2))
    assert len(batches) == 30 // 4
    rows = torch.cat(batches).flatten().tolist()
    assert len(set(rows)) == len(rows)
    again = list(shuffled_batches(files, 4, seed=1, epoch=0, buffer_shards=2))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    other = torch.cat(list(shuffled_batches(files, 4, seed=1, epoch=1, buffer_shards=2))).flatten().tolist()
    assert other != rows


def test_training_loss_matches_direct_formula_float64():
    sae = tiny_sae(k=8).double()
    x = torch.randn(16, 32, dtype=torch.float64)
    dead = torch.zeros(128, dtype=torch.bool)
    dead[:40] = True
    stats = sae_training_loss(sae, x, dead, aux_k=16, aux_coefficient=0.5)
    f = sae.encode(x)
    x_hat = f @ sae.W_dec + sae.b_dec
    mse = (x - x_hat).pow(2).sum(-1).mean()
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    dead_pre = pre.masked_fill(~dead, float("-inf"))
    top = dead_pre.topk(16, dim=-1)
    aux_f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    aux = ((x - x_hat) - aux_f @ sae.W_dec).pow(2).sum(-1).mean()
    torch.testing.assert_close(stats.loss, mse + 0.5 * min(1.0, 40 / 16) * aux)
    torch.testing.assert_close(stats.l0, (f > 0).sum(-1).double().mean().to(stats.l0.dtype))


def test_decoder_gradient_projection_keeps_rows_on_the_sphere():
    sae = tiny_sae()
    sae.W_dec.data /= sae.W_dec.data.norm(dim=-1, keepdim=True)
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    training.project_decoder_gradient(sae)
    assert (sae.W_dec.grad * sae.W_dec).sum(-1).abs().max() < 1e-5


def test_geometric_median_is_robust_to_outliers():
    points = torch.cat([torch.zeros(50, 3) + torch.randn(50, 3) * 0.01, torch.full((5, 3), 1000.0)])
    assert geometric_median(points).norm() < 0.1


def test_evaluate_sae_matches_direct_figures(tmp_path):
    from safetensors.torch import save_file

    sae = tiny_sae(k=8)
    x = torch.randn(50, 32)
    save_file({"activations": x}, str(tmp_path / "a.safetensors"))
    m = evaluate_sae(sae, [tmp_path / "a.safetensors"], max_tokens=1000, chunk=7)
    f = sae.encode(x.double().float())
    x_hat = sae(x).reconstruction
    ev = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert m["explained_variance"] == pytest.approx(ev.item(), rel=1e-5)
    assert m["l0"] == pytest.approx((f > 0).sum(-1).float().mean().item())
    assert m["dead_fraction"] == pytest.approx(1 - (f > 0).any(0).float().mean().item())
    assert m["cosine_similarity"] == pytest.approx(torch.cosine_similarity(x, x_hat, dim=-1).mean().item(), rel=1e-5)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(activation="gelu"), "activation"),
        (dict(batch_size=0), "batch_size"),
        (dict(eval_fraction=1.5), "eval_fraction"),
        (dict(normalize_activations="layer_norm"), "normalize_activations"),
    ],
)
def test_arguments_are_validated(tmp_path, overrides, field):
    with pytest.raises(ValueError, match=field):
        _args(tmp_path, "bad", **overrides)


def test_bad_blocks_and_columns_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="out of range"):
        train_saes(_args(tmp_path, "b", blocks=[7]), tiny_vit(), _dataset(8), _processor())
    with pytest.raises(ValueError, match="no column 'img'"):
        train_saes(_args(tmp_path, "c"), tiny_vit(), _dataset(8).rename_column("img", "x"), _processor())


def test_script_help_runs():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "scripts/train_sae.py", "--help"], capture_output=True, text=True, check=True
    )
    assert "--model_name_or_path" in out.stdout and "--blocks" in out.stdout


@pytest.mark.parametrize("activation", ["topk", "relu"])
@pytest.mark.parametrize("with_aux", [False, True])
def test_training_gradients_equal_plain_autograd_float64(activation, with_aux):
    sae = tiny_sae(activation=activation, k=8, l1_coefficient=0.01).double()
    x = torch.randn(16, 32, dtype=torch.float64)
    dead = torch.zeros(128, dtype=torch.bool)
    if with_aux:
        dead[::3] = True
    stats = sae_training_loss(sae, x, dead, aux_k=16, aux_coefficient=0.5)
    stats.loss.backward()
    fast = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    f = torch.relu(pre)
    if activation == "topk":
        keep = pre.topk(8, dim=-1).indices
        f = torch.zeros_like(f).scatter(-1, keep, f.gather(-1, keep))
    x_hat = f @ sae.W_dec + sae.b_dec
    loss = (x - x_hat).pow(2).sum(-1).mean()
    if activation == "relu":
        loss = loss + 0.01 * f.sum(-1).mean()
    if with_aux:
        top = pre.masked_fill(~dead, float("-inf")).topk(16, dim=-1)
        aux_f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        loss = loss + 0.5 * ((x - x_hat).detach() - aux_f @ sae.W_dec).pow(2).sum(-1).mean()
    torch.testing.assert_close(stats.loss, loss)
    loss.backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, msg=name)


def test_resume_with_other_settings_is_refused(tmp_path, monkeypatch):
    data = _dataset()
    original = trainer.normalize_decoder
    calls = {"n": 0}

    def interrupt(sae):
        original(sae)
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "normalize_decoder", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_saes(_args(tmp_path, "run"), tiny_vit(), data, _processor())
    monkeypatch.setattr(trainer, "normalize_decoder", original)
    with pytest.raises(ValueError, match=r"other settings \(\['k'\]\)"):
        train_saes(_args(tmp_path, "run", k=6), tiny_vit(), data, _processor())


def test_interrupted_harvest_is_redone_from_scratch(tmp_path):
    args = _args(tmp_path, "h", blocks=[1], epochs=0.2)
    stale = args.cache_path / "block_1" / "train" / "r001_000000.safetensors"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"partial")
    train_saes(args, tiny_vit(), _dataset(), _processor())
    assert not stale.exists()


class _Payload:
    """Unpickling this runs `os.system`, which creates a marker file: proof that the loader executed pickled code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "payload_ran"
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"settings": _Payload(marker), "done": {}}, tmp_path / "run" / "checkpoints" / "checkpoint.pt")
    with pytest.raises(ValueError, match="checkpoint.pt holds Python objects that hf_fga refuses to unpickle"):
        train_saes(_args(tmp_path, "run", blocks=[0]), tiny_vit(), _dataset(20), _processor())
    assert not marker.exists()
