"""Which cases a batch predicts: inputs (files, folders of files, DICOM folders, photographs) or a
manifest split, each a ``manifest.Case`` with a unique name (its output folder's).
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from ..io import case_name, is_image_file
from ..io.dicom import holds_dicom
from ..io.photos import is_photo_file
from ..datasets.manifest import Case, load_manifest

log = logging.getLogger(__name__)


def cases_from_inputs(inputs: Sequence[str | Path]) -> list[Case]:
    """One case per input; a folder holding image files is a folder of inputs.

    Photographs (PNG/JPEG/TIFF/GIF/BMP, for photo models) are one case each, named by their stem; a
    folder holding photographs and no volumes is a folder of them.

    A folder with NIfTI/NRRD/MHA files directly in it gives one case per file. Any other folder is one
    DICOM input (searched recursively, as ``read_volume`` does), so a nested PACS export keeps working;
    give several series folders as several inputs (``series_root/*``).

    A case is named after its file (without the image suffix) or its DICOM folder. When several inputs
    would get the same name (``s0001/ct.nii.gz``, ``s0002/ct.nii.gz``), each of them is named after the
    folder holding it instead (``s0001``, ``s0002``; ``a_s0001`` when those clash too): unique, and the
    same on every run with the same inputs.
    """
    cases = []
    for raw in inputs:
        path = Path(raw)
        if is_photo_file(path):  # 2D photographs (for photo models): the case is the file's stem
            cases.append(Case(path.stem, path, None))
            continue
        if path.is_dir():
            children = sorted(path.iterdir())
            photos = [c for c in children if c.is_file() and is_photo_file(c)]
            # a DICOM export with a viewer thumbnail (PACS CDs) is DICOM, not a folder of photographs
            if photos and not any(is_image_file(c) for c in children) and not holds_dicom(path):
                cases += [Case(c.stem, c, None) for c in photos]
                continue
            images = [c for c in children if is_image_file(c)]
            if images:
                cases += [Case(case_name(c), c, None) for c in images]
                continue
        cases.append(Case(case_name(path), path, None))
    return _unique_case_names(cases)


def _unique_case_names(cases: list[Case]) -> list[Case]:
    """Cases sharing a name are named after the folder holding their input (more of its path when the
    folders' names clash too); a clash that no folder resolves (one folder, or one file twice) is left
    for ``predict_cases`` to refuse."""
    names = [case.case_id for case in cases]
    result = list(cases)
    for name in sorted({n for n in names if names.count(n) > 1}):
        group = [i for i, n in enumerate(names) if n == name]
        parents = [Path(os.path.abspath(cases[i].image)).parent.parts[1:] for i in group]
        for depth in range(1, max(len(parts) for parts in parents) + 1):
            candidates = ["_".join(parts[-depth:]) for parts in parents]
            if all(candidates) and len(set(candidates)) == len(candidates):
                break
        else:
            continue
        for i, new_name in zip(group, candidates):
            result[i] = replace(cases[i], case_id=new_name)
        log.info("%d inputs are named %s: their cases are named after their folders (%s%s)", len(group), name,
                 ", ".join(candidates[:3]), ", ..." if len(candidates) > 3 else "")
    return result


def cases_from_manifest(manifest: str | Path, root: str | Path | None, split: str) -> list[Case]:
    return load_manifest(manifest, root).split(split)


__all__ = ["cases_from_inputs", "cases_from_manifest"]
