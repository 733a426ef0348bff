"""Synthetic DICOM CT series written with pydicom: single-frame slices (any orientation, positions,
file names, rescale, tilt, localizers) and enhanced multi-frame CT, for tests and benchmarks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


def ct_dataset(pixels: np.ndarray, position, *, series_uid: str, orientation=(1, 0, 0, 0, 1, 0),
               spacing=(0.8, 0.7), slope: float = 1.0, intercept: float = -1024.0, instance: int = 1,
               image_type=("ORIGINAL", "PRIMARY", "AXIAL"), modality: str = "CT", description: str = "synthetic",
               tilt: float | None = None) -> Dataset:
    """One single-frame CT slice; ``pixels`` (rows, cols) are stored values (before rescale)."""
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.ImageType = list(image_type)
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.SliceThickness = 2.0
    if tilt is not None:
        ds.GantryDetectorTilt = tilt
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    signed = pixels.dtype.kind == "i"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(signed)
    ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def normal_of(orientation) -> np.ndarray:
    o = np.asarray(orientation, dtype=float)
    return np.cross(o[:3], o[3:])


def write_series(folder: Path, volume: np.ndarray, *, origin=(-20.0, 10.0, 30.0), spacing=(0.8, 0.7),
                 slice_mm=2.0, orientation=(1, 0, 0, 0, 1, 0), series_uid: str | None = None, names=None,
                 positions=None, **kwargs) -> list[Path]:
    """``volume`` (slices, rows, cols) of stored values as one file per slice; returns the paths."""
    series_uid = series_uid or generate_uid()
    normal = normal_of(orientation)
    paths = []
    for k, pixels in enumerate(volume):
        position = np.asarray(origin) + k * slice_mm * normal if positions is None else positions[k]
        name = names[k] if names is not None else f"slice{k:03d}.dcm"
        paths.append(save(ct_dataset(pixels, position, series_uid=series_uid, orientation=orientation,
                                     spacing=spacing, instance=k + 1, **kwargs), folder / name))
    return paths


def multiframe_dataset(volume: np.ndarray, *, origin=(-20.0, 10.0, 30.0), spacing=(0.8, 0.7), slice_mm=2.0,
                       orientation=(1, 0, 0, 0, 1, 0), slopes=None, intercepts=None, order=None) -> Dataset:
    """An enhanced CT multi-frame object: per-frame positions and rescale, shared orientation/spacing.
    ``order`` stores the frames in another order than their positions (a reader must sort)."""
    n = volume.shape[0]
    order = list(range(n)) if order is None else list(order)
    slopes = [1.0] * n if slopes is None else slopes
    intercepts = [-1024.0] * n if intercepts is None else intercepts
    ds = ct_dataset(volume[0], origin, series_uid=generate_uid(), orientation=orientation, spacing=spacing)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept"):
        delattr(ds, tag)
    ds.NumberOfFrames = n
    shared = Dataset()
    ori = Dataset()
    ori.ImageOrientationPatient = [float(v) for v in orientation]
    meas = Dataset()
    meas.PixelSpacing = [float(v) for v in spacing]
    meas.SliceThickness = slice_mm
    shared.PlaneOrientationSequence = Sequence([ori])
    shared.PixelMeasuresSequence = Sequence([meas])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    normal = normal_of(orientation)
    for k in order:
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * slice_mm * normal]
        trans = Dataset()
        trans.RescaleSlope = slopes[k]
        trans.RescaleIntercept = intercepts[k]
        trans.RescaleType = "HU"
        item.PlanePositionSequence = Sequence([pos])
        item.PixelValueTransformationSequence = Sequence([trans])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.ascontiguousarray(volume[order]).astype("<i2" if volume.dtype.kind == "i" else "<u2").tobytes()
    return ds
