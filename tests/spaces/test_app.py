"""The Space's page: builds without launching, explains an example, turns bad input into messages, serves clients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification

import hf_fga

# gr.Warning outside a request also emits a Python warning: the page message is what the tests check
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")


def merge(updates: list[tuple]) -> tuple:
    """What the page shows after a stream of updates: later values replace earlier ones unless skipped."""
    import gradio as gr

    shown = list(updates[0])
    for update in updates[1:]:
        for n, value in enumerate(update):
            if not (isinstance(value, dict) and value == gr.skip()):
                shown[n] = value
    return tuple(shown)


def picture(value):
    """The image of an output: the compared map is sent as an update that also sets its caption."""
    return value["value"] if isinstance(value, dict) else value


@pytest.fixture(scope="module")
def handler(app_module, space_explainer):
    """The click handler, returning what the page shows once it is done (the handler streams two updates)."""
    handle = app_module.make_handler(space_explainer)

    def final(*args):
        updates = list(handle(*args))
        assert 1 <= len(updates) <= 2
        return merge(updates)

    return final


def test_blocks_build_without_launching(app_module, space_explainer):
    import gradio as gr

    demo = app_module.build_demo(space_explainer)
    assert isinstance(demo, gr.Blocks)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"fga-image", "fga-transmm", "fga-fga", "fga-gates", "fga-metrics", "fga-feature-cards"} <= ids
    assert not demo.is_running
    blocks = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "fga-blocks")
    assert [c[1] for c in blocks.choices] == space_explainer.blocks


def test_explain_gives_every_output(app_module, space_explainer, handler):
    example = space_explainer.examples[0]
    out = handler(example, "combined", space_explainer.default_blocks, 0.5, 10.0, "", "")
    message, prediction, image, transmm, fga, gates, metrics, feature_image, cards, features = out
    assert "⚠️" not in message and "probability" in message
    assert set(prediction) == set(space_explainer.labels)
    assert sum(prediction.values()) == pytest.approx(1.0, abs=1e-5)
    assert transmm["label"] == "TransMM"
    transmm = picture(transmm)
    for shown in (image, transmm, fga, feature_image):
        assert isinstance(shown, Image.Image) and shown.size == image.size
    assert not np.array_equal(np.asarray(transmm), np.asarray(image))
    assert len(gates) == len(space_explainer.default_blocks)
    for table_row in ("SaCo", "Faithfulness Correlation", "Pixel Flipping"):
        assert table_row in metrics
    assert isinstance(cards, Image.Image), "the combined variant must show the features behind the change"
    assert cards.width > image.width and np.asarray(cards).std() > 10
    assert "amplifier" in features or "suppressor" in features


def test_maps_come_before_the_metrics(app_module, space_explainer):
    first, last = app_module.make_handler(space_explainer)(
        space_explainer.examples[0], "combined", space_explainer.default_blocks, 0.5, 10.0, "", ""
    )
    assert first[4] is not None and "Computing" in first[6]
    assert "SaCo" in last[app_module.METRICS_OUTPUT]
    assert merge([first, last])[:6] == first[:6]  # the second update re-sends nothing but the metrics


@pytest.mark.parametrize("variant", ["activation", "gradient", "no-sae", "shuffled", "centered", "mean-centered"])
def test_every_variant_explains(app_module, space_explainer, variant):
    image = app_module.read_upload(space_explainer.examples[1])
    out = app_module.explain(space_explainer, image, variant, space_explainer.default_blocks, metrics=False)
    assert out.fga is not None and len(out.gates) == len(space_explainer.default_blocks)
    assert (out.feature_cards is not None) == (variant == "shuffled")


def test_mean_centered_without_means_gives_a_message(app_module, space_explainer, monkeypatch):
    monkeypatch.setattr(space_explainer, "mean_blocks", [])
    image = app_module.read_upload(space_explainer.examples[0])
    with pytest.raises(app_module.SpaceInputError, match="mean patch residuals"):
        app_module.explain(space_explainer, image, "mean-centered", space_explainer.default_blocks, metrics=False)


def test_variants_without_features_say_so(handler, space_explainer):
    out = handler(space_explainer.examples[0], "no-sae", space_explainer.default_blocks, 0.5, 10.0, "", "")
    assert "⚠️" not in out[0]
    assert out[8] is None and "does not read SAE features" in out[9]


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"this is not an image at all", "not a readable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not a readable image"),
    ],
)
def test_unreadable_uploads_give_a_message(handler, tmp_path, content, expected):
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    out = handler(str(path), "combined", [], 0.5, 10.0, "", "")
    assert out[0].startswith("⚠️") and expected in out[0]
    assert out[2] is None and out[8] is None


def test_upload_messages_hide_server_paths_and_library_advice(handler, tmp_path):
    path = tmp_path / "upload.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    message = handler(str(path), "combined", [1], 0.5, 10.0, "", "")[0]
    assert str(tmp_path) not in message and "upload.png" not in message
    for advice in ("pass ", "load_image", "datasets", "array", "()"):
        assert advice not in message
    assert "Upload a JPEG, PNG" in message


def test_tiny_uploads_are_too_small(handler, tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(path)
    message = handler(str(path), "combined", [1], 0.5, 10.0, "", "")[0]
    assert message.startswith("⚠️") and "too small" in message and "1×1" in message
    assert "decoded" not in message and str(tmp_path) not in message


def test_huge_uploads_are_refused_from_the_header(app_module, handler, tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("1", (10000, 10000)).save(path)  # 100 megapixels, a few kB on disk
    monkeypatch.setattr(app_module, "load_image", lambda *a, **k: pytest.fail("the upload was decoded"))
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("the upload was decoded"))
    message = handler(str(path), "combined", [1], 0.5, 10.0, "", "")[0]
    assert "10000×10000" in message and "Downscale" in message


def test_16_bit_uploads_keep_their_contrast(app_module, tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    path = tmp_path / "xray16.png"
    Image.fromarray(ramp).save(path)
    image = np.asarray(app_module.read_upload(str(path)))
    expected = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(image[..., 0], expected)  # not clipped to white as an 8-bit conversion would


def test_the_space_explains_through_the_pipeline(app_module, space_explainer, monkeypatch):
    import inspect

    assert ".attributor" not in inspect.getsource(app_module)
    calls = []
    pipe = space_explainer.pipe
    original = type(pipe).__call__
    monkeypatch.setattr(type(pipe), "__call__", lambda self, *a, **k: calls.append(k) or original(self, *a, **k))
    image = app_module.read_upload(space_explainer.examples[0])
    out = app_module.explain(
        space_explainer, image, "combined", space_explainer.default_blocks, 1.0, 20.0, metrics=False
    )
    assert len(calls) == 1 and calls[0]["kappa"] == 1.0 and calls[0]["layers"] == space_explainer.default_blocks
    result = original(pipe, image, layers=space_explainer.default_blocks, kappa=1.0, cmax=20.0)
    shown = app_module.fit_within(image, app_module.DISPLAY_SIDE)
    np.testing.assert_array_equal(np.asarray(out.fga), np.asarray(app_module.overlay(shown, result["attribution"])))


def test_too_large_uploads_give_a_message(app_module, handler, tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    monkeypatch.setattr(app_module, "MAX_UPLOAD_PIXELS", 300 * 200 - 1)
    assert "Downscale" in handler(str(path), "combined", [1], 0.5, 10.0, "", "")[0]
    monkeypatch.setattr(app_module, "MAX_UPLOAD_BYTES", 10)
    assert "limit is" in handler(str(path), "combined", [1], 0.5, 10.0, "", "")[0]


def test_missing_image_and_bad_controls_give_messages(handler, space_explainer):
    example = space_explainer.examples[0]
    assert "Pick an example" in handler(None, "combined", [1], 0.5, 10.0, "", "")[0]
    assert "at least one gated block" in handler(example, "combined", [], 0.5, 10.0, "", "")[0]
    assert "no SAE" in handler(example, "combined", [99], 0.5, 10.0, "", "")[0]


LOCAL_OR_MALFORMED = ["/etc/passwd", "../hf_fga/bundled/model", "./model", "owner", "a/b/c", "~/x", "tests/spaces"]


@pytest.mark.parametrize("model_id", LOCAL_OR_MALFORMED)
def test_hub_ids_refuse_local_paths(handler, space_explainer, model_id):
    out = handler(space_explainer.examples[0], "combined", [1], 0.5, 10.0, model_id, "owner/saes")
    assert out[0].startswith("⚠️") and "owner/name" in out[0]


def test_unreachable_hub_model_gives_a_message(handler, space_explainer):
    out = handler(space_explainer.examples[0], "combined", [1], 0.5, 10.0, "nobody-xyz/no-such-model", "nobody/saes")
    assert out[0].startswith("⚠️") and "Could not load" in out[0]


def test_launched_app_serves_a_client(space_url, space_explainer, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(space_url, verbose=False)
    job = client.submit(
        handle_file(space_explainer.examples[0]),
        "combined",
        space_explainer.default_blocks,
        0.5,
        10.0,
        "",
        "",
        api_name="/explain",  # no method: clients of the seven-input API get the default, TransMM
    )
    job.result()
    result = merge(job.outputs())  # the handler streams the maps first, then the metrics
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    refused = client.predict(
        handle_file(str(not_an_image)), "combined", [1], 0.5, 10.0, "", "", "transmm", api_name="/explain"
    )
    message, prediction, image, transmm, fga, gates, metrics, feature_image, cards, features = result
    assert "probability" in message and prediction["label"] in space_explainer.labels
    assert transmm["label"] == "TransMM"  # the compared map comes as an update that sets its caption
    transmm = picture(transmm)
    for path in (image, transmm, fga, feature_image, cards):
        assert Image.open(path).size[0] > 0
    assert len(gates) == len(space_explainer.default_blocks)
    assert "SaCo" in metrics and ("amplifier" in features or "suppressor" in features)
    assert refused[0].startswith("⚠️") and "not a readable image" in refused[0]
    other = client.submit(
        handle_file(space_explainer.examples[0]),
        "combined",
        space_explainer.default_blocks,
        0.5,
        10.0,
        "",
        "",
        "gradient-x-input",
        api_name="/explain",
    )
    other.result()
    other = merge(other.outputs())
    assert other[3]["label"] == "Gradient × Input" and Image.open(picture(other[3])).size == Image.open(image).size


def test_feature_cards_show_why_each_feature_fires(app_module, space_explainer):
    image = app_module.read_upload(space_explainer.examples[0])
    out = app_module.explain(
        space_explainer, image, "combined", space_explainer.default_blocks, 0.5, 10.0, metrics=False
    )
    rows = [line for line in out.features.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows and all("local" in row or "CLS-token" in row or "undetermined" in row for row in rows)
    result = space_explainer.pipe(image, layers=space_explainer.default_blocks, top_k_features=6, explain_features=6)
    explained = [f for fs in result["top_features"].values() for f in fs]
    assert explained and all("ierf" in f for f in explained)


def test_method_selector_lists_every_registered_method_but_fga(app_module, space_explainer):
    demo = app_module.build_demo(space_explainer)
    selector = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "fga-method")
    names = [choice[1] for choice in selector.choices]
    assert sorted(names) == sorted(set(hf_fga.list_methods()) - {"fga"}) and names[0] == "transmm"
    assert selector.value == "transmm"
    labels = dict((name, label) for label, name in selector.choices)
    assert labels["transmm"] == "TransMM" and labels["gradient-x-input"] == "Gradient × Input"
    assert "seconds" in selector.info and "KernelSHAP" in selector.info and "TransMM" in selector.info


def test_default_method_shows_the_transmm_of_the_same_pass(app_module, space_explainer, monkeypatch):
    calls = []
    pipe = space_explainer.pipe
    original = type(pipe).__call__
    monkeypatch.setattr(type(pipe), "__call__", lambda self, *a, **k: calls.append(k) or original(self, *a, **k))
    image = app_module.read_upload(space_explainer.examples[0])
    out = app_module.explain(space_explainer, image, "combined", space_explainer.default_blocks, metrics=False)
    assert len(calls) == 1 and out.compared == "TransMM"
    result = original(pipe, image, layers=space_explainer.default_blocks)
    shown = app_module.fit_within(image, app_module.DISPLAY_SIDE)
    expected = app_module.overlay(shown, result["baseline"])
    np.testing.assert_array_equal(np.asarray(out.transmm), np.asarray(expected))


def test_another_method_is_shown_beside_fga(app_module, space_explainer, handler):
    example = space_explainer.examples[0]
    default = handler(example, "combined", space_explainer.default_blocks, 0.5, 10.0, "", "", "transmm")
    out = handler(example, "combined", space_explainer.default_blocks, 0.5, 10.0, "", "", "gradient-x-input")
    message, prediction, image, compared, fga, gates, metrics, feature_image, cards, features = out
    assert "⚠️" not in message and "Gradient × Input" in message
    assert compared["label"] == "Gradient × Input"
    image_ = app_module.read_upload(example)
    result = space_explainer.pipe(image_, layers=space_explainer.default_blocks)
    expected = space_explainer.pipe(image_, method="gradient-x-input", target=result["target"])
    shown = app_module.fit_within(image_, app_module.DISPLAY_SIDE)
    overlay = app_module.overlay(shown, expected["attribution"])
    np.testing.assert_array_equal(np.asarray(picture(compared)), np.asarray(overlay))
    assert not np.array_equal(np.asarray(picture(compared)), np.asarray(picture(default[3])))
    # everything else is what the default shows: FGA, the gates, the features and the (FGA vs TransMM) metrics
    np.testing.assert_array_equal(np.asarray(fga), np.asarray(default[4]))
    assert prediction == default[1] and len(gates) == len(default[5]) and features == default[9]
    assert metrics == default[6] and "TransMM" in metrics and "SaCo" in metrics
    assert isinstance(cards, Image.Image) and isinstance(feature_image, Image.Image)


def test_unknown_method_gives_a_message(handler, space_explainer):
    out = handler(space_explainer.examples[0], "combined", [1], 0.5, 10.0, "", "", "fga")
    assert out[0].startswith("⚠️") and "Unknown method" in out[0] and "gradient-x-input" in out[0]


@pytest.mark.parametrize("method", [m for m in hf_fga.list_methods() if m != "fga"])
def test_every_method_can_be_compared(app_module, space_explainer, method):
    if method == "kernel-shap" and space_explainer.name != "stand-in":
        pytest.skip("KernelSHAP takes ~10 s on the bundled model's 196 patches; the stand-in covers it")
    image = app_module.read_upload(space_explainer.examples[1])
    out = app_module.explain(space_explainer, image, "combined", [1], metrics=False, method=method)
    assert out.compared == app_module.method_label(method) and out.transmm.size == out.fga.size
    assert not np.array_equal(np.asarray(out.transmm), np.asarray(out.image))


def test_prototype_ierf_toggle_redraws_the_prototypes(app_module, space_explainer):
    import gradio as gr

    assert space_explainer.prototypes.has_ierfs, space_explainer.prototypes.ierf_problem
    image = app_module.read_upload(space_explainer.examples[0])
    plain = app_module.explain(space_explainer, image, "combined", space_explainer.default_blocks, metrics=False)
    boxed, cards, table = app_module.redraw_features(plain.panel, True)  # the checkbox ticked: nothing recomputed
    assert isinstance(cards, Image.Image) and cards.size == plain.feature_cards.size
    assert not np.array_equal(np.asarray(cards), np.asarray(plain.feature_cards))
    assert "their own iERFs" in table and "their own iERFs" not in plain.features and "⚠️" not in table
    np.testing.assert_array_equal(np.asarray(boxed), np.asarray(plain.feature_image))
    ticked = app_module.explain(
        space_explainer, image, "combined", space_explainer.default_blocks, metrics=False, prototype_ierfs=True
    )
    np.testing.assert_array_equal(np.asarray(ticked.feature_cards), np.asarray(cards))
    back = app_module.redraw_features(ticked.panel, False)  # unticked again: the plain prototypes
    np.testing.assert_array_equal(np.asarray(back[1]), np.asarray(plain.feature_cards))
    assert back[2] == plain.features
    assert all(update == gr.skip() for update in app_module.redraw_features(None, True))  # before any click


def test_missing_prototype_ierfs_give_a_message(app_module, space_explainer, handler, monkeypatch, tmp_path):
    from hf_fga.prototypes import read_prototype_ierfs

    index = space_explainer.prototypes
    _, problem = read_prototype_ierfs(tmp_path, index.tables)  # an asset folder without them
    monkeypatch.setattr(index, "ierfs", None)
    monkeypatch.setattr(index, "ierf_problem", problem)
    example = space_explainer.examples[0]
    plain = handler(example, "combined", space_explainer.default_blocks, 0.5, 10.0, "", "", "transmm", False)
    out = handler(example, "combined", space_explainer.default_blocks, 0.5, 10.0, "", "", "transmm", True)
    assert "⚠️" not in out[0] and isinstance(out[8], Image.Image)
    np.testing.assert_array_equal(np.asarray(out[8]), np.asarray(plain[8]))  # the plain prototypes instead
    assert "⚠️" in out[9] and "--ierfs-only" in out[9] and "plain prototypes" in out[9]
    panel = app_module.explain(
        space_explainer, app_module.read_upload(example), "combined", space_explainer.default_blocks, metrics=False
    ).panel
    assert "--ierfs-only" in app_module.redraw_features(panel, True)[2]


def test_the_page_has_the_prototype_ierf_toggle(app_module, space_explainer):
    import gradio as gr

    demo = app_module.build_demo(space_explainer)
    toggle = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "fga-prototype-ierfs")
    assert isinstance(toggle, gr.Checkbox) and toggle.value is False and "iERF" in toggle.label
    first = next(
        app_module.make_handler(space_explainer, with_panel=True)(
            space_explainer.examples[0], "no-sae", [1], 0.5, 10.0
        )
    )
    assert len(first) == 11 and first[10][3] == "no-sae"  # the panel's inputs go to the page's gr.State


def test_scores_on_a_grid_too_small_for_the_quick_settings_say_why(app_module):
    """A 2 x 2 grid cannot hold K = 10 SaCo groups: the page says so instead of Gradio's generic "Error"."""
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=8
    )
    model = ViTForImageClassification(config).eval()
    maps = {"TransMM": torch.rand(2, 2), "FGA": torch.rand(2, 2)}
    explanation = app_module.Explanation(
        "", None, None, None, None, [], "", None, None, "", pending=(model, torch.randn(1, 3, 16, 16), maps)
    )
    scored = app_module.score(explanation)
    assert scored.pending is None
    assert "not available for this model" in scored.metrics and "N=4" in scored.metrics
