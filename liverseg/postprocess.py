"""Label-map clean-up on the output grid: largest connected component, hole filling, small objects."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

# 26-connectivity: diagonal neighbours count, so thin oblique structures stay one component.
_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 26-connected component of a boolean mask."""
    components, count = ndimage.label(mask, structure=_FULL_CONNECTIVITY)
    if count <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(sizes.argmax())


def keep_largest_component(labels: np.ndarray, label_values: list[int] | tuple[int, ...]) -> np.ndarray:
    """For each given label value, voxels outside its largest component become background."""
    out = labels.copy()
    for value in label_values:
        mask = labels == value
        if not mask.any():
            continue
        # Work inside the bounding box: labelling a 512x512x600 volume costs seconds otherwise.
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        keep = largest_component(mask[box])
        region = out[box]
        region[mask[box] & ~keep] = 0
    return out


def fill_holes(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_fill_holes(mask)


def remove_small_objects(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    components, count = ndimage.label(mask, structure=_FULL_CONNECTIVITY)
    if count == 0:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[components]
