"""A run's training cases, for every modality: the manifest its config names, and each case as the item
dict (``{"id", "image", "label", ...}`` paths) that ``Modality.load_case`` and the loaders take. No PyTorch:
planning and checks use it without loading the training stack."""
from __future__ import annotations

from ..config import ExperimentConfig
from ..datasets.manifest import Case, Manifest, load_manifest
from ..errors import ConfigError, InputError


def load_training_manifest(cfg: ExperimentConfig, manifest_override: str | None = None) -> Manifest:
    manifest_path = manifest_override or cfg.data.manifest
    if not manifest_path:
        raise ConfigError("data.manifest is empty: set it in the config or with --set data.manifest=PATH "
                          "(a liverseg manifest JSON or an MSD dataset.json)")
    return load_manifest(manifest_path, cfg.data.root or None)


def case_dicts(cases: list[Case], split: str, manifest: Manifest, need_labels: bool = True) -> list[dict]:
    items = []
    for case in cases:
        if not case.image.exists():
            raise InputError(f"{manifest.path}: case {case.case_id} image {case.image} not found; check "
                             "data.root (paths in the manifest are relative to it)")
        if need_labels:
            if case.label is None:
                raise InputError(f"{manifest.path}: case {case.case_id} in split {split!r} has no label")
            if not case.label.exists():
                raise InputError(f"{manifest.path}: case {case.case_id} label {case.label} not found")
        if case.fov is not None and not case.fov.exists():
            raise InputError(f"{manifest.path}: case {case.case_id} field-of-view mask {case.fov} not found")
        item = {"id": case.case_id, "image": str(case.image), "label": str(case.label) if case.label else None}
        if case.fov is not None:  # photographs only; CT items keep their keys (the disk cache hashes them)
            item["fov"] = str(case.fov)
        if case.label_format != "volume":  # labels stored as DICOM mask folders, PNG slices or DICOM SEG
            item["label_format"], item["structures"] = case.label_format, dict(case.structures)
        items.append(item)
    if not items:
        raise InputError(f"{manifest.path}: split {split!r} is empty")
    return items


__all__ = ["load_training_manifest", "case_dicts"]
