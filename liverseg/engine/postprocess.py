"""Label-map clean-up on the output grid: largest connected component, hole filling, small objects."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

# 26-connectivity: diagonal neighbours count, so thin oblique structures stay one component.
_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def _label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components, as uint16 when they fit (half the memory of scipy's int32 default)."""
    try:
        components = np.empty(mask.shape, dtype=np.uint16)
        count = ndimage.label(mask, structure=_FULL_CONNECTIVITY, output=components)
    except RuntimeError:  # more than 65535 components
        components, count = ndimage.label(mask, structure=_FULL_CONNECTIVITY)
    return components, int(count)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 26-connected component of a boolean mask."""
    components, count = _label_components(mask)
    if count <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(sizes.argmax())


def keep_largest_component_inplace(labels: np.ndarray, value: int) -> np.ndarray:
    """Voxels of ``value`` outside its largest component become background (in place)."""
    box = _bounding_box(labels == value)
    if box is None:
        return labels
    # Work inside the bounding box: labelling a 512x512x600 volume costs seconds otherwise.
    region = labels[box]
    mask = region == value
    np.logical_xor(mask, largest_component(mask), out=mask)  # the component is inside the mask: mask & ~it
    region[mask] = 0
    return labels


def fill_holes(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_fill_holes(mask)


def remove_small_objects(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    components, count = _label_components(mask)
    if count == 0:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[components]


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel (None when there is none), without a full-size copy."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def remove_small_components(labels: np.ndarray, value: int, min_voxels: int) -> np.ndarray:
    """Set the 26-connected components of ``value`` smaller than ``min_voxels`` to background (in place)."""
    box = _bounding_box(labels == value) if min_voxels > 1 else None
    if box is None:
        return labels
    region = labels[box]
    mask = region == value
    region[mask & ~remove_small_objects(mask, min_voxels)] = 0
    return labels


def fill_label_holes(labels: np.ndarray, value: int) -> np.ndarray:
    """Background voxels enclosed by ``value`` (3D, not connected to the outside) become ``value`` (in place).

    Only background changes: a tumour label inside the liver is kept.
    """
    box = _bounding_box(labels == value)
    if box is None:
        return labels
    # Inside the bounding box is enough: a region enclosed by the mask cannot reach past the box.
    region = labels[box]
    region[fill_holes(region == value) & (region == 0)] = value
    return labels


def postprocess_labels(labels: np.ndarray, label_names: tuple[str, ...] | list[str], voxel_volume_ml: float, *,
                       largest_component: tuple[str, ...] = (), fill_holes: tuple[str, ...] = (),
                       min_object_ml: dict[str, float] | None = None, copy: bool = True) -> np.ndarray:
    """The run's post-processing (``infer`` config), label by label, in this order:

    1. remove components smaller than ``min_object_ml[name]`` mL,
    2. keep the largest component of each label in ``largest_component``,
    3. fill holes of each label in ``fill_holes`` (background only).

    ``copy=False`` changes ``labels`` in place (no second full-size array).
    """
    names = list(label_names)
    out = np.array(labels, copy=True) if copy else labels
    for name, size_ml in (min_object_ml or {}).items():
        min_voxels = int(np.ceil(size_ml / voxel_volume_ml)) if voxel_volume_ml > 0 else 0
        remove_small_components(out, names.index(name), min_voxels)
    for name in largest_component:
        keep_largest_component_inplace(out, names.index(name))
    for name in fill_holes:
        fill_label_holes(out, names.index(name))
    return out
