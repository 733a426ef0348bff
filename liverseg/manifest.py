"""Dataset manifests: which cases exist, where their files are, and fixed splits.

Two layouts are read:

* liverseg's own JSON::

    {"name": "phantoms", "labels": {"background": 0, "liver": 1},
     "cases": [{"id": "p000", "image": "images/p000.nii.gz", "label": "labels/p000.nii.gz"}, ...],
     (2D photographs may add "fov": a field-of-view mask for each case)
     "splits": {"train": ["p000", ...], "val": [...], "test": [...]}}

* a Medical Segmentation Decathlon ``dataset.json`` (``"training": [{"image", "label"}, ...]``), as in
  Task03_Liver. Its cases are sorted by id and split into 5 fixed folds by position (case i goes to
  fold i % 5): split ``val`` is fold 0, ``train`` the other four, ``fold0``..``fold4`` name each fold.

Paths inside a manifest are relative to ``root`` (default: the manifest's folder).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .io.images import strip_image_suffix

MSD_FOLDS = 5


@dataclass(frozen=True)
class Case:
    case_id: str
    image: Path
    label: Path | None
    # 2D photographs: the field-of-view mask (metrics such as ROC AUC are computed inside it).
    fov: Path | None = None


@dataclass(frozen=True)
class Manifest:
    name: str
    path: Path
    cases: dict[str, Case]
    splits: dict[str, tuple[str, ...]]

    def split(self, name: str) -> list[Case]:
        if name not in self.splits:
            raise InputError(f"{self.path}: no split named {name!r}; splits in this manifest: "
                             f"{', '.join(sorted(self.splits)) or 'none'}")
        return [self.cases[case_id] for case_id in self.splits[name]]


def load_manifest(path: str | Path, root: str | Path | None = None) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object at the top level")
    base = Path(root) if root else path.parent
    if "training" in data and "cases" not in data:
        return _from_msd(data, path, base)
    return _from_liverseg(data, path, base)


def _from_liverseg(data: dict, path: Path, base: Path) -> Manifest:
    if not isinstance(data.get("cases"), list):
        raise InputError(f"{path}: needs a 'cases' list of {{id, image, label}} objects")
    cases: dict[str, Case] = {}
    for index, entry in enumerate(data["cases"]):
        if not isinstance(entry, dict) or "id" not in entry or "image" not in entry:
            raise InputError(f"{path}: case #{index} needs at least 'id' and 'image', got {entry!r}")
        case_id = str(entry["id"])
        if case_id in cases:
            raise InputError(f"{path}: case id {case_id!r} appears twice")
        label, fov = entry.get("label"), entry.get("fov")
        cases[case_id] = Case(case_id, base / entry["image"], base / label if label else None,
                              base / fov if fov else None)
    splits_data = data.get("splits", {})
    if not isinstance(splits_data, dict):
        raise InputError(f"{path}: 'splits' must map split names to lists of case ids")
    splits: dict[str, tuple[str, ...]] = {}
    for split, ids in splits_data.items():
        unknown = [str(i) for i in ids if str(i) not in cases]
        if unknown:
            raise InputError(f"{path}: split {split!r} names unknown case id(s) {', '.join(unknown[:5])}")
        splits[split] = tuple(str(i) for i in ids)
    splits.setdefault("all", tuple(cases))
    return Manifest(str(data.get("name", path.stem)), path, cases, splits)


def _from_msd(data: dict, path: Path, base: Path) -> Manifest:
    cases: dict[str, Case] = {}
    for index, entry in enumerate(data["training"]):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise InputError(f"{path}: training entry #{index} needs 'image' and 'label', got {entry!r}")
        case_id = strip_image_suffix(Path(entry["image"]).name)
        cases[case_id] = Case(case_id, base / entry["image"], base / entry["label"])
    ordered = sorted(cases, key=_natural_key)
    folds = {f"fold{k}": tuple(c for i, c in enumerate(ordered) if i % MSD_FOLDS == k) for k in range(MSD_FOLDS)}
    splits = dict(folds)
    splits["val"] = folds["fold0"]
    splits["train"] = tuple(c for i, c in enumerate(ordered) if i % MSD_FOLDS != 0)
    splits["all"] = tuple(ordered)
    return Manifest(str(data.get("name", path.stem)), path, cases, splits)


def _natural_key(text: str) -> tuple:
    """liver_2 before liver_10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def write_manifest(path: Path, name: str, labels: dict[str, int], cases: list[dict],
                   splits: dict[str, list[str]]) -> Path:
    """Write a liverseg manifest atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"name": name, "labels": labels, "cases": cases, "splits": splits}, indent=2)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
    os.replace(tmp, path)
    return path
