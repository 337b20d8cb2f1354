import pytest

from hf_fga.introspection import same_model_name


@pytest.mark.parametrize(
    "a, b, same",
    [
        ("google/vit-base-patch16-224", "google/vit-base-patch16-224", True),
        ("hf_fga/bundled/model", "/opt/site-packages/hf_fga/bundled/model", True),
        ("hf_fga/bundled/model/", "/x/hf_fga/bundled/model", True),
        ("some/other-model", "tiny-vit", False),
        ("model", "/x/model", False),  # a bare folder name is too vague to match
        ("a/model", "/x/b/model", False),
        ("google/vit-base-patch16-224", "facebook/deit-tiny-patch16-224", False),
    ],
)
def test_same_model_name(a, b, same):
    assert same_model_name(a, b) is same
    assert same_model_name(b, a) is same


def test_same_resolved_folder(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    assert same_model_name("m", str(tmp_path / "m"))
