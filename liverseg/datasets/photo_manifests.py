"""Manifest importers for the public retinal-vessel datasets (2D photographs).

Each importer takes the dataset's root folder as distributed and returns a liverseg manifest dict
(``manifest.write_manifest`` writes it); paths are relative to ``root``, so the manifest works on any
machine that has the same layout, with ``--root``. Split conventions follow the literature:

* DRIVE: ``training/`` (20 images) is ``train``, ``test/`` (20) is ``test``; ground truth is the first
  observer (``1st_manual``); field of view from ``mask/``.
* CHASE_DB1: images sorted by name (Image_01L, Image_01R, ... Image_14R); the first 20 are ``train``,
  the last 8 ``test``; ground truth is the first observer (``*_1stHO.png``). The official archive has no
  field-of-view masks; a ``mask/`` folder of ``<image stem>.png`` (or ``*_mask.png`` files) is used when
  present, otherwise cases have none and metrics cover the whole image.

``val`` is the last two ``train`` cases: a monitoring subset of the training data (used only to pick
the best checkpoint), so ``test`` stays untouched.

CHASE_DB1 also gets 4 cross-validation folds over all 28 images, split by child so that both eyes of a
child are always on the same side (the two eyes of one child look alike; splitting them would leak):
child ``n`` (01..14) goes to fold ``(n - 1) % 4``, so folds hold 8, 8, 6 and 6 images. Splits ``cv_fold{k}``
(held out), ``cv_train{k}`` (the other three folds) and ``cv_val{k}`` (the last child of ``cv_train{k}``,
monitoring only, like ``val``).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from ..errors import InputError

log = logging.getLogger(__name__)

VESSEL_LABELS = {"background": 0, "vessel": 1}
VALIDATION_CASES = 2


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _one(root: Path, pattern: str, what: str, required: bool = True) -> Path | None:
    matches = sorted(root.rglob(pattern))
    if len(matches) > 1:
        raise InputError(f"{root}: several files match {pattern!r} for {what} ({', '.join(str(m) for m in matches[:3])})")
    if not matches:
        if required:
            raise InputError(f"{root}: no {what} matching {pattern!r}; is this the dataset's root folder?")
        return None
    return matches[0]


def _splits(ids: list[str], n_train: int) -> dict[str, list[str]]:
    train = ids[:n_train]
    return {"train": train, "val": train[-VALIDATION_CASES:], "test": ids[n_train:]}


def import_drive(root: str | Path) -> dict:
    """DRIVE: ``{training,test}/images/NN_{training,test}.tif``, ``1st_manual/NN_manual1.gif``,
    ``mask/NN_{training,test}_mask.gif``."""
    root = Path(root)
    cases, ids_by_part = [], {"training": [], "test": []}
    for part in ("training", "test"):
        images = sorted((root / part / "images").glob(f"*_{part}.tif"))
        if not images:
            raise InputError(f"{root / part / 'images'}: no *_{part}.tif images; expected the DRIVE layout "
                             "ROOT/{training,test}/{images,1st_manual,mask}/")
        for image in images:
            number = image.name.split("_")[0]
            label = root / part / "1st_manual" / f"{number}_manual1.gif"
            fov = root / part / "mask" / f"{number}_{part}_mask.gif"
            for path, what in ((label, "first-observer manual segmentation"), (fov, "field-of-view mask")):
                if not path.is_file():
                    raise InputError(f"{path}: missing {what} for {image.name}")
            case_id = f"{number}_{part}"
            cases.append({"id": case_id, "image": _relative(image, root), "label": _relative(label, root),
                          "fov": _relative(fov, root)})
            ids_by_part[part].append(case_id)
    ids = ids_by_part["training"] + ids_by_part["test"]
    return {"name": "DRIVE", "labels": VESSEL_LABELS,
            "description": "DRIVE retinal vessels: training/ -> train, test/ -> test; first observer; FOV masks",
            "cases": cases,
            "splits": _splits(ids, len(ids_by_part["training"]))}


CHASE_IMAGE = re.compile(r"^Image_(\d{2})([LR])\.jpg$", re.IGNORECASE)
CHASE_TRAIN = 20
CHASE_CV_FOLDS = 4


def chase_cv_splits(ids: list[str], n_folds: int = CHASE_CV_FOLDS) -> dict[str, list[str]]:
    """``cv_fold{k}`` / ``cv_train{k}`` / ``cv_val{k}`` for k < n_folds, grouped by child (Image_NN*)."""
    child_of = {case_id: int(CHASE_IMAGE.match(case_id + ".jpg").group(1)) for case_id in ids}
    children = sorted(set(child_of.values()))
    fold_of_child = {child: i % n_folds for i, child in enumerate(children)}
    splits: dict[str, list[str]] = {}
    for k in range(n_folds):
        held_out = [c for c in ids if fold_of_child[child_of[c]] == k]
        train = [c for c in ids if fold_of_child[child_of[c]] != k]
        last_child = child_of[train[-1]]
        splits[f"cv_fold{k}"] = held_out
        splits[f"cv_train{k}"] = train
        splits[f"cv_val{k}"] = [c for c in train if child_of[c] == last_child]
    return splits


def import_chase(root: str | Path) -> dict:
    """CHASE_DB1: ``Image_NN{L,R}.jpg`` with ``Image_NN{L,R}_1stHO.png`` anywhere under ``root``."""
    root = Path(root)
    images = sorted((p for p in root.rglob("*.jpg") if CHASE_IMAGE.match(p.name)), key=lambda p: p.name.lower())
    if not images:
        raise InputError(f"{root}: no CHASE_DB1 images (Image_NN[L|R].jpg) found under it")
    names = [p.name.lower() for p in images]
    if len(set(names)) != len(names):
        raise InputError(f"{root}: the same CHASE_DB1 image name appears in several folders")
    cases, missing_fov = [], 0
    for image in images:
        stem = image.stem
        label = _one(root, f"{stem}_1stHO.png", f"first-observer label of {image.name}")
        fov = _one(root, f"mask/{stem}.png", "field-of-view mask", required=False) or \
            _one(root, f"{stem}_mask.png", "field-of-view mask", required=False)
        case = {"id": stem, "image": _relative(image, root), "label": _relative(label, root)}
        if fov is not None:
            case["fov"] = _relative(fov, root)
        else:
            missing_fov += 1
        cases.append(case)
    if missing_fov:
        log.warning("%s: %d of %d CHASE_DB1 images have no field-of-view mask (mask/<image>.png); their metrics "
                    "will cover the whole image", root, missing_fov, len(images))
    if len(cases) <= CHASE_TRAIN:
        raise InputError(f"{root}: found {len(cases)} CHASE_DB1 images; the standard split needs all 28 "
                         f"(first {CHASE_TRAIN} train, the rest test)")
    ids = [c["id"] for c in cases]
    return {"name": "CHASE_DB1", "labels": VESSEL_LABELS,
            "description": "CHASE_DB1 retinal vessels: first 20 images train, last 8 test; first observer (1stHO); "
                           f"{CHASE_CV_FOLDS} cross-validation folds by child (cv_fold/cv_train/cv_val k)",
            "cases": cases, "splits": {**_splits(ids, CHASE_TRAIN), **chase_cv_splits(ids)}}


PHOTO_IMPORTERS = {"drive": import_drive, "chase": import_chase}

__all__ = ["import_drive", "import_chase", "chase_cv_splits", "PHOTO_IMPORTERS"]
