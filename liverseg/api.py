"""The plain Python entry point: ``liverseg.segment(image, model="liver")``.

    import liverseg
    labels, volume = liverseg.segment("ct.nii.gz")           # a file, or a DICOM series folder
    labels, volume = liverseg.segment(sitk_image)             # SimpleITK image
    labels, volume = liverseg.segment(nibabel_image)          # nibabel image (its affine is RAS)
    labels, volume = liverseg.segment((array, affine_ras))    # numpy array + 4x4 RAS affine
    result = liverseg.segment(path); result.warnings          # what makes the result doubtful
    result = liverseg.segment(ct, model="liver_lesions")      # liver 1, liver lesion 2
    result = liverseg.segment(ct, model="liver_lesions", liver_mask="liver.nii.gz")  # lesions in your liver

``labels`` is a uint8 array on exactly the input's voxel grid (0 background, 1 liver for the built-in
model; a run's own labels otherwise, names in ``result.label_names``); ``volume`` is the input as a
``liverseg.io.volume.Volume`` (array + RAS affine), the grid the labels belong to. ``model`` is a
built-in model name (``liverseg models``), a run folder written by ``liverseg train`` or a file
written by ``liverseg export``; loaded models are kept for the next call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .engine.loaded import predict
from .inference.sources import load_model
from .modalities import modality_for
from .io import read_volume
from .io.images import sitk_to_volume
from .io.volume import Volume


@dataclass
class Segmentation:
    """``labels, volume = result`` unpacks; ``warnings`` and ``label_names`` say more."""

    labels: np.ndarray
    volume: Volume
    label_names: tuple[str, ...]
    warnings: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.labels, self.volume))


def as_volume(image: Any) -> Volume:
    """A ``Volume`` from a path, a SimpleITK or nibabel image, an (array, RAS affine) pair or a Volume."""
    if isinstance(image, Volume):
        return image
    if isinstance(image, (str, Path)):
        return read_volume(image)
    if isinstance(image, tuple) and len(image) == 2:
        array, affine = image
        array, affine = np.asarray(array), np.asarray(affine, dtype=np.float64)
        if array.ndim != 3 or affine.shape != (4, 4):
            raise InputError(f"(array, affine): expected a 3D array and a 4x4 RAS affine, got shapes "
                             f"{array.shape} and {affine.shape}")
        return Volume(array, affine, {"format": "array"})
    module = type(image).__module__
    if module.startswith("SimpleITK"):
        return sitk_to_volume(image, Path("<SimpleITK image>"), {"format": "sitk"})
    if hasattr(image, "affine") and hasattr(image, "dataobj"):  # nibabel spatial images
        array = np.asanyarray(image.dataobj)
        if array.ndim == 4 and array.shape[3] == 1:
            array = array[..., 0]
        if array.ndim != 3:
            raise InputError(f"nibabel image of shape {array.shape}: liverseg needs a 3D volume")
        return Volume(array, np.asarray(image.affine, dtype=np.float64), {"format": "nibabel"})
    raise InputError(f"cannot segment a {type(image).__name__}: give a path, a SimpleITK or nibabel image, "
                     "or an (array, 4x4 RAS affine) pair")


@lru_cache(maxsize=4)
def _model(model: str, device: str | None, threads: int | None, backend: str):
    return load_model(model, device, threads, backend)


def segment(image: Any, model: str | Path = "liver", *, device: str | None = None, threads: int | None = None,
            backend: str = "auto", liver_mask: Any = None) -> Segmentation:
    """Segment one CT; see the module docstring. ``liver_mask`` (``model="liver_lesions"`` only): a liver on
    the CT's grid (path, image, (array, affine) or array) used instead of the liver stage."""
    volume = as_volume(image)
    bundle = _model(str(model), device, threads, backend)
    builtin = getattr(bundle.model, "segment_volume", None) is not None  # built-in models bring their own road
    mask = None
    if liver_mask is not None:
        if not builtin:
            raise InputError(f"liver_mask: only the two-stage built-in model (liver_lesions) takes one, not {model}")
        mask = liver_mask if isinstance(liver_mask, np.ndarray) else as_volume(liver_mask)
        if isinstance(mask, Volume):
            if mask.shape != volume.shape or not np.allclose(mask.affine_ras, volume.affine_ras, atol=1e-3):
                raise InputError("liver_mask: its grid (shape and affine) differs from the CT's; resample it onto "
                                 "the CT first")
            mask = np.asarray(mask.array)
    elif not builtin and not modality_for(bundle.cfg).traits.volume_inputs:
        raise InputError(f"--model {model}: a {bundle.cfg.data.modality} model; liverseg.segment is for CT")
    labels, _, warnings, details = predict(bundle, volume, threads=threads, liver_mask=mask)
    return Segmentation(labels, volume, tuple(bundle.cfg.data.labels), list(warnings), dict(details))


__all__ = ["segment", "Segmentation", "as_volume"]
