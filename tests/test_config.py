"""The experiment config: defaults, YAML round trip, unknown keys, ``--set`` overrides, shipped configs, and
config keys that moved (old run folders and files keep loading)."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import yaml

from liverseg.config import (MODALITY_SPATIAL_DIMS, MOVED_KEYS, AugmentConfig, DataConfig, ExperimentConfig, InferConfig,
                             ModelConfig, PhotoConfig, PreprocessConfig, TrainConfig, apply_moved_keys, apply_overrides,
                             config_from_mapping, config_from_yaml_text, from_dict, load_config, save_config,
                             to_dict)
from liverseg.config import loading as config_loading
from liverseg.errors import ConfigError
from liverseg.models import size_divisor

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
SECTIONS = {"data": DataConfig, "preprocess": PreprocessConfig, "model": ModelConfig, "train": TrainConfig,
            "infer": InferConfig, "photo": PhotoConfig}


def _names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


@pytest.fixture(autouse=True)
def fresh_rename_warnings():
    """The renamed-keys warning is logged once per process; each test starts as a new process would."""
    config_loading._WARNED.clear()
    yield
    config_loading._WARNED.clear()


def test_defaults_validate():
    cfg = ExperimentConfig()
    assert cfg.validate() is cfg
    assert load_config() == cfg  # no file, no overrides: the defaults
    assert cfg.data.labels[0] == "background"


def test_config_is_frozen():
    cfg = ExperimentConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_yaml_round_trip_gives_an_equal_config(tmp_path):
    cfg = load_config(overrides=[
        "data.labels=[background, liver, tumour]",
        "data.label_remap={3: 2, 4: 0}",
        "preprocess.spacing_mm=[0.8, 0.8, 2.5]",
        "model.channels=[8, 16, 32]",
        "model.strides=[2, 2]",
        "train.lr=3e-4",
        "train.amp=false",
        "train.patch_size=[64, 64, 32]",
        "train.augment.flip_prob=0.5",
        "train.augment.gamma=[0.8, 1.2]",
        "infer.largest_component=[liver, tumour]",
        "infer.blend=constant",
    ])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    loaded = load_config(path)
    assert loaded == cfg
    assert loaded.data.label_remap == {3: 2, 4: 0}
    assert loaded.preprocess.spacing_mm == (0.8, 0.8, 2.5)
    # On disk: plain YAML with every section and nothing that needs Python tags.
    on_disk = yaml.safe_load(path.read_text())
    assert list(on_disk) == list(SECTIONS)
    assert on_disk == to_dict(cfg)
    assert on_disk["train"]["augment"]["flip_prob"] == 0.5  # a nested section is a nested mapping
    assert not list(tmp_path.joinpath("run").glob(".config.yaml.*"))  # no temporary file left
    # Stable: saving what was loaded writes the same text again.
    again = save_config(loaded, tmp_path / "again" / "config.yaml")
    assert again.read_text() == path.read_text()


def test_unknown_top_level_key_lists_the_sections(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  labels: [background, liver]\ntrainer:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "trainer" in message
    assert str(path) in message
    for section in SECTIONS:
        assert section in message


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_unknown_key_inside_a_section_lists_the_valid_keys(tmp_path, section):
    path = tmp_path / "bad.yaml"
    path.write_text(f"{section}:\n  no_such_key: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{section}.no_such_key" in message
    for name in _names(SECTIONS[section]):
        assert name in message


def test_unknown_key_in_a_nested_section_lists_its_valid_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  augment:\n    flip: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "train.augment.flip" in message and str(path) in message
    for name in _names(AugmentConfig):
        assert name in message


def test_unknown_key_in_an_override_is_rejected():
    with pytest.raises(ConfigError, match=r"train\.epoch\b.*epochs"):
        load_config(overrides=["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"train\.augment\.flip\b.*flip_prob"):
        load_config(overrides=["train.augment.flip=0.5"])


@pytest.mark.parametrize("override, getter, expected", [
    ("train.patch_size=[64, 48, 32]", lambda c: c.train.patch_size, (64, 48, 32)),
    ("data.labels=[background, liver, tumour]", lambda c: c.data.labels, ("background", "liver", "tumour")),
    ("data.label_remap={2: 1}", lambda c: c.data.label_remap, {2: 1}),
    ("train.lr=3e-4", lambda c: c.train.lr, 3e-4),
    ("train.weight_decay=1E-5", lambda c: c.train.weight_decay, 1e-5),
    ("train.lr=2.5e+1", lambda c: c.train.lr, 25.0),
    ("train.max_minutes=2", lambda c: c.train.max_minutes, 2.0),
    ("train.epochs=7", lambda c: c.train.epochs, 7),
    ("train.amp=false", lambda c: c.train.amp, False),
    ("infer.overlap=0.5", lambda c: c.infer.overlap, 0.5),
    ("model.name=unet", lambda c: c.model.name, "unet"),
    ("preprocess.hu_window=[-100, 250]", lambda c: c.preprocess.hu_window, (-100.0, 250.0)),
    ("train.augment.flip_prob=0.5", lambda c: c.train.augment.flip_prob, 0.5),
    ("train.augment.blur_sigma=[1, 2]", lambda c: c.train.augment.blur_sigma, (1.0, 2.0)),
])
def test_set_overrides_parse_values(override, getter, expected):
    cfg = load_config(overrides=[override])
    value = getter(cfg)
    assert value == expected
    assert type(value) is type(expected)
    if isinstance(value, tuple):
        assert [type(v) for v in value] == [type(v) for v in expected]
    # The same override applied to an existing config gives the same result.
    assert getter(apply_overrides(ExperimentConfig(), [override])) == expected


def test_overrides_apply_on_top_of_the_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  epochs: 5\n  lr: 0.01\n")
    cfg = load_config(path, ["train.lr=1e-4", "train.lr=2e-4"])
    assert cfg.train.epochs == 5
    assert cfg.train.lr == 2e-4  # the last override wins


@pytest.mark.parametrize("override, key", [
    ("train.epochs=abc", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("train.epochs=true", "train.epochs"),
    ("train.lr=fast", "train.lr"),
    ("train.amp=maybe", "train.amp"),
    ("preprocess.spacing_mm=[1.0, 2.0]", "preprocess.spacing_mm"),
    ("preprocess.spacing_mm=[1.0, x, 2.0]", "preprocess.spacing_mm"),
    ("data.label_remap=5", "data.label_remap"),
    ("data.label_remap={liver: 1}", "data.label_remap"),
    ("model.name=[unet]", "model.name"),
    ("model.channels={a: 1}", "model.channels"),
])
def test_wrong_types_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert key in str(info.value)


@pytest.mark.parametrize("override, key", [
    ("infer.overlap=1.0", "infer.overlap"),
    ("infer.blend=median", "infer.blend"),
    ("train.schedule=step", "train.schedule"),
    ("train.epochs=0", "train.epochs"),
    ("preprocess.hu_window=[300, -200]", "preprocess.hu_window"),
    ("preprocess.spacing_mm=[1.0, 0.0, 2.0]", "preprocess.spacing_mm"),
    ("model.spatial_dims=4", "model.spatial_dims"),
    ("model.strides=[2, 2]", "model.strides"),
    ("data.labels=[liver, background]", "data.labels"),
    ("data.label_remap={2: 5}", "data.label_remap"),
    ("infer.largest_component=[spleen]", "infer.largest_component"),
])
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert key in str(info.value)


@pytest.mark.parametrize("override", ["train.lr", "lr=3", "train.a.b=3", ".lr=3", "train.lr.x=3",
                                      "train.augment.flip_prob.x=1", "train.augment.=1"])
def test_malformed_set_is_a_config_error(override):
    with pytest.raises(ConfigError, match="SECTION"):
        load_config(overrides=[override])


@pytest.mark.parametrize("text", ["- a\n- b\n", "data: [1, 2\n", "data: 3\n"])
def test_malformed_yaml_is_a_config_error_naming_the_file(tmp_path, text):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(path)


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_config_folder_is_not_empty():
    assert len(list(CONFIG_DIR.glob("*.yaml"))) >= 1, CONFIG_DIR


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path, tmp_path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    # Shipped tile and patch sizes fit the down-sampling, so no voxel is spent on padding.
    divisor = size_divisor(cfg.model)
    assert all(s % divisor == 0 for s in cfg.train.patch_size), cfg.train.patch_size
    assert all(s % divisor == 0 for s in cfg.infer.roi_size), cfg.infer.roi_size
    # And it survives the trip through a run folder's config.yaml.
    assert load_config(save_config(cfg, tmp_path / "config.yaml")) == cfg


# ----------------------------------------------------------------------------- moved keys

OLD_PHOTO_YAML = """data:
  modality: photo
  labels: [background, vessel]
preprocess:
  spacing_mm: [1.0, 1.0, 1.0]
  photo_color: green
  photo_clahe: 0.01
  photo_fov_threshold: 10
  photo_fov_diameter: 640
model:
  spatial_dims: 2
  channels: [8, 16]
  strides: [2]
train:
  patch_size: [64, 64]
infer:
  roi_size: [64, 64]
  largest_component: []
"""
NEW_PHOTO = PhotoConfig(color="green", clahe=0.01, fov_threshold=10, fov_diameter=640)


def test_an_old_config_with_preprocess_photo_keys_loads_into_the_photo_section(tmp_path, caplog):
    path = tmp_path / "old.yaml"
    path.write_text(OLD_PHOTO_YAML)
    with caplog.at_level("WARNING", logger="liverseg.config"):
        cfg = load_config(path)
    assert cfg.photo == NEW_PHOTO
    assert cfg.preprocess.spacing_mm == (1.0, 1.0, 1.0)  # the section's other keys stay where they were
    for old, new in MOVED_KEYS.items():
        if old.startswith("preprocess.photo_"):
            assert any(old in r.getMessage() and new in r.getMessage() for r in caplog.records), old
    # a run folder's config.yaml and a checkpoint's config dict of that age load the same way
    assert config_from_yaml_text(OLD_PHOTO_YAML) == cfg
    assert config_from_mapping(yaml.safe_load(OLD_PHOTO_YAML)) == cfg
    # and are saved in the new layout
    saved = yaml.safe_load(save_config(cfg, tmp_path / "config.yaml").read_text())
    assert saved["photo"]["color"] == "green" and "photo_color" not in saved["preprocess"]


def test_old_keys_in_set_overrides_set_the_new_ones(tmp_path):
    cfg = load_config(overrides=["preprocess.photo_color=gray", "preprocess.photo_fov_diameter=512"])
    assert (cfg.photo.color, cfg.photo.fov_diameter) == ("gray", 512)
    assert apply_overrides(cfg, ["preprocess.photo_clahe=0.02"]).photo.clahe == 0.02
    # an override, old key or new, wins over an old key in the file
    path = tmp_path / "old.yaml"
    path.write_text(OLD_PHOTO_YAML)
    assert load_config(path, ["photo.color=rgb"]).photo.color == "rgb"
    assert load_config(path, ["preprocess.photo_color=gray"]).photo.color == "gray"


def test_an_old_photo_key_beside_its_new_name_is_a_config_error():
    data = yaml.safe_load(OLD_PHOTO_YAML)
    data["photo"] = {"color": "rgb"}
    with pytest.raises(ConfigError, match=r"preprocess\.photo_color and photo\.color are both given"):
        config_from_mapping(data)


@pytest.mark.parametrize("override, key", [
    ("photo.color=blue", "photo.color"),
    ("photo.fov_threshold=300", "photo.fov_threshold"),
    ("photo.fov_diameter=8", "photo.fov_diameter"),
    ("photo.clahe=2", "photo.clahe"),
])
def test_invalid_photo_values_name_the_new_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=[override])


# ----------------------------------------------------------------------------- modalities

def test_modality_for_picks_the_plug_in_the_config_names():
    from liverseg.modalities import MODALITIES, modality_for

    assert set(MODALITIES) == set(MODALITY_SPATIAL_DIMS)
    for name, modality in MODALITIES.items():
        assert modality.name == name
    assert modality_for(ExperimentConfig()).traits.inputs == "CT"
    photo = load_config(overrides=["data.modality=photo", "model.spatial_dims=2", "model.slices_2d=1",
                                   "train.patch_size=[64, 64]", "infer.roi_size=[64, 64]", "photo.color=gray"])
    assert modality_for(photo).traits.inputs == "PHOTO"
    assert modality_for(photo).in_channels(photo) == 1
    rgb = dataclasses.replace(photo, photo=PhotoConfig(color="rgb"))
    assert modality_for(rgb).in_channels(rgb) == 3
    unknown = dataclasses.replace(photo, data=DataConfig(modality="mri"))
    with pytest.raises(ConfigError, match="data.modality='mri': use ct or photo"):
        modality_for(unknown)


def test_photo_needs_a_2d_model():
    with pytest.raises(ConfigError, match="data.modality=photo needs model.spatial_dims=2, got 3"):
        load_config(overrides=["data.modality=photo"])


def test_choosing_a_modality_imports_no_torch():
    """Prediction from an exported model reads the traits without PyTorch or MONAI."""
    import subprocess
    import sys

    code = ("import sys; from liverseg.config import ExperimentConfig; from liverseg.modalities import modality_for; "
            "modality_for(ExperimentConfig()); print(sorted(m for m in ('torch', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
# ----------------------------------------------------------------------------- keys that moved

def _augment_values() -> dict:
    return {"affine_prob": 0.4, "rotate_deg": 20.0, "flip_prob": 0.5, "noise_std": 0.05, "elastic_prob": 0.1,
            "elastic_sigma": [4.0, 6.0], "gamma": [0.8, 1.25]}


def _flat_train_section(cfg: ExperimentConfig) -> dict:
    """``cfg``'s train section as run folders wrote it before train.augment: flat ``aug_*`` keys."""
    train = to_dict(cfg)["train"]
    augment = train.pop("augment")
    return {**train, **{f"aug_{name}": value for name, value in augment.items()}}


def test_moved_keys_name_real_fields():
    for old, new in MOVED_KEYS.items():
        section, *path = new.split(".")
        node = getattr(ExperimentConfig(), section)
        for name in path:
            node = getattr(node, name)  # raises when the new key is not a field
        old_section, old_name = old.split(".")
        assert old_name not in {f.name for f in dataclasses.fields(getattr(ExperimentConfig(), old_section))}
    assert {f"train.aug_{name}" for name in _names(AugmentConfig)} <= set(MOVED_KEYS)


def test_an_old_flat_config_loads_like_the_new_layout(tmp_path, caplog):
    new = load_config(overrides=[f"train.augment.{k}={v}" for k, v in _augment_values().items()])
    old = tmp_path / "run" / "config.yaml"  # an old run folder's config.yaml: every key, flat aug_*
    old.parent.mkdir()
    old.write_text(yaml.safe_dump({**to_dict(new), "train": _flat_train_section(new)}, sort_keys=False))
    assert "aug_flip_prob" in old.read_text()
    with caplog.at_level(logging.WARNING, logger="liverseg"):
        loaded = load_config(old)
    assert loaded == new
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "train.augment.flip_prob" in warnings[0]
    # a user's partial file with one old key, and a checkpoint's stored dict (run_folder.load_checkpoint)
    partial = tmp_path / "mine.yaml"
    partial.write_text("train:\n  epochs: 3\n  aug_flip_prob: 0.25\n")
    assert load_config(partial) == load_config(overrides=["train.epochs=3", "train.augment.flip_prob=0.25"])
    checkpoint_config = {**to_dict(new), "train": _flat_train_section(new)}
    assert config_from_mapping(checkpoint_config) == new
    assert "aug_flip_prob" in checkpoint_config["train"]  # the caller's mapping is left as it was
    # saving writes the new layout only
    saved = yaml.safe_load(save_config(loaded, tmp_path / "new" / "config.yaml").read_text())
    assert saved == to_dict(new) and not any(key.startswith("aug_") for key in saved["train"])


def test_an_old_key_in_set_overrides_the_new_place(tmp_path, caplog):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  augment:\n    flip_prob: 0.1\n")
    with caplog.at_level(logging.WARNING, logger="liverseg"):
        cfg = load_config(path, ["train.aug_flip_prob=0.5", "train.aug_gamma=[0.9, 1.1]"])
    assert cfg.train.augment.flip_prob == 0.5 and cfg.train.augment.gamma == (0.9, 1.1)
    assert any("train.augment.flip_prob" in r.getMessage() for r in caplog.records)
    assert apply_overrides(ExperimentConfig(), ["train.aug_flip_prob=0.5"]).train.augment.flip_prob == 0.5
    # the last override wins, whichever name it uses
    assert load_config(None, ["train.aug_flip_prob=0.5", "train.augment.flip_prob=0.3"]).train.augment.flip_prob == 0.3


def test_an_old_and_a_new_key_together_are_a_config_error(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text("train:\n  aug_flip_prob: 0.5\n  augment:\n    flip_prob: 0.3\n")
    with pytest.raises(ConfigError, match=r"both.yaml.*train\.aug_flip_prob.*train\.augment\.flip_prob"):
        load_config(path)


def test_an_unknown_old_style_key_still_lists_the_valid_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  aug_flip: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "train.aug_flip" in str(info.value)
    for name in _names(TrainConfig):
        assert name in str(info.value)


def test_apply_moved_keys_leaves_other_mappings_alone():
    assert apply_moved_keys(None) is None
    assert apply_moved_keys({"train": {"lr": 0.1}}) == {"train": {"lr": 0.1}}
    assert apply_moved_keys({"train": {"aug_scale": 0.2, "augment": None}}) == {"train": {"augment": {"scale": 0.2}}}


def test_the_renamed_keys_warning_is_logged_once_per_process(caplog):
    data = yaml.safe_load(OLD_PHOTO_YAML)
    with caplog.at_level(logging.WARNING, logger="liverseg"):
        first, second = config_from_mapping(data), config_from_mapping(data)  # a run folder read twice
    assert first == second
    assert sum("config keys renamed" in r.getMessage() for r in caplog.records) == 1
