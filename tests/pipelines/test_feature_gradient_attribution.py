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
    assert sorted(out["top_features"]) == list(BLOCKS)
    listed = [f for block in BLOCKS for f in out["top_features"][block]]
    assert 1 <= len(listed) <= 5 and all(f["sign"] in ("amplifier", "suppressor") for f in listed)
    for block in BLOCKS:
        feats = out["top_features"][block]
        assert all((f["contribution"] > 0) == (f["sign"] == "amplifier") for f in feats)
        assert [abs(f["contribution"]) for f in feats] == sorted((abs(f["contribution"]) for f in feats), reverse=True)
        assert all(f["patches"] and all(0 <= p < 16 for p in f["patches"]) for f in feats)
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
    batched = explain(images[:3], candidate_labels=labels, batch_size=3)
    for a, image in zip(batched, images[:3], strict=True):
        _same(a, explain(image, candidate_labels=labels))
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


# ------------------------------------------------------------------------------ a standard transformers pipeline
def _same(a: dict, b: dict) -> None:
    assert a["label"] == b["label"] and a["target"] == b["target"]
    np.testing.assert_allclose(a["attribution"], b["attribution"], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(a["baseline"], b["baseline"], rtol=1e-5, atol=1e-8)
    assert sorted(a["gates"]) == sorted(b["gates"])
    for block in a["gates"]:
        np.testing.assert_allclose(a["gates"][block], b["gates"][block], rtol=1e-5, atol=1e-7)


def test_construction_options_apply_to_every_call(vit_dir, sae_dirs, explain, images):
    configured = pipeline(
        "feature-gradient-attribution",
        model=str(vit_dir),
        sae=[str(d) for d in sae_dirs],
        kappa=1.0,
        cmax=50.0,
        variant="activation",
        layers=[2],
        top_k_features=1,
    )
    for out in (configured(images[0]), configured(images[:2], batch_size=2)[0]):
        _same(out, explain(images[0], kappa=1.0, cmax=50.0, variant="activation", layers=[2]))
        assert sum(len(f) for f in out["top_features"].values()) <= 1
    called = explain(images[0], kappa=0.5, cmax=50.0, variant="activation", layers=[2])
    _same(configured(images[0], kappa=0.5), called)  # the call's option wins, the others stay
    with pytest.raises(ValueError, match="kappa"):
        pipeline("feature-gradient-attribution", model=str(vit_dir), sae=[str(d) for d in sae_dirs], kappa=0)


def test_a_batch_shares_one_forward_and_equals_singles(explain, images):
    calls = []
    embeddings = explain.model.vit.embeddings
    handle = embeddings.register_forward_hook(lambda *args: calls.append(args[1][0].shape[0] if args[1] else 0))
    try:
        batched = explain(images[:4], batch_size=4)
        assert len(calls) == 1 and calls[0] == 4
        calls.clear()
        singles = [explain(image) for image in images[:4]]
        assert len(calls) == 4
    finally:
        handle.remove()
    for a, b in zip(batched, singles, strict=True):
        _same(a, b)
        for block, features in a["top_features"].items():
            other = b["top_features"][block]
            assert [(f["index"], f["sign"], f["patches"]) for f in features] == [
                (f["index"], f["sign"], f["patches"]) for f in other
            ]
            np.testing.assert_allclose(
                [f["contribution"] for f in features], [f["contribution"] for f in other], rtol=1e-4
            )


def test_generators_key_datasets_tuples_and_workers(explain, images):
    datasets = pytest.importorskip("datasets")
    from transformers.pipelines.pt_utils import KeyDataset

    singles = [explain(image) for image in images[:3]]
    streamed = explain((image for image in images[:3]), batch_size=2)
    assert not isinstance(streamed, list)
    for a, b in zip(list(streamed), singles, strict=True):
        _same(a, b)
    ds = datasets.Dataset.from_dict({"image": images[:3]}).cast_column("image", datasets.Image())
    for a, b in zip(list(explain(KeyDataset(ds, "image"), batch_size=3)), singles, strict=True):
        _same(a, b)
    for a, b in zip(explain(tuple(images[:3]), batch_size=2, num_workers=2), singles, strict=True):
        _same(a, b)
    stacked = np.stack([np.asarray(image.resize((36, 40))) for image in images[:2]])
    assert len(explain(stacked)) == 2


def test_top_features_follow_the_feature_drivers_rule(explain, images):
    from hf_fga.feature_drivers import feature_drivers

    out = explain(images[2], top_k_features=3)
    pixel_values = explain.image_processor(images=images[2], return_tensors="pt")["pixel_values"]
    direct = FeatureGradientAttribution(explain.model, explain.saes).attribute(pixel_values, return_contributions=True)
    expected = {block: [] for block in BLOCKS}
    for driver in feature_drivers(direct, 0, max_features=3):
        expected[driver.block].append((driver.index, driver.sign, list(driver.patches)))
    listed = {b: [(f["index"], f["sign"], f["patches"]) for f in fs] for b, fs in out["top_features"].items()}
    assert listed == expected


def test_timeout_reaches_load_image(vit_dir, sae_dirs, images, monkeypatch):
    import io

    import transformers.image_utils

    buffer = io.BytesIO()
    images[0].save(buffer, format="PNG")
    seen = []

    def fake_get(url, timeout=None, follow_redirects=False):
        seen.append(timeout)
        return type("Response", (), {"content": buffer.getvalue()})()

    monkeypatch.setattr(transformers.image_utils.httpx, "get", fake_get)
    configured = pipeline(
        "feature-gradient-attribution", model=str(vit_dir), sae=[str(d) for d in sae_dirs], timeout=3.0
    )
    by_url = configured("https://example.org/x.png")
    configured("https://example.org/x.png", timeout=0.5)
    assert seen == [3.0, 0.5]
    _same(by_url, configured(images[0]))
    with pytest.raises(ValueError, match="timeout"):
        configured(images[0], timeout=-1)


def test_candidate_labels_string_is_one_label_or_a_comma_separated_list(clip_dir, images):
    explain = pipeline("feature-gradient-attribution", model=str(clip_dir), sae=tiny_sae(layer=1))
    assert explain(images[0], candidate_labels="cat")["label"] == "cat"
    assert explain(images[0], candidate_labels="cat, dog", target="dog")["label"] == "dog"
    _same(explain(images[0], candidate_labels="cat, dog"), explain(images[0], candidate_labels=["cat", "dog"]))
    with pytest.raises(ValueError, match="more than once"):
        explain(images[0], candidate_labels=["cat", "cat"])
    with pytest.raises(ValueError, match="empty"):
        explain(images[0], candidate_labels=[])


@pytest.mark.parametrize("kappa", [np.float32(0.5), np.float64(0.5), torch.tensor(0.5), np.array(0.5)])
def test_numeric_options_accept_any_real_number_type(explain, images, kappa):
    _same(explain(images[0], kappa=kappa, cmax=np.int64(10)), explain(images[0]))


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"kappa": True}, TypeError, "kappa must be a finite real number"),
        ({"cmax": True}, TypeError, "cmax must be a finite real number"),
        ({"kappa": "0.5"}, TypeError, "kappa"),
        ({"kappa": float("nan")}, ValueError, "kappa"),
        ({"layers": []}, ValueError, r"layers=\[\] gates no block"),
        ({"layers": [True]}, TypeError, "layers"),
        ({"top_k_features": -1}, ValueError, "top_k_features must be an integer >= 1"),
        ({"top_k_features": 0}, ValueError, "top_k_features"),
        ({"top_k_features": 2.0}, TypeError, "top_k_features"),
        ({"target": [0, 1]}, TypeError, "target applies to every image"),
        ({"target": True}, TypeError, "target"),
        ({"target": 3}, ValueError, r"index in \[0, 2\]"),
    ],
)
def test_bad_options_are_errors(explain, images, options, error, match):
    with pytest.raises(error, match=match):
        explain(images[0], **options)


def test_numpy_target_and_image_arrays_out_of_range(explain, images):
    assert explain(images[0], target=np.int64(2))["label"] == "class_2"
    with pytest.raises(ValueError, match=r"\[0, 1\] or \[0, 255\]"):
        explain(np.full((40, 40, 3), 300.0))
    with pytest.raises(ValueError, match="0–255"):
        explain(np.full((40, 40, 3), -5, dtype=np.int32))
    with pytest.raises(ValueError, match="complex"):
        explain(np.ones((40, 40, 3), dtype=np.complex128))


def test_gradients_are_on_inside_no_grad_and_inference_mode(explain, images):
    reference = explain(images[0])
    with torch.no_grad():
        _same(explain(images[0]), reference)
    with torch.inference_mode():
        _same(explain(images[0]), reference)


def test_libragrad_option(explain, images):
    out = explain(images[0], method="transmm", libragrad=True)
    pixel_values = explain.image_processor(images=images[0], return_tensors="pt")["pixel_values"]
    direct = FeatureGradientAttribution(explain.model).attribute(pixel_values, method="transmm", libragrad=True)
    np.testing.assert_allclose(out["attribution"], direct.attribution[0].numpy(), rtol=1e-5, atol=1e-7)
    plain = explain(images[0], method="transmm")
    assert not np.allclose(out["attribution"], plain["attribution"], rtol=1e-3)
    with pytest.raises(ValueError, match="'rollout' reads none of the model's gradients"):
        explain(images[0], method="rollout", libragrad=True)
    with pytest.raises(TypeError, match="libragrad must be True or False"):
        explain(images[0], libragrad="yes")


# ----------------------------------------------------------------------------------- method_options and precision
def _pixels(explain, image) -> torch.Tensor:
    return explain.image_processor(images=image, return_tensors="pt")["pixel_values"]


def test_method_options_reach_the_method(vit_dir, sae_dirs, explain, images):
    attributor = FeatureGradientAttribution(explain.model, explain.saes)
    pixel_values = _pixels(explain, images[1])
    two = attributor.attribute(pixel_values, method="integrated-gradients", steps=2).attribution[0].numpy()
    four = attributor.attribute(pixel_values, method="integrated-gradients", steps=4).attribution[0].numpy()
    assert not np.allclose(two, four, rtol=1e-3)  # the number of steps shows in the map
    out = explain(images[1], method="integrated-gradients", method_options={"steps": 2})
    np.testing.assert_allclose(out["attribution"], two, rtol=1e-5, atol=1e-7)
    assert out["baseline"] is None and out["gates"] == {}
    configured = pipeline(
        "feature-gradient-attribution",
        model=str(vit_dir),
        sae=[str(d) for d in sae_dirs],
        method="integrated-gradients",
        method_options={"steps": 2, "internal_batch_size": 1},
    )
    np.testing.assert_allclose(configured(images[1])["attribution"], two, rtol=1e-5, atol=1e-7)
    # a call's method_options replaces the construction's
    np.testing.assert_allclose(
        configured(images[1], method_options={"steps": 4})["attribution"], four, rtol=1e-5, atol=1e-7
    )
    batched = configured(images[:3], batch_size=3)
    for image, result in zip(images[:3], batched, strict=True):
        np.testing.assert_allclose(result["attribution"], configured(image)["attribution"], rtol=1e-4, atol=1e-6)


def test_method_options_for_fga_sit_beside_its_pipeline_options(explain, images):
    few = explain(images[0], kappa=1.0, method_options={"num_contributions": 1})
    direct = FeatureGradientAttribution(explain.model, explain.saes).attribute(
        _pixels(explain, images[0]), kappa=1.0, return_contributions=True, num_contributions=1
    )
    np.testing.assert_allclose(few["attribution"], direct.attribution[0].numpy(), rtol=1e-5, atol=1e-7)
    listed = {(block, f["index"]) for block, feats in few["top_features"].items() for f in feats}
    allowed = {(block, int(i)) for block, (_, index) in direct.contributions.items() for i in index.flatten()}
    assert listed and listed <= allowed  # drivers come from the one contribution kept per patch


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"method": "integrated-gradients", "method_options": {"stepz": 2}}, TypeError, r"\['stepz'\].*'steps'"),
        ({"method": "transmm", "method_options": {"steps": 2}}, TypeError, r"method 'transmm'.*none"),
        ({"method_options": {"kappa": 1.0}}, ValueError, r"may not set \['kappa'\]"),
        ({"method_options": {"return_contributions": False}}, ValueError, "return_contributions"),
        ({"method_options": [("steps", 2)]}, TypeError, "method_options must be a dict.*got list"),
        ({"method_options": "steps=2"}, TypeError, "method_options must be a dict"),
        ({"method_options": {2: 1}}, TypeError, "keys must be option names"),
        ({"precision": "bfloat16"}, TypeError, r"\['precision'\] can only be given when the pipeline is built"),
    ],
)
def test_bad_method_options_are_errors(explain, images, options, error, match):
    with pytest.raises(error, match=match):
        explain(images[0], **options)


def test_bad_method_options_at_construction(vit_dir):
    with pytest.raises(TypeError, match="method_options must be a dict"):
        pipeline("feature-gradient-attribution", model=str(vit_dir), method_options=2)


@pytest.mark.filterwarnings("ignore:precision='bfloat16' on this CPU")
def test_precision_is_a_constructor_option(vit_dir, sae_dirs, explain, images):
    saes = [str(d) for d in sae_dirs]
    half = pipeline("feature-gradient-attribution", model=str(vit_dir), sae=saes, precision="bfloat16")
    assert half.attributor.precision == "bfloat16" and explain.attributor.precision == "float32"
    dtypes = {n: p.dtype for n, p in half.model.named_parameters()}
    out = half(images[0])
    assert out["attribution"].dtype == np.float32 and out["attribution"].shape == (4, 4)
    assert {n: p.dtype for n, p in half.model.named_parameters()} == dtypes
    assert set(dtypes.values()) == {torch.float32}
    direct = FeatureGradientAttribution(half.model, half.saes, precision="bfloat16").attribute(
        _pixels(half, images[0]), return_contributions=True
    )
    np.testing.assert_allclose(out["attribution"], direct.attribution[0].numpy(), rtol=1e-5, atol=1e-7)
    assert np.isfinite(out["attribution"]).all()
    for bad in ("float16", "bf16", 32):
        with pytest.raises(
            ValueError, match=r"precision=.*is not supported: expected one of \('float32', 'bfloat16'\)"
        ):
            pipeline("feature-gradient-attribution", model=str(vit_dir), sae=saes, precision=bad)
