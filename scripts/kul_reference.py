#!/usr/bin/env python3
"""Reference pipeline: the ORIGINAL KU Leuven CT whole-liver recipe, rebuilt for benchmarking.

    python scripts/kul_reference.py INPUT -o OUT_FILE.nii.gz [--threads 2] [--no-crop]

INPUT is a NIfTI/NRRD/MHA file or a DICOM series folder; OUT_FILE receives the binary liver mask
(uint8 0/1) on exactly the input's voxel grid, written atomically. The wall time of each stage
(read, crop, resample+median, network, postprocess, write) is printed.

What this is: the speed / memory / accuracy *peer* of ``liverseg predict`` in benchmarks, i.e. "the
package's own pipeline, one fixed patch". It re-implements, in our own code, what the CT liver part of
``pyliverlesionseg==0.3`` (KU Leuven, Apache-2.0; ``cnn_liver_lesion_seg_CT_MR_main``) does:

1. orientation: the package works on an LPS-ordered array (array axes running to patient Left,
   Posterior, Superior). Here: the input's closest-RAS array (``liverseg.grid.record``), flipped along
   its first two axes;
2. ``crop_ct_image`` with the package's CT arguments: a body box from the largest soft-tissue blob; the
   liver dome from the air profile of the lungs (air blobs other than the outside air) and from the
   lower end of the lower-reaching of the two largest such blobs, plus 70 mm; the hip from local
   extrema of the bone profile, minus 20 mm, at most 400 mm below the dome; a second, 5x5x5-eroded
   soft-tissue box in x/y; then caps of 489 x 408 x 408 mm around the centre of the inner air;
3. resampling with pymirc's ``zoom3d`` rules to 1.5 mm, ``scipy.ndimage.median_filter(size=3)``,
   ``zoom3d`` to 3 mm; HU / 1000 clipped to [-0.2, 0.2] and times 2.5; flipped to RAS;
4. the U-Net on ONE fixed 189 x 162 x 162 patch (output 163 x 136 x 136) with the image centred as the
   package's centre sampler places it (liverseg's PyTorch port of the network and its weights);
5. ``cnn_liver_pred_postprocess``: > 0.5, erosion with the 18-neighbourhood, the largest 6-connected
   component, dilation with the 18-neighbourhood, ``scipy.ndimage.zoom(order=1, prefilter=False)``
   of the int16 mask back to the crop's shape (rounded to integers by scipy, then > 0), pasted into
   the full LPS volume; finally back to the input's voxel order.

Failure modes are kept: the crop is known to cut the liver off on scans without lungs (it takes bowel
gas for lungs), and an empty network output makes the package keep label 0, i.e. the whole crop box
(warned here, not corrected).

Differences from the package, on purpose:

* reading: ``liverseg.io.read_volume`` (SimpleITK / pydicom) instead of nibabel / pymirc; the array
  orientation is the same closest-LPS one. The voxel size stays float32 for image files, as the
  package's ``header['pixdim']`` is, and float64 for DICOM, as pymirc's is;
* resampling: ``liverseg.builtin.zoom.zoom3d`` (numpy/scipy.sparse, float32; matches pymirc's numba
  code to 1e-7) instead of pymirc's float64 numba kernels;
* the network: PyTorch instead of Keras/TensorFlow, so time and memory of that stage are PyTorch's;
* crop arithmetic: voxel counts per label with ``np.bincount`` instead of ``labeled_comprehension``
  (same numbers, far faster), and the air mask built directly instead of via a float64 copy of the
  volume with everything outside the body box set to its minimum (same mask);
* where the crop heuristic fails (the package raises, or would loop forever in its argrelextrema /
  hip-ratio retry loops), we print why and use the whole volume (cut around its centre to the package's
  489 x 408 x 408 mm caps, so one patch covers it); the package would stop there;
* ``--no-crop`` (not in the package) uses the whole volume (capped the same way), to isolate the crop's
  effect.

Only our own code; the package's code is not copied. Its weights (Apache-2.0) come with liverseg.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.signal import argrelextrema, convolve

PATCH = (189, 162, 162)  # the network's fixed input (the package's model.input_shape)
OUTPUT = (163, 136, 136)  # what one patch predicts: 13 voxels less on every side
MODEL_MM = 3.0  # the model's voxel size (its hdf5 header's voxel_size)
MEDIAN_MM = MODEL_MM / 2.0  # the intermediate grid the median filter runs on

# the package's CT call of crop_ct_image
CROP_ARGS = dict(size_mm_max=(489.0, 408.0, 408.0), tissue_th=-150.0, lung_th=-600.0, bone_th=500.0,
                 bone_hip_ratio=0.7, liver_height_max=400.0, liver_dome_margin_mm=70.0, hip_margin_mm=20.0)


class CropError(RuntimeError):
    """The lung/bone heuristic cannot place a box on this scan (the package would stop here)."""


# ----------------------------------------------------------------------------------------------- read

def read_lps(path: Path):
    """The input as a C-contiguous LPS-ordered array, its voxel size in that order, and what is needed
    to go back to the input's own voxel order and geometry."""
    from liverseg.io import read_volume
    from liverseg.io.volume import spacing_from_affine
    from liverseg.grid.record import canonical_affine, canonical_ornt, to_canonical

    volume = read_volume(path)
    ornt = canonical_ornt(volume.affine_ras)
    ras = to_canonical(volume.array, ornt)
    spacing = spacing_from_affine(canonical_affine(volume.affine_ras, volume.shape, ornt))
    # pymirc gives DICOM voxel sizes as float64; nibabel's pixdim (the package's NIfTI path) is float32,
    # and the crop's int() / ceil() arithmetic sees that precision.
    is_dicom = volume.meta.get("format") != "image"
    voxsize = spacing.astype(np.float64 if is_dicom else np.float32)
    lps = np.ascontiguousarray(ras[::-1, ::-1, :])
    return lps, voxsize, volume, ornt


# ----------------------------------------------------------------------------------------------- crop

def _largest_blob_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """Bounding box of the largest 6-connected blob (the first one on equal sizes, as np.argmax)."""
    labels, count = ndimage.label(mask)
    if count == 0:
        raise CropError("no connected region above the threshold")
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return ndimage.find_objects(labels, max_label=count)[int(np.argmax(sizes))]


def _extrema(profile: np.ndarray, comparator, order: int, step: int) -> np.ndarray:
    """``argrelextrema``, retried with a smaller order (down by ``step``, at least 1) until it finds one.
    The package retries forever at order 1; we give up there instead."""
    found = argrelextrema(profile, comparator, order=order)[0]
    while found.size == 0:
        if order == 1:
            raise CropError("the bone profile has no strict local extremum (the package would loop forever)")
        order = max(1, order - step)
        found = argrelextrema(profile, comparator, order=order)[0]
    return found


def _cap(box: slice, centre: int, size_mm: float, max_mm: float | None) -> slice:
    """Shrink ``box`` to ``max_mm``, taking from each side in proportion to its distance to ``centre``."""
    n = box.stop - box.start
    if max_mm is None or n * size_mm <= max_mm:
        return box
    excess_mm = n * size_mm - max_mm
    # same order of operations as the package, so ceil() lands on the same side at exact boundaries
    cut_start = int(np.ceil((centre - box.start) / n * excess_mm / size_mm))
    cut_stop = int(np.ceil((box.stop - centre) / n * excess_mm / size_mm))
    return slice(box.start + cut_start, box.stop - cut_stop)


def crop_ct_image(ct: np.ndarray, voxsize: np.ndarray, size_mm_max=(None, None, None), tissue_th=-150.0,
                  lung_th=-600.0, bone_th=500.0, bone_hip_ratio=0.7, liver_height_max=400.0,
                  liver_dome_margin_mm=70.0, hip_margin_mm=0.0) -> tuple[slice, slice, slice]:
    """The package's abdomen box (see the module docstring) on an LPS array in HU; axis 2 runs upwards."""
    nz = ct.shape[2]
    vz = voxsize[2]

    # 1. body box: largest blob of (eroded, 6-neighbourhood) tissue-or-bone
    body = _largest_blob_box(ndimage.binary_erosion(ct > tissue_th))

    # 2. air inside the body. The package fills everything outside the body box with the volume's
    # minimum (air there unless the minimum is above lung_th) and sets the top slice to 0 HU so that
    # lungs cut by the field of view do not join the outside air.
    air = np.full(ct.shape, ct.min() < lung_th, dtype=bool)
    air[body] = ct[body] < lung_th
    air[:, :, -1] = False
    # opening with a 5x5x5 cube below the top slice: cuts thin air channels (nasal cavities) between
    # the lungs and the outside
    air[:, :, :-1] = ndimage.binary_opening(air[:, :, :-1], np.ones((5, 5, 5)))
    # a 3-voxel rim of air around x/y keeps all outside air in one blob
    padded = np.pad(air, ((3, 3), (3, 3), (0, 0)), mode="constant", constant_values=True)
    labels_padded, count = ndimage.label(padded)
    labels = labels_padded[3:-3, 3:-3, :]
    del padded, labels_padded
    if count < 3:
        raise CropError(f"{count} air region(s); the lung search needs the outside air and two lungs")
    counts = np.bincount(labels.ravel(), minlength=count + 1)[1:].astype(np.int64)
    counts[counts == 0] = -1  # a label only on the rim: labeled_comprehension's default
    volumes = counts * np.prod(voxsize)
    ranked = np.sort(volumes)

    def label_of(volume_mm3: float) -> int:  # the first label of that volume, as the package picks it
        return 1 + int(np.flatnonzero(volumes == volume_mm3)[0])

    # the largest air blob is the outside; the rest is "inner air" (lungs, bowel gas)
    outside = label_of(ranked[-1])
    inner = (labels != outside) & air
    profile = convolve(inner.sum(axis=(0, 1)), np.ones(7), "same")
    top, bottom = profile.max(), profile.min()
    lung_slices = np.flatnonzero(profile > bottom + 0.5 * (top - bottom))
    if lung_slices.size == 0:
        raise CropError("flat inner-air profile: no lungs found")
    # runs of consecutive slices: where the difference is not 1 (scipy's 'same' keeps the first value,
    # so index 0 counts as a start unless the first slice is 1, as in the package)
    starts = np.flatnonzero(convolve(lung_slices, np.array([1, -1]), "same") != 1)
    dome_from_profile = lung_slices[0]
    if starts.size > 1:
        # a second run separated by a deep dip: the lower run was not lung (e.g. bowel gas)
        gap = profile[lung_slices[starts[1] - 1]:lung_slices[starts[1]]]
        if np.any(gap < bottom + 0.2 * (top - bottom)):
            dome_from_profile = lung_slices[starts[1]]

    # centre of the inner air in x/y: the point the size caps shrink towards
    centre = []
    for axis in (0, 1):
        present = np.flatnonzero(inner.any(axis=tuple(a for a in range(3) if a != axis)))
        if present.size == 0:
            raise CropError("no inner air")
        centre.append((int(present[0]) + int(present[-1]) + 1 + 1) // 2)  # (start + stop + 1) // 2
    del inner

    # the two next-largest air blobs are taken as the lungs; the lower end of the one that reaches
    # less far down is the second dome candidate
    boxes = ndimage.find_objects(labels, max_label=count)
    lungs = [boxes[label_of(ranked[-2]) - 1], boxes[label_of(ranked[-3]) - 1]]
    if any(box is None for box in lungs):
        raise CropError("a lung candidate lies only outside the image")
    dome_from_lungs = max(box[2].start for box in lungs)
    dome = int(max(dome_from_profile, dome_from_lungs))
    del labels, air

    # 3. hip from the bone profile below the dome (smoothed count of voxels above bone_th per slice)
    bone = convolve(np.count_nonzero(ct > bone_th, axis=(0, 1)), np.ones(7), "same")[:dome]
    if bone.size == 0:
        raise CropError("liver dome at the lowest slice: nothing below it to search for the hip")
    bone_max = int(np.argmax(bone))
    minima = _extrema(bone, np.less, 15, 3)
    bone_min = int(minima[np.argsort(bone[minima])[0]])
    maxima = _extrema(bone, np.greater, 15, 3)
    ranked_max = np.argsort(bone[maxima])
    second_max = int(maxima[ranked_max[-2]] if ranked_max.size >= 2 else maxima[ranked_max[-1]])
    if bone_min < bone_max and bone_min < second_max:
        # the deepest minimum lies below both peaks: look for it above the second peak instead
        bone_min = second_max + int(np.argmin(bone[second_max:]))
    peaks = _extrema(bone, np.greater, 5, 1)

    def hip_candidates(ratio: float):
        high = np.flatnonzero(bone > ratio * (bone[bone_max] - bone[bone_min]) + bone[bone_min])
        return high, np.intersect1d(peaks, high)

    ratio = bone_hip_ratio
    high, candidates = hip_candidates(ratio)
    while high.size == 0 or candidates.size == 0:
        if ratio == 0.05:
            raise CropError("no bone peak above the hip threshold (the package would loop forever)")
        ratio = max(ratio - 0.1, 0.05)
        high, candidates = hip_candidates(ratio)
    below = candidates[candidates < bone_min]
    # the package needs two peaks below the minimum and then takes the upper one; with fewer, slice 0
    hip = int(below[-1]) if below.size >= 2 else 0
    if (dome - hip) * vz > liver_height_max:
        hip = dome - int(liver_height_max / vz)

    z = slice(max(0, hip - int(hip_margin_mm / vz)), min(nz, dome + int(liver_dome_margin_mm / vz)))

    # 4. inner x/y box: largest blob of tissue eroded by a 5x5x5 cube in the z-cropped body box
    inner_box = _largest_blob_box(ndimage.binary_erosion(ct[body[0], body[1], z] > tissue_th, np.ones((5, 5, 5))))
    x = slice(body[0].start + inner_box[0].start, body[0].start + inner_box[0].stop)
    y = slice(body[1].start + inner_box[1].start, body[1].start + inner_box[1].stop)

    # 5. size caps: x/y shrink towards the inner-air centre, z loses its lower part
    x = _cap(x, centre[0], voxsize[0], size_mm_max[0])
    y = _cap(y, centre[1], voxsize[1], size_mm_max[1])
    if size_mm_max[2] is not None and (z.stop - z.start) * vz > size_mm_max[2]:
        z = slice(z.start + int(np.ceil(((z.stop - z.start) * vz - size_mm_max[2]) / vz)), z.stop)
    return x, y, z


# ------------------------------------------------------------------------------------- preprocess etc.

def preprocess(cropped: np.ndarray, voxsize: np.ndarray) -> np.ndarray:
    """1.5 mm (zoom3d), 3x3x3 median, 3 mm (zoom3d), CT scaling, flipped LPS -> RAS (float32)."""
    from liverseg.builtin.zoom import zoom3d

    image = zoom3d(cropped, tuple(float(f) for f in voxsize / np.full(3, MEDIAN_MM)))
    image = ndimage.median_filter(image, size=3)
    image = zoom3d(image, (MEDIAN_MM / MODEL_MM,) * 3)
    image = np.clip(image / 1000.0, -0.2, 0.2) * 2.5
    return np.ascontiguousarray(image[::-1, ::-1, :], dtype=np.float32)


def network(image_ras: np.ndarray, threads: int) -> np.ndarray:
    """Liver probability on the image's grid from ONE fixed patch, the image centred as the package's
    centre sampler places it (image voxel n // 2 at patch voxel P // 2)."""
    import torch

    from liverseg.builtin import torch_module

    torch.set_num_threads(threads)
    net = torch_module("liver")
    with torch.inference_mode():
        x = torch.from_numpy(image_ras)[None, None]
        return torch.softmax(net(x, patch=PATCH), 1)[0, 1].numpy()


def postprocess(prob_ras: np.ndarray, full_shape: tuple[int, ...], box: tuple[slice, ...]) -> np.ndarray:
    """The package's liver post-processing; the uint8 mask on the full LPS array."""
    prob = prob_ras[::-1, ::-1, :]  # back to LPS
    struct = ndimage.generate_binary_structure(3, 2)  # 18-neighbourhood (3x3x3 without the corners)
    eroded = ndimage.binary_erosion(prob > 0.5, structure=struct)
    labels, count = ndimage.label(eroded)  # 6-connected
    sizes = ndimage.sum(eroded, labels, range(count + 1))  # index 0 = background, always 0
    keep = int(np.argsort(sizes)[-1])
    if count == 0:
        print("warning: the network found no liver; as the package does, label 0 (the background) is "
              "kept, i.e. the whole crop box is marked liver", flush=True)
    liver = ndimage.binary_dilation(labels == keep, structure=struct).astype(np.int16)
    crop_shape = tuple(s.stop - s.start for s in box)
    # int16 in, int16 out: scipy rounds the interpolated values, so "> 0" means ">= 0.5"
    resized = ndimage.zoom(liver, np.array(crop_shape) / np.array(liver.shape), order=1, prefilter=False) > 0
    if resized.shape != crop_shape:
        raise RuntimeError(f"zoomed mask {resized.shape} does not fit the crop {crop_shape}")
    mask = np.zeros(full_shape, dtype=np.uint8)
    mask[box] = resized
    return mask


def write_mask(mask_lps: np.ndarray, volume, ornt, source: Path, out: Path) -> None:
    """Back to the input's voxel order; SimpleITK file with the input's geometry; temp name, then rename."""
    import SimpleITK as sitk

    from liverseg.io.volume import lps_from_affine
    from liverseg.grid.record import from_canonical

    mask = from_canonical(mask_lps[::-1, ::-1, :], ornt)
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 1, 0)))  # (i,j,k) -> (z,y,x)
    geometry = None
    if source.is_file() and volume.meta.get("format") == "image":
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(source))
        reader.ReadImageInformation()
        if reader.GetDimension() == 3:  # copy the file's own header, bit for bit
            geometry = reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()
    if geometry is None:  # DICOM (or a 4D file): the geometry read_volume derived
        geometry = lps_from_affine(volume.affine_ras)
    image.SetSpacing(geometry[0])
    image.SetOrigin(geometry[1])
    image.SetDirection(geometry[2])
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(out.suffixes[-2:]) if out.name.endswith(".nii.gz") else out.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, useCompression=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it an ordinary file's permissions
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------- main

def fmt_box(box, voxsize) -> str:
    sizes = [s.stop - s.start for s in box]
    mm = [round(float(n * v), 1) for n, v in zip(sizes, voxsize)]
    return f"[{', '.join(f'{s.start}:{s.stop}' for s in box)}] (LPS voxels; {sizes} = {mm} mm)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="NIfTI/NRRD/MHA file or DICOM series folder")
    parser.add_argument("-o", "--output", type=Path, required=True, help="liver mask file (e.g. .nii.gz)")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads (default 2)")
    parser.add_argument("--no-crop", action="store_true",
                        help="use the whole volume instead of the package's lung/bone crop")
    args = parser.parse_args(argv)

    times: dict[str, float] = {}
    total = time.perf_counter()

    def stage(name: str, started: float) -> None:
        times[name] = time.perf_counter() - started
        print(f"{name:>16}: {times[name]:7.2f} s", flush=True)

    t = time.perf_counter()
    ct, voxsize, volume, ornt = read_lps(args.input)
    stage("read", t)
    print(f"input {volume.shape} -> LPS {ct.shape}, voxel {np.round(voxsize.astype(float), 4).tolist()} mm",
          flush=True)

    t = time.perf_counter()
    # the whole volume, cut around its centre to the package's size caps (489 x 408 x 408 mm) so that one
    # patch covers it, as the package's crop always does
    whole = tuple(_cap(slice(0, n), n // 2, float(v), m) for n, v, m in zip(ct.shape, voxsize, CROP_ARGS["size_mm_max"]))
    crop_note = "package crop"
    if args.no_crop:
        box, crop_note = whole, "none (--no-crop): whole volume"
    else:
        try:
            box = crop_ct_image(ct, voxsize, **CROP_ARGS)
        except (CropError, IndexError, ValueError) as exc:
            # the package raises here (or hangs); for a benchmark peer we carry on with the whole volume
            print(f"CROP FAILED ({type(exc).__name__}: {exc}); the package would stop here; "
                  "using the whole volume instead", flush=True)
            box, crop_note = whole, "FAILED -> whole volume"
    stage("crop", t)
    print(f"crop: {crop_note} {fmt_box(box, voxsize)}", flush=True)

    # the 3 mm size follows from zoom3d's rule (ceil per step); check it before the slow resampling
    from liverseg.builtin.zoom import zoomed_size

    shape_3mm = [zoomed_size(zoomed_size(s.stop - s.start, float(v) / MEDIAN_MM), MEDIAN_MM / MODEL_MM)
                 for s, v in zip(box, voxsize)]
    if any(n > m for n, m in zip(shape_3mm, OUTPUT)):
        message = (f"the 3 mm image {shape_3mm} exceeds what one {list(PATCH)} patch predicts "
                   f"({list(OUTPUT)})")
        # the package's size caps guarantee the fit after its crop; only the whole volume can exceed it
        assert box is whole, message
        print(f"error: {message}; the package's crop would have capped it at 489 x 408 x 408 mm", flush=True)
        return 2

    t = time.perf_counter()
    image = preprocess(ct[box], voxsize)
    stage("resample+median", t)
    print(f"network input (3 mm, RAS): {list(image.shape)}", flush=True)
    assert list(image.shape) == shape_3mm, (image.shape, shape_3mm)

    t = time.perf_counter()
    prob = network(image, args.threads)
    stage("network", t)

    t = time.perf_counter()
    mask = postprocess(prob, ct.shape, box)
    stage("postprocess", t)

    t = time.perf_counter()
    write_mask(mask, volume, ornt, args.input, args.output)
    stage("write", t)

    liver_ml = float(mask.sum()) * float(np.prod(voxsize.astype(np.float64))) / 1000.0
    print(f"{'total':>16}: {time.perf_counter() - total:7.2f} s; liver {liver_ml:.1f} mL -> {args.output}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
