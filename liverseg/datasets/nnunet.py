"""nnU-Net v2 raw datasets, read as liverseg manifests.

An nnU-Net v2 dataset folder (``nnUNet_raw/DatasetXXX_Name``) holds::

    dataset.json       {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
                        "numTraining": 131, "file_ending": ".nii.gz", "name": "..."(optional)}
    imagesTr/<case>_0000<file_ending>     labelsTr/<case><file_ending>
    imagesTs/<case>_0000<file_ending>     (optional; labelsTs/<case><file_ending> is used when present)
    splits_final.json  (optional; nnU-Net writes it to nnUNet_preprocessed/DatasetXXX_Name/; copy it here)

liverseg is single-channel CT: exactly one channel (``_0000``) is accepted; several channels,
region-based labels (a label whose value is a list) and the ``ignore`` label are refused.

Splits (the same names as every liverseg manifest): ``fold{k}`` is nnU-Net fold k's ``val`` list,
``train_fold{k}`` its ``train`` list, ``train``/``val`` are fold 0, ``all`` every training case and
``test`` the ``imagesTs`` cases. The folds come from ``splits_final.json`` beside ``dataset.json``;
without it they are the folds nnU-Net itself would generate (5-fold KFold, shuffled with seed 12345,
over the sorted case ids), so liverseg fold k and ``nnUNetv2_train ... k`` hold out the same cases.

This module returns plain dicts (paths relative to the dataset folder, as in a liverseg manifest);
``liverseg.datasets.manifest`` turns them into a ``Manifest`` or writes them with ``manifest import nnunet``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.labels import natural_key

SPLITS_FILE = "splits_final.json"
N_FOLDS = 5
SEED = 12345  # nnunetv2.utilities.crossval_split.generate_crossval_split


def is_nnunet_v2(data: dict) -> bool:
    """A dataset.json written for nnU-Net v2 (``channel_names`` / ``file_ending``), not a liverseg manifest."""
    return "cases" not in data and ("channel_names" in data or "file_ending" in data)


def _labels(data: dict, path: Path) -> dict[str, int]:
    labels = data.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{path}: 'labels' must map label names to integer values, e.g. "
                         '{"background": 0, "liver": 1, "tumour": 2}')
    if data.get("regions_class_order"):
        raise InputError(f"{path}: region-based labels ('regions_class_order') are not supported; liverseg "
                         "trains one integer value per label")
    values: dict[str, int] = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise InputError(f"{path}: label {name!r} is a region {value} (nnU-Net region-based training); "
                             "liverseg needs one integer value per label name")
        if isinstance(value, bool) or not (isinstance(value, int) or str(value).isdigit()):
            raise InputError(f"{path}: label {name!r} has value {value!r}; label values must be integers >= 0")
        if str(name).lower() == "ignore":
            raise InputError(f"{path}: the 'ignore' label (nnU-Net's unannotated voxels) is not supported; "
                             "liverseg trains on fully annotated label maps")
        values[str(name)] = int(value)
    if 0 not in values.values():
        raise InputError(f"{path}: 'labels' has no value 0; nnU-Net and liverseg need background = 0")
    if len(set(values.values())) != len(values):
        raise InputError(f"{path}: 'labels' gives two names the same value: {labels}")
    return values


def _file_ending(data: dict, path: Path) -> str:
    ending = data.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith(".") or len(ending) < 2:
        raise InputError(f"{path}: needs 'file_ending', the images' file ending, e.g. \".nii.gz\" "
                         f"(got {ending!r})")
    return ending


def _check_channels(data: dict, path: Path) -> None:
    channels = data.get("channel_names", data.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise InputError(f"{path}: needs 'channel_names', e.g. {{\"0\": \"CT\"}}")
    if len(channels) != 1 or str(next(iter(channels))) not in ("0", "0000"):
        raise InputError(f"{path}: {len(channels)} input channels {dict(channels)}; liverseg segments single-"
                         "channel CT and needs exactly one channel, {\"0\": \"CT\"}")


def _scan(folder: Path, ending: str, path: Path) -> dict[str, Path]:
    """``<case>_XXXX<ending>`` files of ``folder`` -> {case: channel-0 file}; refuses other channels."""
    if not folder.is_dir():
        return {}
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    matching = [p for p in files if p.name.endswith(ending)]
    if files and not matching:
        raise InputError(f"{path}: file_ending is {ending!r} but {folder.name}/ holds no such file "
                         f"(e.g. {files[0].name}); fix 'file_ending' in dataset.json")
    found: dict[str, Path] = {}
    for image in matching:
        match = re.fullmatch(r"(.+)_(\d{4})", image.name[: -len(ending)])
        if match is None:
            raise InputError(f"{folder / image.name}: not named <case>_0000{ending} (nnU-Net's channel suffix)")
        if match.group(2) != "0000":
            raise InputError(f"{folder / image.name}: channel {match.group(2)}; liverseg segments single-channel "
                             f"CT and reads only <case>_0000{ending}")
        found[match.group(1)] = image
    return found


def _rel(file: Path, base: Path) -> str:
    try:
        return file.relative_to(base).as_posix()
    except ValueError:
        return str(file)


def _explicit_cases(data: dict, path: Path, base: Path) -> list[dict]:
    """nnU-Net v2's optional ``"dataset": {case: {"images": [...], "label": ...}}`` instead of imagesTr/."""
    entries = data["dataset"]
    if not isinstance(entries, dict):
        raise InputError(f"{path}: 'dataset' must map case ids to {{\"images\": [...], \"label\": ...}}")
    cases = []
    for case_id, entry in entries.items():
        images = entry.get("images") if isinstance(entry, dict) else None
        if not isinstance(images, list) or not images or not entry.get("label"):
            raise InputError(f"{path}: dataset entry {case_id!r} needs 'images' (a list) and 'label'")
        if len(images) != 1:
            raise InputError(f"{path}: case {case_id} has {len(images)} channel images; liverseg segments "
                             "single-channel CT")
        image, label = base / images[0], base / entry["label"]
        for file in (image, label):
            if not file.is_file():
                raise InputError(f"{path}: case {case_id}: {file} not found")
        cases.append({"id": str(case_id), "image": _rel(image, base), "label": _rel(label, base)})
    return cases


def default_folds(case_ids: list[str], n_folds: int = N_FOLDS, seed: int = SEED) -> list[dict[str, list[str]]]:
    """The folds nnU-Net v2 generates when no splits_final.json exists: sklearn's
    ``KFold(n_folds, shuffle=True, random_state=seed)`` over the sorted ids (reproduced with numpy)."""
    keys = sorted(case_ids)
    order = np.arange(len(keys))
    np.random.RandomState(seed).shuffle(order)
    folds, start = [], 0
    for k in range(n_folds):
        size = len(keys) // n_folds + (1 if k < len(keys) % n_folds else 0)
        held_out = set(order[start:start + size].tolist())
        start += size
        folds.append({"train": [c for i, c in enumerate(keys) if i not in held_out],
                      "val": [c for i, c in enumerate(keys) if i in held_out]})
    return folds


def _read_splits(file: Path, training: list[str]) -> list[dict[str, list[str]]]:
    try:
        folds = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{file}: not valid JSON ({exc})") from None
    if (not isinstance(folds, list) or not folds
            or not all(isinstance(f, dict) and isinstance(f.get("train"), list) and isinstance(f.get("val"), list)
                       for f in folds)):
        raise InputError(f"{file}: expected nnU-Net's list of {{\"train\": [...], \"val\": [...]}}, one per fold")
    known = set(training)
    for k, fold in enumerate(folds):
        unknown = [str(c) for c in fold["train"] + fold["val"] if str(c) not in known]
        if unknown:
            raise InputError(f"{file}: fold {k} names case(s) not in imagesTr/: {', '.join(unknown[:5])}"
                             f"{' ...' if len(unknown) > 5 else ''}")
    return [{"train": [str(c) for c in f["train"]], "val": [str(c) for c in f["val"]]} for f in folds]


def read_nnunet(data: dict, path: Path, base: Path) -> dict:
    """dataset.json (already parsed) at ``path``, files under ``base`` -> ``{"name", "labels", "cases",
    "splits", "folds_from"}``; case paths are relative to ``base``."""
    labels = _labels(data, path)
    _check_channels(data, path)
    ending = _file_ending(data, path)
    if "dataset" in data:
        cases = _explicit_cases(data, path, base)
    else:
        images = _scan(base / "imagesTr", ending, path)
        if not images:
            raise InputError(f"{path}: no imagesTr/<case>_0000{ending} files under {base}; give the nnU-Net "
                             "dataset folder (or --root it)")
        cases = []
        for case_id, image in images.items():
            label = base / "labelsTr" / f"{case_id}{ending}"
            if not label.is_file():
                raise InputError(f"{path}: case {case_id} has no label file {label}")
            cases.append({"id": case_id, "image": _rel(image, base), "label": _rel(label, base)})
    cases.sort(key=lambda c: natural_key(c["id"]))
    training = [c["id"] for c in cases]
    expected = data.get("numTraining")
    if expected is not None and expected != len(training):
        raise InputError(f"{path}: numTraining is {expected} but {len(training)} training cases were found")
    tests = []
    for case_id, image in sorted(_scan(base / "imagesTs", ending, path).items(), key=lambda x: natural_key(x[0])):
        if case_id in training:
            raise InputError(f"{path}: case id {case_id!r} is both in imagesTr/ and imagesTs/")
        label = base / "labelsTs" / f"{case_id}{ending}"
        test = {"id": case_id, "image": _rel(image, base)}
        tests.append(test | {"label": _rel(label, base)} if label.is_file() else test)

    splits_file = path.parent / SPLITS_FILE
    if splits_file.is_file():
        folds, folds_from = _read_splits(splits_file, training), str(splits_file)
    elif len(training) >= 2:
        folds = default_folds(training, min(N_FOLDS, len(training)))
        folds_from = f"nnU-Net's default {len(folds)}-fold split (KFold, seed {SEED}, sorted ids)"
    else:
        folds, folds_from = [], "none (fewer than 2 training cases)"
    splits: dict[str, list[str]] = {}
    for k, fold in enumerate(folds):
        splits[f"fold{k}"], splits[f"train_fold{k}"] = fold["val"], fold["train"]
    if folds:
        splits["train"], splits["val"] = folds[0]["train"], folds[0]["val"]
    else:
        splits["train"] = list(training)
    splits["all"] = list(training)
    if tests:
        splits["test"] = [c["id"] for c in tests]
    return {"name": str(data.get("name") or path.parent.name), "labels": labels, "cases": cases + tests,
            "splits": splits, "folds_from": folds_from}
