"""The `feature-gradient-attribution` pipeline on tiny local models (nothing is downloaded)."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessorPil, pipeline

import hf_fga  # noqa: F401  (registers the task)
from hf_fga.attribution import FeatureGradientAttribution
from tests.helpers import IMAGE_SIZE, tiny_clip, tiny_clip_tokenizer, tiny_sae, tiny_vit

BLOCKS = (1, 2)


def _hook_ids(module) -> tuple:
    return tuple(tuple(d) for d in (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks))


def _no_tensors(value) -> bool:
    if isinstance(value, torch.Tensor):
        return False
    if isinstance(value, dict):
        return all(_no_tensors(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_no_tensors(v) for v in value)
    return True


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_vit")
    model = tiny_vit(num_layers=5)  # blocks 1 and 2 are far from the degenerate last two (method.md §3)
    model.config._name_or_path = "tiny-vit"
    model.save_pretrained(path)
    ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sae_dirs(tmp_path_factory):
    dirs = []
    for block in BLOCKS:
        path = tmp_path_factory.mktemp(f"sae_block_{block}")
        tiny_sae(layer=block, seed=block).save_pretrained(path)
        dirs.append(path)
    return dirs


@pytest.fixture(scope="module")
def explain(vit_dir, sae_dirs):
    return pipeline("feature-gradient-attribution", model=str(vit_dir), sae=[str(d) for d in sae_dirs])


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 3 * i, 36, 3), dtype=np.uint8)) for i in range(5)]


def test_output_schema_plain_python(explain, images):
    out = explain(images[0])
    assert set(out) >= {"label", "score", "attribution", "baseline", "gates", "top_features", "overlay"}
    assert out["label"] in {"class_0", "class_1", "class_2"}
    assert isinstance(out["score"], float) and 0 < out["score"] <= 1
    assert out["attribution"].dtype == np.float32 and out["attribution"].shape == (4, 4)
    assert out["baseline"].shape == (4, 4)
    assert sorted(out["gates"]) == list(BLOCKS)
    for gate in out["gates"].values():
        assert gate.shape == (4, 4) and (gate >= 0.1 - 1e-6).all() and (gate <= 10 + 1e-5).all()
    for block in BLOCKS:
        feats = out["top_features"][block]
        assert feats and all(f["sign"] in ("amplifier", "suppressor") for f in feats)
        assert all((f["contribution"] > 0) == (f["sign"] == "amplifier") for f in feats)
        assert [abs(f["contribution"]) for f in feats] == sorted((abs(f["contribution"]) for f in feats), reverse=True)
    assert isinstance(out["overlay"], Image.Image) and out["overlay"].size == images[0].size
    assert _no_tensors(out)


def test_matches_attribute_api(explain, vit_dir, images):
    out = explain(images[1], kappa=1.0, cmax=50.0)
    pixel_values = explain.image_processor(images=images[1], return_tensors="pt")["pixel_values"]
    direct = FeatureGradientAttribution(explain.model, explain.saes).attribute(pixel_values, kappa=1.0, cmax=50.0)
    np.testing.assert_allclose(out["attribution"], direct.attribution[0].numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["baseline"], direct.baseline[0].numpy(), rtol=1e-5, atol=1e-7)


def test_batches_equal_singles(explain, images):
    batched = explain(images, batch_size=3)
    singles = [explain(image) for image in images]
    assert len(batched) == 5
    for a, b in zip(batched, singles, strict=True):
        assert a["label"] == b["label"]
        np.testing.assert_allclose(a["attribution"], b["attribution"], rtol=1e-5, atol=1e-8)
        for block in BLOCKS:
            np.testing.assert_allclose(a["gates"][block], b["gates"][block], rtol=1e-5, atol=1e-7)


def test_input_kinds(explain, images, tmp_path):
    path = tmp_path / "x.png"
    images[0].save(path)
    by_path = explain(str(path))
    by_array = explain(np.asarray(images[0]))
    np.testing.assert_allclose(by_path["attribution"], by_array["attribution"], rtol=1e-6)
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"image": images[:2]}).cast_column("image", datasets.Image())
    from_column = explain(ds["image"])
    assert len(from_column) == 2
    np.testing.assert_allclose(from_column[0]["attribution"], by_path["attribution"], rtol=1e-6)


def test_grayscale_rgba_16bit_images_work(explain):
    rng = np.random.default_rng(1)
    gray = Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), mode="L")
    rgba = Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), mode="RGBA")
    sixteen = Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16))
    for image in (gray, rgba, sixteen, np.asarray(sixteen)):
        assert explain(image)["attribution"].shape == (4, 4)


def test_target_by_label_and_index(explain, images):
    by_name = explain(images[0], target="class_2")
    by_index = explain(images[0], target=2)
    assert by_name["label"] == by_index["label"] == "class_2" and by_name["target"] == 2
    np.testing.assert_allclose(by_name["attribution"], by_index["attribution"])


def test_methods_and_variants(explain, images):
    transmm = explain(images[0], method="transmm")
    np.testing.assert_allclose(transmm["attribution"], transmm["baseline"], rtol=1e-6)
    assert transmm["gates"] == {} and transmm["top_features"] == {}
    for variant in ("activation", "gradient", "no-sae", "shuffled", "centered"):
        out = explain(images[0], variant=variant)
        assert out["attribution"].shape == (4, 4) and sorted(out["gates"]) == list(BLOCKS)
    picked = explain(images[0], layers=[2])
    assert sorted(picked["gates"]) == [2]


def test_layers_picks_blocks_out_of_the_set(vit_dir, sae_dirs):
    explain = pipeline("feature-gradient-attribution", model=str(vit_dir), sae=[str(d) for d in sae_dirs], layers=[1])
    assert sorted(explain.saes) == [1]


def test_linear_backend_is_a_constructor_option(vit_dir, sae_dirs, images):
    saes = [str(d) for d in sae_dirs]
    stock = pipeline("feature-gradient-attribution", model=str(vit_dir), sae=saes, linear_backend="default")
    auto = pipeline("feature-gradient-attribution", model=str(vit_dir), sae=saes)
    assert stock.attributor.linear_backend == "default" and auto.attributor.linear_backend == "auto"
    a, b = stock(images[0]), auto(images[0])
    np.testing.assert_allclose(a["attribution"], b["attribution"], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="linear_backend='fast'"):
        pipeline("feature-gradient-attribution", model=str(vit_dir), sae=saes, linear_backend="fast")


def test_sae_instance_and_model_instance(vit_dir):
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(vit_dir)
    processor = ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    explain = pipeline("feature-gradient-attribution", model=model, image_processor=processor, sae=tiny_sae(layer=1))
    assert sorted(explain(np.zeros((40, 40, 3), dtype=np.uint8) + 128)["gates"]) == [1]


def test_mean_centered_needs_no_sae(vit_dir):
    means = {1: torch.zeros(32), 2: torch.ones(32)}
    explain = pipeline("feature-gradient-attribution", model=str(vit_dir), mean_residuals=means)
    out = explain(np.full((40, 40, 3), 90, dtype=np.uint8), variant="mean-centered")
    assert sorted(out["gates"]) == [1, 2]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPImageProcessorPil

    path = tmp_path_factory.mktemp("tiny_clip")
    tiny_clip().save_pretrained(path)
    tiny_clip_tokenizer().save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size=IMAGE_SIZE).save_pretrained(path)
    return path


def test_clip_zero_shot(clip_dir, images):
    explain = pipeline("feature-gradient-attribution", model=str(clip_dir), sae=tiny_sae(layer=1))
    labels = ["cat", "dog", "x-ray"]
    out = explain(images[0], candidate_labels=labels)
    assert out["label"] in labels and out["attribution"].shape == (4, 4)
    chosen = explain(images[0], candidate_labels=labels, target="x-ray")
    assert chosen["label"] == "x-ray"
    with pytest.raises(ValueError, match="candidate_labels"):
        explain(images[0])


# --------------------------------------------------------------------------------------------------- bad input
def test_bad_images_get_clear_errors(explain, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ValueError, match="corrupt or not an image"):
        explain(str(corrupt))
    with pytest.raises(ValueError, match="no such image file"):
        explain(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="too small"):
        explain(Image.new("RGB", (1, 1)))
    huge = tmp_path / "huge.png"
    Image.new("1", (8000, 6000)).save(huge)
    with pytest.raises(ValueError, match="larger than"):
        explain(str(huge))
    nan = np.full((40, 40, 3), 0.5, dtype=np.float32)
    nan[3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        explain(nan)
    with pytest.raises(ValueError, match="empty"):
        explain([])


def test_bad_parameters_get_clear_errors(explain, images):
    with pytest.raises(ValueError, match="kappa|κ"):
        explain(images[0], kappa=0)
    with pytest.raises(ValueError, match="cmax|c_max"):
        explain(images[0], cmax=1.0)
    with pytest.raises(ValueError, match="Unknown target label 'pneumonia'"):
        explain(images[0], target="pneumonia")
    with pytest.raises(ValueError, match="range|block"):
        explain(images[0], layers=[7])
    with pytest.raises(TypeError, match="Unknown parameter"):
        explain(images[0], kapa=1.0)


def test_bad_saes_get_clear_errors(vit_dir, tmp_path):
    with pytest.raises(ValueError, match="hidden size|d_in"):
        pipeline("feature-gradient-attribution", model=str(vit_dir), sae=tiny_sae(d_in=16, layer=1))(
            np.zeros((40, 40, 3), dtype=np.uint8)
        )
    with pytest.raises((ValueError, OSError), match="[Nn]o such|does not exist|not found|missing"):
        pipeline("feature-gradient-attribution", model=str(vit_dir), sae=str(tmp_path / "nowhere"))
    unknown = tmp_path / "unknown_format"
    unknown.mkdir()
    (unknown / "weights.bin").write_bytes(b"0")
    with pytest.raises(ValueError, match="format|config"):
        pipeline("feature-gradient-attribution", model=str(vit_dir), sae=str(unknown))
    other = tiny_sae(layer=1, base_model_name_or_path="some/other-model")
    with pytest.warns(UserWarning, match="some/other-model"):
        explain = pipeline("feature-gradient-attribution", model=str(vit_dir), sae=other)
        explain(np.zeros((40, 40, 3), dtype=np.uint8))


def test_model_left_as_given(vit_dir, images):
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(vit_dir, attn_implementation="sdpa")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    explain = pipeline(
        "feature-gradient-attribution",
        model=model,
        image_processor=ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        sae=tiny_sae(layer=1),
    )
    explain(images[0])
    # transformers installs its own persistent capture hooks on a first output_attentions call: compare after it.
    hooks = {name: _hook_ids(m) for name, m in model.named_modules()}
    explain(images[:2], batch_size=2)
    with pytest.raises(ValueError):
        explain(images[0], kappa=-1)
    assert {name: _hook_ids(m) for name, m in model.named_modules()} == hooks
    assert model.config._attn_implementation == "sdpa"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hf_fga._register()
