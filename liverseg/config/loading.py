"""The experiment config on disk and on the command line: nested dicts <-> dataclasses, YAML files,
``--set a.b=value`` overrides, and config keys that moved (their old names keep loading)."""
from __future__ import annotations

import copy
import logging
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from ..atomic import write_text_atomic
from ..errors import ConfigError
from .schema import ExperimentConfig

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- keys that moved

# Old dotted key -> its new place. Run folders, exported models and YAML files written with an old name,
# and ``--set`` with one, still load (with a warning naming the new key); configs are saved with the new
# names only. The old names are moved once, where a mapping comes in: a config file (``_read_mapping``), a
# stored config (``config_from_mapping``), a ``--set`` (``_apply_override``); ``from_dict`` knows only today's.
MOVED_KEYS: dict[str, str] = {
    # the flat train.aug_* fields became the train.augment section
    **{f"train.aug_{name}": f"train.augment.{name}" for name in (
        "affine_prob", "rotate_deg", "scale", "flip_prob", "intensity_prob", "noise_std", "noise_prob", "brightness",
        "shift", "elastic_prob", "elastic_sigma", "elastic_magnitude", "blur_prob", "blur_sigma", "contrast_prob",
        "contrast", "lowres_prob", "lowres_zoom", "gamma_prob", "gamma")},
    # the preprocess.photo_* fields became the photo section
    **{f"preprocess.photo_{name}": f"photo.{name}" for name in ("color", "clahe", "fov_threshold", "fov_diameter")},
}


_WARNED: set[tuple[str, ...]] = set()


def apply_moved_keys(mapping: Any) -> Any:
    """A copy of ``mapping`` (nested dicts, as read from a config file) with every old key of MOVED_KEYS
    moved to its new place, and one warning naming the new keys. Anything but a mapping comes back as it
    is (``from_dict`` reports it); ``mapping`` itself is left unchanged."""
    if not isinstance(mapping, dict):
        return mapping
    result = copy.deepcopy(mapping)
    moved = []
    for old, new in MOVED_KEYS.items():
        *old_path, old_name = old.split(".")
        old_section = _section(result, old_path)
        if old_section is None or old_name not in old_section:
            continue
        *new_path, new_name = new.split(".")
        new_section = _section(result, new_path, create=True)
        if new_section is None:
            continue  # the new place is not a mapping: from_dict rejects the old key, listing the valid ones
        if new_name in new_section:
            raise ConfigError(f"{old} and {new} are both given; {old} is the old name of {new}: keep only {new}")
        new_section[new_name] = old_section.pop(old_name)
        moved.append(f"{old} -> {new}")
    if moved and tuple(moved) not in _WARNED:  # once per process: a run folder's config is read more than once
        _WARNED.add(tuple(moved))
        log.warning("config keys renamed (the old names still load; write the new ones): %s", ", ".join(moved))
    return result


def _section(mapping: dict, path: list[str], create: bool = False) -> dict | None:
    """The nested mapping at ``path``, or None where that is missing or not a mapping (with ``create``,
    missing or null levels become empty mappings)."""
    for name in path:
        child = mapping.get(name)
        if child is None and create:
            child = mapping[name] = {}
        if not isinstance(child, dict):
            return None
        mapping = child
    return mapping


# ----------------------------------------------------------------------------- dict <-> dataclass

def to_dict(obj: Any) -> Any:
    """Plain YAML-friendly structure (tuples become lists)."""
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(data: dict | None, cls: type = ExperimentConfig, where: str = "") -> Any:
    """Build ``cls`` from nested dicts, rejecting unknown keys and values of the wrong type. A plain
    converter: the keys must have today's names (a stored mapping goes through ``config_from_mapping``)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + str(k) for k in unknown)}; "
                          f"valid keys{' in ' + where if where else ''}: {', '.join(valid)}")
    kwargs = {}
    for name in valid:
        if name not in data:
            continue
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(data[name], hints[name], key)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if is_dataclass(hint):
        return from_dict(value, hint, key)
    if origin is tuple:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list")
        args = typing.get_args(hint)
        item_type = args[0]
        if len(args) > 1 and args[1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}={list(value)}: expected exactly {len(args)} values")
        return tuple(_coerce(v, item_type, key) for v in value)
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping such as {{2: 1}}")
        key_type, value_type = typing.get_args(hint)
        return {_coerce(k, key_type, key): _coerce(v, value_type, key) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    raise TypeError(f"unsupported config type {hint} for {key}")  # a programming error, not user input


# ----------------------------------------------------------------------------- files and overrides

# The configs shipped inside the package (configs/ at the repository root links here).
SHIPPED_CONFIGS = Path(__file__).parent.parent / "configs"


def shipped_configs() -> list[str]:
    """Names of the configs shipped with liverseg (``--config NAME`` finds them)."""
    return sorted(path.stem for path in SHIPPED_CONFIGS.glob("*.yaml"))


def resolve_config(path: str | Path) -> Path:
    """A config file: ``path`` itself when it is a file (a path always wins), else the shipped config of
    that name (``demo_3d`` or ``demo_3d.yaml``); otherwise an error that lists the shipped names."""
    path = Path(path)
    if path.is_file():
        return path
    if len(path.parts) == 1:  # a bare name, no folder
        stem = path.name[:-len(path.suffix)] if path.suffix in (".yaml", ".yml") else path.name
        shipped = SHIPPED_CONFIGS / f"{stem}.yaml"
        if stem and shipped.is_file():
            return shipped
    raise ConfigError(f"{path}: config file not found (nor a shipped config of that name; shipped: "
                      f"{', '.join(shipped_configs())})")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Defaults, updated by a YAML file (a path, or the name of a shipped config), updated by ``a.b=value``
    overrides; validated."""
    data: dict = {}
    if path is not None:
        path = resolve_config(path)
        data = _read_mapping(path)
    for override in overrides:
        _apply_override(data, override)
    try:
        return from_dict(data).validate()
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from None
        raise


def _read_mapping(path: Path) -> dict:
    """A config file's top-level mapping, old key names moved to their new places."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
    try:
        return apply_moved_keys(loaded or {})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _apply_override(data: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"--set {override!r}: expected SECTION.KEY=VALUE, e.g. train.lr=3e-4")
    dotted, raw = override.split("=", 1)
    dotted = dotted.strip()
    if dotted in MOVED_KEYS:
        log.warning("--set %s: renamed to %s (the old name still works)", dotted, MOVED_KEYS[dotted])
        dotted = MOVED_KEYS[dotted]
    parts = dotted.split(".")
    if len(parts) < 2 or not all(parts) or not _names_a_section(parts[:-1]):
        raise ConfigError(f"--set {override!r}: the key must be SECTION.KEY, e.g. train.lr, or "
                          f"SECTION.SUBSECTION.KEY, e.g. train.augment.flip_prob; sections: "
                          f"{', '.join(f.name for f in fields(ExperimentConfig))}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    section = data
    for name in parts[:-1]:
        if section.get(name) is None:  # missing, or an empty section in the file
            section[name] = {}
        section = section[name]
        if not isinstance(section, dict):
            raise ConfigError(f"--set {override!r}: {name} is not a section")
    section[parts[-1]] = value


def _names_a_section(path: list[str]) -> bool:
    """Whether ``path`` leads through sections of ExperimentConfig (a single unknown name passes: from_dict
    then reports it with the list of sections)."""
    cls = ExperimentConfig
    for name in path:
        hint = typing.get_type_hints(cls).get(name)
        if hint is None and len(path) == 1:
            return True
        if not is_dataclass(hint):
            return False
        cls = hint
    return True


def apply_overrides(cfg: ExperimentConfig, overrides: list[str] | tuple[str, ...]) -> ExperimentConfig:
    data = to_dict(cfg)
    for override in overrides:
        _apply_override(data, override)
    return from_dict(data).validate()


def save_config(cfg: ExperimentConfig, path: str | Path) -> Path:
    """Write the resolved config atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)
    return write_text_atomic(text, path)


def config_from_mapping(data: Any) -> ExperimentConfig:
    """The validated config of a stored mapping (a run folder's config.yaml, a checkpoint's or an exported
    model's config), whose keys may still have the old names of MOVED_KEYS (one warning)."""
    return from_dict(apply_moved_keys(data)).validate()


def config_from_yaml_text(text: str) -> ExperimentConfig:
    return config_from_mapping(yaml.safe_load(text))


__all__ = ["MOVED_KEYS", "SHIPPED_CONFIGS", "apply_moved_keys", "apply_overrides", "config_from_mapping",
           "config_from_yaml_text", "from_dict", "load_config", "resolve_config", "save_config", "shipped_configs",
           "to_dict"]
