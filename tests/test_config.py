"""Config validation at its edges: each bound refuses the value just past it with a message naming
field, value and range, and accepts the value on it; presets keep the paper's settings.

The bad values through the CLI are in tests/test_training.py; these call ``validate`` directly
(a valid config there would start training)."""
import pytest

from hr2g.config import DataConfig, set_field
from hr2g.configs import get_preset


def _tiny(*items: str):
    cfg = get_preset("tiny")
    for item in items:
        key, value = item.split("=", 1)
        set_field(cfg, key, value)
    return cfg


@pytest.mark.parametrize("items, message", [
    (["model.ikt_momentum=1.5"], r"model.ikt_momentum=1.5 is outside the allowed range \[0.0, 1.0\]"),
    (["model.otam_lambda=1e-7"], r"model.otam_lambda=1e-07 must be finite and >= 1e-06"),
    (["model.otam_lambda=inf"], r"model.otam_lambda=inf must be finite"),
    (["model.ikt_temperature=inf"], r"model.ikt_temperature=inf must be finite"),
    (["model.metric=trx", "model.trx_cardinalities=5"], r"model.trx_cardinalities\[\]=5 is outside the allowed range \[1, 4\]"),
    (["train.gamma=2"], r"train.gamma=2.0 is outside the allowed range \[0.0, 1.0\]"),
    (["train.lr=0"], r"train.lr=0.0 must be finite and > 0"),
    (["train.checkpoint_every=-1"], r"train.checkpoint_every=-1 is outside the allowed range \[0, inf\]"),
    (["train.dist_timeout_min=0"], r"train.dist_timeout_min=0 is outside the allowed range \[1, inf\]"),
    (["train.device=cuda:"], r"train.device='cuda:' is not a device; choose auto"),
    (["data.num_workers=65"], r"data.num_workers=65 is outside the allowed range \[0, 64\]"),
    (["eval.split=all"], r"eval.split='all' is not allowed; choose one of \['train', 'val', 'test'\]"),
])
def test_a_value_past_a_bound_is_refused_by_name(items, message):
    with pytest.raises(ValueError, match=message):
        _tiny(*items).validate()


@pytest.mark.parametrize("items", [
    ["model.ikt_kappa=1.0"],  # retrieve the whole bank
    ["model.ikt_momentum=0"], ["model.ikt_momentum=1"],
    ["model.otam_lambda=1e-6"],
    ["model.metric=trx", "model.trx_cardinalities=2,4", "data.frames=4"],  # tuples as long as the clip
    ["train.checkpoint_every=0"],  # only at epoch ends and on a signal
    ["train.gamma=1"],
    ["data.frames=16"],  # every frame the synthetic dataset renders
    ["train.device=cuda:1"],
])
def test_a_value_on_a_bound_is_accepted(items):
    _tiny(*items).validate()


@pytest.mark.parametrize("kw, message", [
    (dict(image_size=2000), r"data.image_size=2000 is outside the allowed range \[8, 1024\]"),
    (dict(frames=65), r"data.frames=65 is outside the allowed range \[1, 64\]"),
    (dict(dataset="hmdb51"), r"data.data_root is required for dataset 'hmdb51' \(pass --data-root DIR\)"),
])
def test_data_bounds_that_the_tiny_preset_hides(kw, message):
    """The tiny preset refuses these sooner, for its own reasons (32x32 frames, 16 rendered)."""
    with pytest.raises(ValueError, match=message):
        DataConfig(**kw).validate()


@pytest.mark.parametrize("raw, want", [("yes", True), ("on", True), ("1", True), ("True", True),
                                       ("no", False), ("off", False), ("0", False), ("false", False)])
def test_booleans_read_as_a_shell_user_writes_them(raw, want):
    assert _tiny(f"train.amp={raw}").train.amp is want


def test_a_word_that_is_no_boolean_is_refused():
    with pytest.raises(ValueError, match="train.amp"):
        _tiny("train.amp=maybe")


@pytest.mark.parametrize("name", ["ssv2_small", "ssv2_full"])
def test_ssv2_presets_never_flip(name):
    """Something-Something labels say a direction ("pushing something from left to right"): a
    horizontal flip turns a clip into another class's."""
    assert get_preset(name).data.flip is False


@pytest.mark.parametrize("name", ["hmdb51", "ucf101", "kinetics100", "ssv2_small", "ssv2_full"])
def test_benchmark_presets_keep_the_papers_settings(name):
    cfg = get_preset(name)
    assert (cfg.data.frames, cfg.model.ikt_kappa, cfg.model.ikt_bank_size, cfg.model.otam_lambda) == (8, 0.7, 50, 0.5)
    assert cfg.data.flip is not name.startswith("ssv2")
