"""The experiment config: defaults, YAML round trip, unknown keys, ``--set`` overrides, shipped configs, and
config keys that moved (old run folders and files keep loading)."""
from __future__ import annotations

import dataclasses
import logging
import re
import typing
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


def _nested(dotted: str, value) -> dict:
    """``{"a": {"b": value}}`` for ``"a.b"``."""
    *path, name = dotted.split(".")
    mapping = {name: value}
    for section in reversed(path):
        mapping = {section: mapping}
    return mapping


def _get(cfg: ExperimentConfig, dotted: str):
    """The value of a dotted key, e.g. ``train.augment.flip_prob``."""
    for name in dotted.split("."):
        cfg = getattr(cfg, name)
    return cfg


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


@pytest.mark.parametrize("section, cls, key", [
    *[(name, cls, "no_such_key") for name, cls in sorted(SECTIONS.items())],
    ("train.augment", AugmentConfig, "flip"),  # a nested section
])
def test_unknown_key_inside_a_section_lists_the_valid_keys(tmp_path, section, cls, key):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_nested(f"{section}.{key}", 3)))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{section}.{key}" in message and str(path) in message
    for name in _names(cls):
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
def test_every_shipped_config_loads_and_validates(path, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="liverseg"):
        cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    # with today's key names only: no renamed-keys warning, nor any other
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    # Shipped tile and patch sizes fit the down-sampling, so no voxel is spent on padding.
    divisor = size_divisor(cfg.model)
    assert all(s % divisor == 0 for s in cfg.train.patch_size), cfg.train.patch_size
    assert all(s % divisor == 0 for s in cfg.infer.roi_size), cfg.infer.roi_size
    # And it survives the trip through a run folder's config.yaml.
    assert load_config(save_config(cfg, tmp_path / "config.yaml")) == cfg


# ----------------------------------------------------------------------------- keys that moved

# Config files of the two old layouts, as run folders, checkpoints and exported models of that age hold
# them: written out, not derived from today's fields (a field added later was in no old file).
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

# The 20 flat train.aug_* keys of the train section before train.augment (cd4d96e's liverseg/config.py).
OLD_AUGMENT_YAML = """data:
  labels: [background, liver]
train:
  epochs: 3
  lr: 0.0003
  aug_affine_prob: 0.4
  aug_rotate_deg: 20.0
  aug_scale: 0.15
  aug_flip_prob: 0.5
  aug_intensity_prob: 0.6
  aug_noise_std: 0.05
  aug_noise_prob: 0.25
  aug_brightness: 0.2
  aug_shift: 0.1
  aug_elastic_prob: 0.1
  aug_elastic_sigma: [4.0, 6.0]
  aug_elastic_magnitude: [40.0, 120.0]
  aug_blur_prob: 0.3
  aug_blur_sigma: [0.6, 1.2]
  aug_contrast_prob: 0.2
  aug_contrast: 0.3
  aug_lowres_prob: 0.2
  aug_lowres_zoom: [0.6, 1.0]
  aug_gamma_prob: 0.35
  aug_gamma: [0.8, 1.25]
  cache_rate: 0.5
"""
NEW_AUGMENT = AugmentConfig(affine_prob=0.4, rotate_deg=20.0, scale=0.15, flip_prob=0.5, intensity_prob=0.6,
                            noise_std=0.05, noise_prob=0.25, brightness=0.2, shift=0.1, elastic_prob=0.1,
                            elastic_sigma=(4.0, 6.0), elastic_magnitude=(40.0, 120.0), blur_prob=0.3,
                            blur_sigma=(0.6, 1.2), contrast_prob=0.2, contrast=0.3, lowres_prob=0.2,
                            lowres_zoom=(0.6, 1.0), gamma_prob=0.35, gamma=(0.8, 1.25))


@dataclasses.dataclass(frozen=True)
class OldLayout:
    """An old config file, the config it loads as (built with the new names), and old keys to ``--set``."""
    text: str
    old_prefix: str  # the moved keys' common old prefix, e.g. "preprocess.photo_"
    new_overrides: tuple[str, ...]  # the same config as ``text``, written with the new names
    check: typing.Callable[[ExperimentConfig], bool]  # the moved values, spelled out
    partial: str  # a user's partial file with one old key...
    partial_overrides: tuple[str, ...]  # ...and the same with the new name
    set_key: str  # an old key for --set, with two values (text, parsed) unlike the file's
    set_values: tuple[tuple[str, typing.Any], tuple[str, typing.Any]]
    other_set: tuple[str, str, typing.Any]  # a second old key, its text and value

    def old_keys(self) -> set[str]:
        section, prefix = self.old_prefix.split(".")
        return {f"{section}.{name}" for name in yaml.safe_load(self.text)[section] if name.startswith(prefix)}


OLD_LAYOUTS = {
    "photo": OldLayout(
        text=OLD_PHOTO_YAML, old_prefix="preprocess.photo_",
        new_overrides=("data.modality=photo", "data.labels=[background, vessel]",
                       "preprocess.spacing_mm=[1.0, 1.0, 1.0]", "photo.color=green", "photo.clahe=0.01", "photo.fov_threshold=10", "photo.fov_diameter=640",
                       "model.spatial_dims=2", "model.channels=[8, 16]", "model.strides=[2]",
                       "train.patch_size=[64, 64]", "infer.roi_size=[64, 64]", "infer.largest_component=[]"),
        # the section's other keys stay where they were
        check=lambda cfg: cfg.photo == NEW_PHOTO and cfg.preprocess.spacing_mm == (1.0, 1.0, 1.0),
        partial="preprocess:\n  photo_clahe: 0.02\n", partial_overrides=("photo.clahe=0.02",),
        set_key="preprocess.photo_color", set_values=(("gray", "gray"), ("rgb", "rgb")),
        other_set=("preprocess.photo_fov_diameter", "512", 512)),
    "augment": OldLayout(
        text=OLD_AUGMENT_YAML, old_prefix="train.aug_",
        new_overrides=("data.labels=[background, liver]", "train.epochs=3", "train.lr=3e-4", "train.cache_rate=0.5",
                       "train.augment.affine_prob=0.4", "train.augment.rotate_deg=20.0", "train.augment.scale=0.15",
                       "train.augment.flip_prob=0.5", "train.augment.intensity_prob=0.6",
                       "train.augment.noise_std=0.05", "train.augment.noise_prob=0.25",
                       "train.augment.brightness=0.2", "train.augment.shift=0.1", "train.augment.elastic_prob=0.1",
                       "train.augment.elastic_sigma=[4.0, 6.0]", "train.augment.elastic_magnitude=[40.0, 120.0]",
                       "train.augment.blur_prob=0.3", "train.augment.blur_sigma=[0.6, 1.2]",
                       "train.augment.contrast_prob=0.2", "train.augment.contrast=0.3",
                       "train.augment.lowres_prob=0.2", "train.augment.lowres_zoom=[0.6, 1.0]",
                       "train.augment.gamma_prob=0.35", "train.augment.gamma=[0.8, 1.25]"),
        check=lambda cfg: cfg.train.augment == NEW_AUGMENT and (cfg.train.epochs, cfg.train.cache_rate) == (3, 0.5),
        partial="train:\n  epochs: 3\n  aug_flip_prob: 0.25\n",
        partial_overrides=("train.epochs=3", "train.augment.flip_prob=0.25"),
        set_key="train.aug_flip_prob", set_values=(("0.25", 0.25), ("0.3", 0.3)),
        other_set=("train.aug_gamma", "[0.9, 1.1]", (0.9, 1.1))),
}
old_layouts = pytest.mark.parametrize("layout", list(OLD_LAYOUTS.values()), ids=list(OLD_LAYOUTS))


def test_moved_keys_are_exactly_the_old_layouts_keys():
    photo, augment = OLD_LAYOUTS["photo"].old_keys(), OLD_LAYOUTS["augment"].old_keys()
    assert len(photo) == 4 and len(augment) == 20
    assert set(MOVED_KEYS) == photo | augment


def test_moved_keys_name_real_fields():
    for old, new in MOVED_KEYS.items():
        section, *path = new.split(".")
        node = getattr(ExperimentConfig(), section)
        for name in path:
            node = getattr(node, name)  # raises when the new key is not a field
        old_section, old_name = old.split(".")
        assert old_name not in {f.name for f in dataclasses.fields(getattr(ExperimentConfig(), old_section))}


@old_layouts
def test_an_old_config_loads_into_the_new_layout(tmp_path, caplog, layout):
    path = tmp_path / "run" / "config.yaml"  # an old run folder's config.yaml
    path.parent.mkdir()
    path.write_text(layout.text)
    with caplog.at_level(logging.WARNING, logger="liverseg"):
        cfg = load_config(path)
    assert cfg == load_config(overrides=list(layout.new_overrides))
    assert layout.check(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    for old in layout.old_keys():
        assert f"{old} -> {MOVED_KEYS[old]}" in warnings[0], old
    # a run folder's config.yaml and a checkpoint's or exported model's stored mapping of that age load the same
    # way, leaving the caller's mapping as it was; from_dict alone takes today's names only
    assert config_from_yaml_text(layout.text) == cfg
    stored = yaml.safe_load(layout.text)
    assert config_from_mapping(stored) == cfg
    assert stored == yaml.safe_load(layout.text)
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(stored)
    # a user's partial file with one old key
    partial = tmp_path / "mine.yaml"
    partial.write_text(layout.partial)
    assert load_config(partial) == load_config(overrides=list(layout.partial_overrides))
    # saving writes the new layout only
    saved = yaml.safe_load(save_config(cfg, tmp_path / "new" / "config.yaml").read_text())
    assert saved == to_dict(cfg)
    for old in layout.old_keys():
        section, name = old.split(".")
        assert name not in saved[section], old


@old_layouts
def test_old_keys_in_set_overrides_set_the_new_ones(tmp_path, caplog, layout):
    old, new = layout.set_key, MOVED_KEYS[layout.set_key]
    (a_text, a), (b_text, b) = layout.set_values
    other, other_text, other_value = layout.other_set
    with caplog.at_level(logging.WARNING, logger="liverseg"):
        cfg = load_config(overrides=[f"{old}={a_text}", f"{other}={other_text}"])
    assert (_get(cfg, new), _get(cfg, MOVED_KEYS[other])) == (a, other_value)
    for key in (old, other):
        assert any(key in r.getMessage() and MOVED_KEYS[key] in r.getMessage() for r in caplog.records), key
    assert _get(apply_overrides(cfg, [f"{old}={b_text}"]), new) == b
    assert _get(apply_overrides(ExperimentConfig(), [f"{old}={a_text}"]), new) == a
    # an override, old key or new, wins over an old key in the file, and over the new key in a file
    old_file = tmp_path / "old.yaml"
    old_file.write_text(layout.text)
    assert _get(load_config(old_file), new) not in (a, b)
    assert _get(load_config(old_file, [f"{new}={b_text}"]), new) == b
    assert _get(load_config(old_file, [f"{old}={a_text}"]), new) == a
    new_file = tmp_path / "new.yaml"
    new_file.write_text(yaml.safe_dump(to_dict(load_config(old_file))))
    assert _get(load_config(new_file, [f"{old}={a_text}"]), new) == a
    # the last override wins, whichever name it uses
    assert _get(load_config(None, [f"{old}={a_text}", f"{new}={b_text}"]), new) == b
    assert _get(load_config(None, [f"{new}={b_text}", f"{old}={a_text}"]), new) == a


@old_layouts
def test_an_old_key_beside_its_new_name_is_a_config_error(tmp_path, layout):
    old, new = layout.set_key, MOVED_KEYS[layout.set_key]
    data = yaml.safe_load(layout.text)
    *sections, name = new.split(".")
    section = data
    for part in sections:
        section = section.setdefault(part, {})
    section[name] = layout.set_values[0][1]
    both = rf"{re.escape(old)} and {re.escape(new)} are both given"
    with pytest.raises(ConfigError, match=both):
        config_from_mapping(data)
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=rf"both\.yaml.*{both}"):
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
