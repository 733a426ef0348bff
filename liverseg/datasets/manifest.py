"""Dataset manifests: which cases exist, where their files are, how labels are stored, fixed splits.

Three layouts are read (the JSON format is documented in ``data_manifests/README.md``):

* liverseg's own JSON::

    {"name": "phantoms", "labels": {"background": 0, "liver": 1},
     "label_format": "volume",                      (optional; or masks_dicom, png_slices, dicom_seg)
     "structures": {"liver": 1, "livertumor*": 2},  (optional; mask folder / segment names -> values)
     "cases": [{"id": "p000", "image": "images/p000.nii.gz", "label": "labels/p000.nii.gz",
                "sha256": {"image": "...", "label": "..."}}, ...],
     (2D photographs may add "fov": a field-of-view mask for each case)
     "splits": {"train": ["p000", ...], "val": [...], "test": [...]}}

* a Medical Segmentation Decathlon ``dataset.json`` (``"training": [{"image", "label"}, ...]``), as in
  Task03_Liver. Its cases are sorted by id and split into 5 fixed folds by position (case i goes to
  fold i % 5): split ``val`` is fold 0, ``train`` the other four, ``fold0``..``fold4`` name each fold.

* an nnU-Net v2 ``dataset.json`` (``channel_names``, ``labels``, ``file_ending``, ``numTraining``) with
  ``imagesTr/<case>_0000<ending>`` + ``labelsTr/<case><ending>`` and ``imagesTs/`` as split ``test``; folds
  from ``splits_final.json`` beside it, else nnU-Net's own default folds (see ``liverseg.datasets.nnunet``).

Paths inside a manifest are relative to ``root`` (default: the manifest's folder).

Importers (``IMPORTERS``, ``import_manifest``) scan a dataset as its publisher ships it and write a
liverseg manifest with fixed folds: ``msd`` (Task03_Liver), ``lits``, ``ircadb`` (3D-IRCADb-01),
``chaos`` (CHAOS CT), ``nnunet`` (an nnU-Net v2 dataset folder).
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..atomic import write_text_atomic
from .download import file_hash
from ..io.formats import strip_image_suffix
from ..io.labels import LABEL_FORMATS, natural_key
from .nnunet import is_nnunet_v2, read_nnunet
from .photo_manifests import PHOTO_IMPORTERS

N_FOLDS = 5


@dataclass(frozen=True)
class Case:
    case_id: str
    image: Path
    label: Path | None
    # 2D photographs: the field-of-view mask (metrics such as ROC AUC are computed inside it).
    fov: Path | None = None
    # how the label is stored (see liverseg.io.labels) and, for mask folders / SEG, names -> values
    label_format: str = "volume"
    structures: dict[str, int] = field(default_factory=dict, compare=False, hash=False)
    # optional expected sha256 of the image / label file, verified by `liverseg check`
    sha256: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Manifest:
    name: str
    path: Path
    cases: dict[str, Case]
    splits: dict[str, tuple[str, ...]]
    labels: dict[str, int] = field(default_factory=dict, compare=False, hash=False)

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
    # --root wins; else the dataset folder recorded by `liverseg manifest import` (when the manifest
    # was written outside it); else the manifest's own folder.
    base = Path(root) if root else Path(data["root"]) if isinstance(data.get("root"), str) else path.parent
    if is_nnunet_v2(data):
        return _from_nnunet(data, path, base)
    if "training" in data and "cases" not in data:
        return _from_msd(data, path, base)
    return _from_liverseg(data, path, base)


def _label_values(data: dict, path: Path) -> dict[str, int]:
    labels = data.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, int) or str(v).isdigit() for v in labels.values()):
        raise InputError(f"{path}: 'labels' must map label names to integer values, e.g. "
                         '{"background": 0, "liver": 1}')
    return {str(k): int(v) for k, v in labels.items()}


def _from_liverseg(data: dict, path: Path, base: Path) -> Manifest:
    if not isinstance(data.get("cases"), list):
        raise InputError(f"{path}: needs a 'cases' list of {{id, image, label}} objects")
    default_format = str(data.get("label_format", "volume"))
    default_structures = data.get("structures") or {}
    cases: dict[str, Case] = {}
    for index, entry in enumerate(data["cases"]):
        if not isinstance(entry, dict) or "id" not in entry or "image" not in entry:
            raise InputError(f"{path}: case #{index} needs at least 'id' and 'image', got {entry!r}")
        case_id = str(entry["id"])
        if case_id in cases:
            raise InputError(f"{path}: case id {case_id!r} appears twice")
        label_format = str(entry.get("label_format", default_format))
        if label_format not in LABEL_FORMATS:
            raise InputError(f"{path}: case {case_id}: label_format {label_format!r} is unknown; known: "
                             f"{', '.join(LABEL_FORMATS)}")
        structures = entry.get("structures", default_structures)
        sha256 = entry.get("sha256") or {}
        if not isinstance(structures, dict) or not isinstance(sha256, dict):
            raise InputError(f"{path}: case {case_id}: 'structures' and 'sha256' must be JSON objects")
        label, fov = entry.get("label"), entry.get("fov")
        cases[case_id] = Case(case_id, base / entry["image"], base / label if label else None,
                              base / fov if fov else None, label_format,
                              {str(k): int(v) for k, v in structures.items()}, {str(k): str(v) for k, v in sha256.items()})
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
    return Manifest(str(data.get("name", path.stem)), path, cases, splits, _label_values(data, path))


def _from_nnunet(data: dict, path: Path, base: Path) -> Manifest:
    read = read_nnunet(data, path, base)
    cases = {c["id"]: Case(c["id"], base / c["image"], base / c["label"] if c.get("label") else None)
             for c in read["cases"]}
    return Manifest(read["name"], path, cases, {k: tuple(v) for k, v in read["splits"].items()}, read["labels"])


def _channel_file(image: Path) -> Path:
    """nnU-Net (v1) lists ``imagesTr/la_003.nii.gz`` in dataset.json but stores ``la_003_0000.nii.gz``."""
    if image.exists():
        return image
    stem = strip_image_suffix(image.name)
    channel0 = image.with_name(stem + "_0000" + image.name[len(stem):])
    return channel0 if channel0.exists() else image


def _from_msd(data: dict, path: Path, base: Path) -> Manifest:
    modalities = data.get("modality")
    if isinstance(modalities, dict) and len(modalities) > 1:
        raise InputError(f"{path}: {len(modalities)} input channels {modalities}; liverseg segments single-channel "
                         "CT and needs exactly one")
    cases: dict[str, Case] = {}
    for index, entry in enumerate(data["training"]):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise InputError(f"{path}: training entry #{index} needs 'image' and 'label', got {entry!r}")
        case_id = strip_image_suffix(Path(entry["image"]).name)
        cases[case_id] = Case(case_id, _channel_file(base / entry["image"]), base / entry["label"])
    splits = {k: tuple(v) for k, v in fold_splits(list(cases), N_FOLDS).items()}
    labels = {str(name): int(value) for value, name in (data.get("labels") or {}).items() if str(value).isdigit()}
    return Manifest(str(data.get("name", path.stem)), path, cases, splits, labels)


def fold_splits(case_ids: list[str], n_folds: int = N_FOLDS) -> dict[str, list[str]]:
    """Fixed folds by position in natural id order (case i -> fold i % n): ``fold0``..``fold{n-1}``,
    ``train_fold{k}`` (every other fold), ``train``/``val`` (= fold 0 held out) and ``all``."""
    ordered = sorted(case_ids, key=natural_key)
    folds = {f"fold{k}": [c for i, c in enumerate(ordered) if i % n_folds == k] for k in range(n_folds)}
    splits: dict[str, list[str]] = dict(folds)
    for k in range(n_folds):
        splits[f"train_fold{k}"] = [c for i, c in enumerate(ordered) if i % n_folds != k]
    splits["train"], splits["val"], splits["all"] = splits["train_fold0"], folds["fold0"], ordered
    return splits


def write_manifest(path: Path, name: str, labels: dict[str, int], cases: list[dict],
                   splits: dict[str, list[str]], **extra) -> Path:
    """Write a liverseg manifest atomically; ``extra`` top-level keys (description, label_format,
    structures, source) are written after ``labels``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"name": name, "labels": labels, **{k: v for k, v in extra.items() if v is not None},
            "cases": cases, "splits": splits}
    return write_text_atomic(json.dumps(data, indent=2) + "\n", path)


# ----------------------------------------------------------------------------------------------------
# Importers: publisher's layout -> manifest dict (the keyword arguments of write_manifest)
# ----------------------------------------------------------------------------------------------------

def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _visible(paths) -> list[Path]:
    """Drop macOS resource forks ('._liver_0.nii.gz') and hidden files that archives carry along."""
    return [p for p in paths if not p.name.startswith(".")]


def _need(root: Path, found: list, what: str) -> None:
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    if not found:
        raise InputError(f"{root}: no {what} found; is this the dataset's root folder?")


def import_msd(root: Path) -> dict:
    """Task03_Liver as the Decathlon ships it: imagesTr/liver_N.nii.gz + labelsTr/liver_N.nii.gz; also
    as nnU-Net stores it, imagesTr/liver_N_0000.nii.gz (channel 0) + labelsTr/liver_N.nii.gz."""
    root = Path(root)
    images = _visible(sorted((root / "imagesTr").glob("*.nii.gz"))) if (root / "imagesTr").is_dir() else []
    _need(root, images, "imagesTr/*.nii.gz (give the Task03_Liver folder)")
    cases = []
    for image in images:
        case_id, label = strip_image_suffix(image.name), root / "labelsTr" / image.name
        channel = re.fullmatch(r"(.+)_(\d{4})", case_id)
        if not label.is_file() and channel:  # nnU-Net's <case>_XXXX channel suffix
            if channel.group(2) != "0000":
                raise InputError(f"{root}: imagesTr/{image.name} is channel {channel.group(2)}; liverseg "
                                 "segments single-channel CT (only <case>_0000.nii.gz)")
            case_id, label = channel.group(1), root / "labelsTr" / f"{channel.group(1)}.nii.gz"
        if not label.is_file():
            raise InputError(f"{root}: {image.name} has no label labelsTr/{label.name}")
        cases.append({"id": case_id, "image": _rel(image, root), "label": _rel(label, root)})
    cases.sort(key=lambda c: natural_key(c["id"]))
    return {"name": "msd_task03_liver",
            "source": "http://medicaldecathlon.com/ (Task03_Liver.tar; mirror used by MONAI and `liverseg download "
                      "msd_liver`: https://msd-for-monai.s3-us-west-2.amazonaws.com/Task03_Liver.tar)",
            "labels": {"background": 0, "liver": 1, "tumour": 2},
            "description": "Medical Segmentation Decathlon Task03 Liver (LiTS training data, CC BY-SA 4.0), "
                           "training cases; --root is the Task03_Liver folder. 5 fixed folds by natural id order.",
            "cases": cases, "splits": fold_splits([c["id"] for c in cases])}


def import_lits(root: Path) -> dict:
    """LiTS as the challenge ships it: volume-N.nii + segmentation-N.nii (any sub-folder, e.g.
    'Training Batch 1/')."""
    root = Path(root)
    volumes = _visible(p for p in root.rglob("volume-*.nii*") if re.fullmatch(r"volume-\d+\.nii(\.gz)?", p.name))
    _need(root, volumes, "volume-N.nii files")
    segmentations = {re.sub(r"\D", "", p.name.split(".")[0]): p for p in _visible(root.rglob("segmentation-*.nii*"))}
    cases = []
    for volume in volumes:
        number = re.sub(r"\D", "", volume.name.split(".")[0])
        label = segmentations.get(number)
        if label is None:
            raise InputError(f"{root}: {_rel(volume, root)} has no segmentation-{number}.nii")
        cases.append({"id": f"lits{int(number):03d}", "image": _rel(volume, root), "label": _rel(label, root)})
    cases.sort(key=lambda c: natural_key(c["id"]))
    return {"name": "lits",
            "source": "https://competitions.codalab.org/competitions/17094 (LiTS training batches 1 and 2)",
            "labels": {"background": 0, "liver": 1, "tumour": 2},
            "description": "LiTS (Liver Tumor Segmentation Challenge) training set; --root holds the 'Training "
                           "Batch 1/2' folders. 5 fixed folds by natural id order.",
            "cases": cases, "splits": fold_splits([c["id"] for c in cases])}


IRCADB_STRUCTURES = {"liver": 1, "livertumor*": 2}


def import_ircadb(root: Path) -> dict:
    """3D-IRCADb-01: 3Dircadb1.N/PATIENT_DICOM/ (image) + 3Dircadb1.N/MASKS_DICOM/<structure>/ (masks),
    with the per-patient zip files already extracted."""
    root = Path(root)
    patients = sorted((p for p in root.glob("**/PATIENT_DICOM") if p.is_dir()), key=lambda p: natural_key(str(p)))
    _need(root, patients, "<patient>/PATIENT_DICOM folders (extract each patient's PATIENT_DICOM.zip and "
                          "MASKS_DICOM.zip first)")
    cases = []
    for patient in patients:
        masks = patient.parent / "MASKS_DICOM"
        if not masks.is_dir():
            raise InputError(f"{patient.parent}: has PATIENT_DICOM but no MASKS_DICOM folder")
        number = re.findall(r"\d+", patient.parent.name)
        case_id = f"ircadb{int(number[-1]):02d}" if number else patient.parent.name
        cases.append({"id": case_id, "image": _rel(patient, root), "label": _rel(masks, root)})
    return {"name": "ircadb01",
            "source": "https://www.ircad.fr/research/data-sets/liver-segmentation-3d-ircadb-01/",
            "labels": {"background": 0, "liver": 1, "tumour": 2},
            "description": "3D-IRCADb-01 (IRCAD), 20 venous-phase CTs; labels from MASKS_DICOM/<structure> "
                           "(liver -> 1, livertumor* -> 2). --root holds the 3Dircadb1.N folders.",
            "label_format": "masks_dicom", "structures": dict(IRCADB_STRUCTURES),
            "cases": cases, "splits": fold_splits([c["id"] for c in cases])}


def import_chaos(root: Path) -> dict:
    """CHAOS CT training set: <...>/CT/<n>/DICOM_anon/*.dcm + <...>/CT/<n>/Ground/liver_GT_*.png."""
    root = Path(root)
    folders = sorted((p.parent for p in root.glob("**/DICOM_anon") if (p.parent / "Ground").is_dir()
                      and "CT" in p.parent.parts[len(root.parts) - 1:]), key=lambda p: natural_key(p.name))
    _need(root, folders, "CT/<n>/DICOM_anon + Ground folders")
    cases = [{"id": f"chaos_ct{int(p.name):02d}" if p.name.isdigit() else p.name,
              "image": _rel(p / "DICOM_anon", root), "label": _rel(p / "Ground", root)} for p in folders]
    return {"name": "chaos_ct",
            "source": "https://chaos.grand-challenge.org/ (CHAOS_Train_Sets.zip, CT part)",
            "labels": {"background": 0, "liver": 1},
            "description": "CHAOS challenge CT training set (liver only); PNG masks paired with DICOM files in "
                           "name order. --root holds Train_Sets/.",
            "label_format": "png_slices", "structures": {"liver": 1},
            "cases": cases, "splits": fold_splits([c["id"] for c in cases])}


def import_nnunet(root: Path) -> dict:
    """An nnU-Net v2 raw dataset folder (dataset.json, imagesTr/, labelsTr/, imagesTs/, and optionally
    splits_final.json copied from nnUNet_preprocessed/DatasetXXX_Name/)."""
    root = Path(root)
    dataset_json = root / "dataset.json"
    if not dataset_json.is_file():
        _need(root, [root], "")  # a missing folder
        raise InputError(f"{root}: no dataset.json here; give the nnU-Net dataset folder, e.g. "
                         "nnUNet_raw/Dataset003_Liver")
    try:
        data = json.loads(dataset_json.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{dataset_json}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not is_nnunet_v2(data):
        raise InputError(f"{dataset_json}: not an nnU-Net v2 dataset.json (no 'channel_names' / 'file_ending'); "
                         "for a Decathlon dataset.json use `liverseg manifest import msd`")
    read = read_nnunet(data, dataset_json, root)
    return {"name": read["name"], "labels": read["labels"],
            "source": f"nnU-Net v2 raw dataset {root.resolve().name}/dataset.json",
            "description": f"Imported from an nnU-Net v2 dataset folder: imagesTr/labelsTr training cases, "
                           f"imagesTs as split 'test'. Folds: {read['folds_from']}; fold{{k}} = nnU-Net fold k's "
                           "val cases, train_fold{k} its train cases, train/val = fold 0.",
            "cases": read["cases"], "splits": read["splits"]}


IMPORTERS: dict[str, Callable[[Path], dict]] = {
    "msd": import_msd,
    "lits": import_lits,
    "ircadb": import_ircadb,
    "chaos": import_chaos,
    "nnunet": import_nnunet,
    **PHOTO_IMPORTERS,  # drive, chase: 2D retinal photographs
}


def sha256_of(path: Path) -> str:
    return file_hash(path, "sha256")


def import_manifest(kind: str, root: str | Path, output: str | Path, *, sha256: bool = False) -> Path:
    """Scan ``root`` with the importer ``kind`` and write the manifest to ``output``; with ``sha256``
    record the checksum of every image/label file (folders are not hashed)."""
    if kind not in IMPORTERS:
        raise InputError(f"unknown dataset kind {kind!r}; known: {', '.join(sorted(IMPORTERS))}")
    root = Path(root)
    data = IMPORTERS[kind](root)
    if Path(output).resolve().parent != root.resolve():
        # Paths stay relative to the dataset folder; record it so the manifest works without --root
        # on this machine (--root overrides it anywhere else).
        data["root"] = str(root.resolve())
    if sha256:
        for case in data["cases"]:
            sums = {key: sha256_of(root / case[key]) for key in ("image", "label")
                    if case.get(key) and (root / case[key]).is_file()}
            if sums:
                case["sha256"] = sums
    return write_manifest(Path(output), **data)
