"""Per-label post-processing as the run's infer config asks: small objects (mL), largest component,
hole filling that only turns background into the label."""
from __future__ import annotations

import numpy as np
import pytest

from liverseg.config import ExperimentConfig, DataConfig, InferConfig
from liverseg.errors import ConfigError
from liverseg.engine.postprocess import postprocess_labels

NAMES = ("background", "liver", "tumour")


def _scene() -> np.ndarray:
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[2:12, 2:12, 2:12] = 1        # liver, 1000 voxels, with a hole and a tumour inside
    labels[6, 6, 6] = 0                 # enclosed background: a hole
    labels[4:6, 4:6, 4:6] = 2           # tumour (8 voxels) inside the liver
    labels[15:17, 15:17, 15:17] = 1     # a second liver blob, 8 voxels
    labels[15, 2, 2] = 2                # a lone tumour voxel
    return labels


def test_each_step_touches_only_its_labels():
    labels = _scene()
    out = postprocess_labels(labels, NAMES, voxel_volume_ml=0.5, largest_component=("liver",),
                             fill_holes=("liver",), min_object_ml={"tumour": 2.0})
    assert labels[6, 6, 6] == 0 and labels[15, 15, 15] == 1  # the input is not changed (copy=True)
    assert out[6, 6, 6] == 1                                  # hole filled
    assert (out[15:17, 15:17, 15:17] == 0).all()              # smaller liver blob removed
    assert (out[4:6, 4:6, 4:6] == 2).all()                    # 8 voxels x 0.5 mL = 4 mL >= 2 mL: kept
    assert out[15, 2, 2] == 0                                 # 0.5 mL < 2 mL: removed
    assert np.count_nonzero(out == 1) == 1000 - 8 - 1 + 1


def test_hole_filling_never_overwrites_another_label():
    labels = _scene()
    out = postprocess_labels(labels, NAMES, voxel_volume_ml=1.0, fill_holes=("liver",))
    assert (out[4:6, 4:6, 4:6] == 2).all() and out[6, 6, 6] == 1


def test_in_place_and_nothing_to_do():
    labels = _scene()
    assert postprocess_labels(labels, NAMES, 1.0, copy=False) is labels
    out = postprocess_labels(labels, NAMES, 1.0, largest_component=("liver",), copy=False)
    assert out is labels and labels[15, 15, 15] == 0


def test_config_names_unknown_labels_and_bad_sizes():
    data = DataConfig(labels=NAMES)
    with pytest.raises(ConfigError, match="infer.fill_holes names 'spleen'"):
        ExperimentConfig(data=data, infer=InferConfig(fill_holes=("spleen",))).validate()
    with pytest.raises(ConfigError, match=r"infer.min_object_ml\[tumour\]=-1.0"):
        ExperimentConfig(data=data, infer=InferConfig(min_object_ml={"tumour": -1.0})).validate()
    with pytest.raises(ConfigError, match="infer.tta_flip_axes"):
        ExperimentConfig(data=data, infer=InferConfig(tta_flip_axes=(0, 3))).validate()


def test_more_components_than_uint16_holds_still_works():
    mask = np.zeros((82, 82, 82), dtype=bool)
    mask[::2, ::2, ::2] = True  # 41^3 = 68921 isolated voxels
    mask[:4, :4, :4] = True     # and one 64-voxel block
    from liverseg.engine.postprocess import largest_component, remove_small_objects

    from scipy import ndimage

    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))  # int32: the reference
    assert count > 65535
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    np.testing.assert_array_equal(largest_component(mask), components == sizes.argmax())
    np.testing.assert_array_equal(remove_small_objects(mask, 2), components == sizes.argmax())
