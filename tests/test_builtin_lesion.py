"""The built-in lesion model: its network (``KulResUNet``), the slab-wise evaluation that runs it on a CPU,
and its road (the liver gate, the original's tiles, the way back to the input grid). The road is checked
with a stand-in network that calls voxels lesion by their intensity, so geometry is exact and fast; the
real weights run in the slow tests."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, dice_of, ellipsoid_mask, permutation, ras_affine, rotation
from liverseg.builtin import BuiltinPredictor, kul_lesion, stages
from liverseg.builtin.kul_lesion import (MARGIN, TILE_INPUT, TILE_OUTPUT, prepare, segment_lesions, tile_input,
                                         tile_starts, tiles)
from liverseg.builtin.resunet_stream import Moments, StreamedResUNet
from liverseg.io.volume import Volume
from liverseg.models.kul_resunet import KulResUNet

# scaled by clip(HU / 1000, -0.2, 0.2) * 2.5: liver 0.25, lesion -0.15, "body" 0.5 (no blend of two of them
# falls in the stand-in's lesion range, which is centred between lesion and liver)
LIVER_HU, LESION_HU, BODY_HU = 100.0, -60.0, 300.0


# ----------------------------------------------------------------------------- the network

def test_margins_and_sizes_match_the_original_tile():
    net = KulResUNet(3, 1, 2)
    assert net.margin == MARGIN == (44, 44, 22)
    assert [net.output_size(n, a) for n, a in zip(TILE_INPUT, range(3))] == list(TILE_OUTPUT)
    assert net.valid_size(92, 0) == 180 and net.valid_size(42, 2) == 86
    assert net.output_size(181, 0) is None  # an odd pooled size: the graph cannot take it
    assert sum(p.numel() for p in net.parameters()) == 3_464_221


def test_forward_returns_logits_on_the_input_size_and_core_equals_forward_inside():
    torch.manual_seed(0)
    net = KulResUNet(3, 1, 2, channels=(4, 8, 8, 8)).eval()
    x = torch.randn(1, 1, 13, 17, 9)
    with torch.no_grad():
        out = net(x)
    assert tuple(out.shape) == (1, 2, 13, 17, 9)
    assert torch.all(out[:, 0] == 0)  # the pair (0, z): softmax = the original's sigmoid
    # forward = core on the input centred in zeros: the smallest valid sizes (a margin of 44/44/22 plus
    # what the pooling needs) are 108/108/54, outputs 20/20/10, so x sits at margin + (output - n) // 2
    sizes, outputs = (108, 108, 54), (20, 20, 10)
    padded = torch.zeros(1, 1, *sizes)
    lead = [m + (o - n) // 2 for m, o, n in zip(net.margin, outputs, x.shape[2:])]
    padded[0, 0, lead[0]:lead[0] + 13, lead[1]:lead[1] + 17, lead[2]:lead[2] + 9] = x[0, 0]
    with torch.no_grad():
        core = net.core(padded)
    assert tuple(core.shape[2:]) == outputs
    start = [(o - n) // 2 for o, n in zip(outputs, x.shape[2:])]
    torch.testing.assert_close(out, core[:, :, start[0]:start[0] + 13, start[1]:start[1] + 17, start[2]:start[2] + 9])


def test_the_streamed_evaluation_computes_core(monkeypatch):
    torch.manual_seed(1)
    net = KulResUNet(3, 1, 2, channels=(4, 8, 8, 8)).eval()
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (100, 108, 54)).astype(np.float32)
    with torch.no_grad():
        ref = net.core(torch.from_numpy(x)[None, None])
    z_ref = (ref[0, 1] - ref[0, 0]).numpy()
    import liverseg.builtin.resunet_stream as stream

    for slab_bytes in (stream.SLAB_BYTES, 40_000):  # one slab per block, and many (odd sizes, halos)
        monkeypatch.setattr(stream, "SLAB_BYTES", slab_bytes)
        z = StreamedResUNet(net).logits(x)
        assert z.shape == z_ref.shape == (12, 20, 10)
        np.testing.assert_allclose(z, z_ref, atol=2e-5 * max(1.0, float(np.abs(z_ref).max())))


def test_moments_merge_slabs_and_concatenations_exactly():
    rng = np.random.default_rng(2)
    a = torch.from_numpy(rng.normal(3.0, 2.0, (1, 3, 10, 4, 5)).astype(np.float32))
    b = torch.from_numpy(rng.normal(-1.0, 0.5, (1, 2, 10, 4, 5)).astype(np.float32))
    m = Moments()
    for lo, hi in ((0, 3), (3, 4), (4, 10)):
        m.add(a[:, :, lo:hi])
    whole = a[0].reshape(3, -1).double()
    np.testing.assert_allclose(m.mean.numpy(), whole.mean(1).numpy(), rtol=1e-6)
    np.testing.assert_allclose((m.m2 / m.count).numpy(), whole.var(1, unbiased=False).numpy(), rtol=1e-5)
    mb = Moments()
    mb.add(b)
    both = Moments.of(m, mb)
    assert both.mean.shape == (5,) and both.count == m.count


# ----------------------------------------------------------------------------- tiles

def original_overwrites(size: int, output: int) -> np.ndarray:
    """Which tile's output each voxel keeps when the original's every tile runs in order."""
    starts = list(range(0, size, output)) + ([size - output] if size % output else [])
    owner = np.full(size, -1)
    for s in starts:
        owner[max(0, s):min(size, s + output)] = s
    return owner


@pytest.mark.parametrize("size", [1, 30, 42, 43, 84, 92, 128, 170, 184, 200, 300])
def test_tiles_leave_out_only_tiles_that_are_overwritten_anyway(size):
    kept = tile_starts(size, 92)
    owner = np.full(size, -1)
    for s in kept:
        owner[max(0, s):min(size, s + 92)] = s
    np.testing.assert_array_equal(owner, original_overwrites(size, 92))
    assert set(np.unique(owner)) == set(kept)  # every kept tile gives something


def test_tile_input_is_the_centred_tile_with_zero_padding():
    image = np.arange(20 * 30 * 10, dtype=np.float32).reshape(20, 30, 10) + 1
    tile = tile_input(image, (0, 0, 0))
    assert tile.shape == TILE_INPUT
    np.testing.assert_array_equal(tile[44:64, 44:74, 22:32], image)
    assert tile.sum() == image.sum()  # zeros everywhere else
    # a crop smaller than one tile: the original's flush tile (negative start) overwrites the first wholly
    assert tiles((20, 30, 10)) == [(-72, -54, -32)]
    flush = tile_input(image, (-72, -54, -32))
    np.testing.assert_array_equal(flush[116:136, 98:128, 54:64], image)


# ----------------------------------------------------------------------------- the road, with a stand-in network

class IntensityTiles:
    """A stand-in network: lesion where the scaled input lies between -0.3 and 0.05 (lesion -0.15, liver 0.25,
    outside the gate -0.5), on the tile's centre, the original's output region."""

    name = "intensity stand-in"

    def __init__(self) -> None:
        self.tiles = 0

    def run_tile(self, tile: np.ndarray) -> np.ndarray:
        assert tile.shape == TILE_INPUT
        self.tiles += 1
        core = tile[tuple(slice(m, m + o) for m, o in zip(MARGIN, TILE_OUTPUT))]
        lesion = (core > -0.3) & (core < 0.05)
        return lesion.astype(np.float32)


def liver_with_lesion(shape, spacing, direction=None):
    affine = ras_affine(spacing, direction, origin=(-100.0, -90.0, -60.0))
    centre = affine @ np.r_[(np.array(shape) - 1) / 2.0, 1.0]
    array = np.full(shape, BODY_HU, dtype=np.float32)
    liver = ellipsoid_mask(shape, affine, centre[:3], (40.0, 35.0, 40.0))
    lesion = ellipsoid_mask(shape, affine, centre[:3] + np.array([8.0, -4.0, 4.0]), (12.0, 10.0, 14.0))
    array[liver] = LIVER_HU
    array[lesion] = LESION_HU
    return Volume(array.astype(np.int16), affine, {"modality": "CT"}), liver, lesion & liver


def test_prepare_gates_scales_and_crops_as_the_recipe_says():
    volume, liver, _ = liver_with_lesion((110, 100, 40), (1.0, 1.0, 3.0))
    prepared = prepare(volume.array, liver, (1.0, 1.0, 3.0))
    assert prepared.grid.network_mm == (1.0, 1.0, 3.0) and prepared.grid.zoom == (1.0, 1.0, 1.0)
    assert prepared.image.min() >= -0.5 and prepared.image.max() <= 0.5
    assert np.all(prepared.image[~prepared.gate] == -0.5)
    # the gate is the liver dilated by 2 voxels along every axis (the 18-neighbourhood, iterated twice)
    from scipy import ndimage

    assert prepared.gate.shape == prepared.image.shape
    found = ndimage.find_objects(liver.astype(np.uint8))[0]
    crop_size = [s.stop - s.start + 4 for s in found]
    assert list(prepared.image.shape) == crop_size
    inside = prepared.image[prepared.gate]
    assert np.isclose(np.median(inside), 0.25, atol=1e-3)  # liver at 100 HU: clip(0.1, -0.2, 0.2) * 2.5
    assert prepare(volume.array, np.zeros_like(liver), (1.0, 1.0, 3.0)) is None


@pytest.mark.parametrize("direction", [None, permutation((1, 0, 2), (-1, 1, -1)), rotation(2, 30)],
                         ids=["ras", "permuted-flipped", "rotated"])
def test_lesions_come_back_on_the_input_grid_in_any_orientation(direction):
    volume, liver, lesion = liver_with_lesion((140, 130, 40), (0.8, 0.8, 3.5), direction)
    engine = IntensityTiles()
    result = segment_lesions(volume, liver.astype(np.uint8), engine)
    assert result.mask.shape == volume.shape
    assert dice_of(result.mask, lesion) > 0.9
    assert not np.any(result.mask & ~liver)  # nothing outside the (dilated) gate, here: the liver itself
    assert result.details["lesion_tiles"] == engine.tiles >= 1
    assert result.warnings == []


def test_no_liver_no_lesions_and_a_warning_when_lesions_fill_the_liver():
    volume, liver, lesion = liver_with_lesion((70, 65, 40), (1.5, 1.5, 3.0))
    empty = segment_lesions(volume, np.zeros(volume.shape, np.uint8), IntensityTiles())
    assert not empty.mask.any() and empty.details["lesion_tiles"] == 0
    everything = Volume(np.where(liver, LESION_HU, BODY_HU).astype(np.int16), volume.affine_ras, {})
    full = segment_lesions(everything, liver.astype(np.uint8), IntensityTiles())
    assert full.mask.sum() > 0.9 * liver.sum() and "check the segmentation" in full.warnings[0]


def test_two_stage_predictor_labels_liver_1_and_lesion_2(monkeypatch):
    volume, liver, lesion = liver_with_lesion((110, 100, 40), (1.0, 1.0, 3.0))

    class LiverFromMask:
        name = "mask"

    predictor = BuiltinPredictor("liver_lesions", [LiverFromMask(), IntensityTiles()])
    import liverseg.builtin.kul_liver as kul_liver
    import liverseg.builtin.loading as loading

    def fake_segment(vol, engine, threads=None, keep_probability=False):
        return kul_liver.LiverResult(liver.astype(np.uint8), ["a liver warning"], {"liver_ml": 1.0})

    monkeypatch.setattr(loading, "segment", fake_segment)  # the liver stage, as the predictor calls it
    labels, warnings, details = predictor.segment_volume(volume)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert dice_of(labels == 2, lesion) > 0.9 and np.all((labels > 0) == liver | (labels == 2))
    assert warnings == ["a liver warning"] and "lesion_tiles" in details and details["liver_ml"] == 1.0
    assert stages("liver_lesions") == ["liver", "liver_lesions"] and stages("liver") == ["liver"]


# ----------------------------------------------------------------------------- the real weights

@pytest.mark.slow
def test_the_built_in_lesion_network_streamed_equals_its_whole_tile_computation():
    from liverseg.builtin import torch_module

    net = torch_module("liver_lesions")
    tile = np.random.default_rng(3).uniform(-0.5, 0.5, TILE_INPUT).astype(np.float32)
    with torch.inference_mode():
        logits = net.core(torch.from_numpy(tile)[None, None])
    p_ref = torch.softmax(logits, 1)[0, 1].numpy()
    p = kul_lesion.StreamedTileEngine(net).run_tile(tile)
    # two float32 computations in different orders: each is within 1e-4 of the original (measured by
    # scripts/check_kul_lesion_port.py on this noise: 7.5e-5 and 2.8e-5), so within 2e-4 of each other
    assert np.abs(p - p_ref).max() < 2e-4
    assert np.array_equal(p > 0.5, p_ref > 0.5) or np.mean((p > 0.5) != (p_ref > 0.5)) < 1e-5


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "lits117").is_dir(), reason="../shared/data/lits117 not present")
def test_liver_lesions_end_to_end_on_lits117(tmp_path):
    import json

    import nibabel as nib

    from liverseg.cli import main

    out = tmp_path / "out"
    assert main(["predict", str(SHARED_DATA / "lits117" / "ct.nii.gz"), "-o", str(out), "--model", "liver_lesions",
                 "--threads", "2", "-q"]) == 0
    case = out / "ct"
    labels = np.asarray(nib.load(str(case / "segmentation.nii.gz")).dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2} and (labels == 1).any()
    report = json.loads((case / "report.json").read_text())
    assert report["label_names"][2] == "liver lesion" and "tumour_burden" in report
    assert (case / "lesions.csv").is_file()
    header = (case / "segmentation.seg.nrrd").read_bytes()[:4000].decode("latin-1")
    assert "Segment1_Name:=liver lesion" in header or "liver lesion" in header


def test_api_liver_mask_replaces_the_liver_stage(monkeypatch):
    from types import SimpleNamespace

    import liverseg
    from liverseg import api
    from liverseg.errors import InputError

    volume, liver, lesion = liver_with_lesion((110, 100, 40), (1.0, 1.0, 3.0))
    cfg = SimpleNamespace(data=SimpleNamespace(labels=("background", "liver", "liver lesion")))
    two_stage = SimpleNamespace(model=BuiltinPredictor("liver_lesions", [None, IntensityTiles()]), cfg=cfg)
    monkeypatch.setattr(api, "_model", lambda *args: two_stage)
    result = liverseg.segment((volume.array, volume.affine_ras), model="liver_lesions", liver_mask=liver)
    assert dice_of(result.labels == 2, lesion) > 0.9 and np.all((result.labels > 0) == liver)
    assert result.details["liver"] == "given mask" and result.label_names[2] == "liver lesion"
    with pytest.raises(InputError, match="grid"):
        liverseg.segment(volume, model="liver_lesions", liver_mask=(liver, volume.affine_ras * 2))
    with pytest.raises(InputError, match="does not fit"):
        liverseg.segment(volume, model="liver_lesions", liver_mask=liver[:-1])
    one_stage = SimpleNamespace(model=BuiltinPredictor("liver", [None]), cfg=cfg)
    monkeypatch.setattr(api, "_model", lambda *args: one_stage)
    with pytest.raises(InputError, match="two-stage"):
        liverseg.segment(volume, model="liver", liver_mask=liver)


def test_two_stage_probabilities_sum_to_one_and_agree_with_the_labels(monkeypatch):
    volume, liver, lesion = liver_with_lesion((110, 100, 40), (1.0, 1.0, 3.0))
    predictor = BuiltinPredictor("liver_lesions", [None, IntensityTiles()])
    labels, probabilities, warnings, details = predictor.segment_volume_with_probabilities(volume, liver_mask=liver)
    assert probabilities.shape == (*volume.shape, 3) and probabilities.dtype == np.uint8
    assert np.abs(probabilities.astype(int).sum(-1) - 255).max() <= 1
    argmax = probabilities.argmax(-1)
    agree = (argmax == labels)[labels > 0]
    assert agree.mean() > 0.99  # ties at 0.5 may go either way
    assert np.all(probabilities[..., 0][~liver] == 255)  # outside the given liver: background
    plain, _, _ = predictor.segment_volume(volume, liver_mask=liver)
    np.testing.assert_array_equal(plain, labels)
