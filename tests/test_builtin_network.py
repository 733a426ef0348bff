"""The built-in KU Leuven network: the PyTorch port's arithmetic, the ONNX graphs written without the
``onnx`` package, and the staged computation against the whole-patch one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from liverseg.builtin import BUILTIN_MODELS, load_weights, provenance, torch_module
from liverseg.builtin.onnx_proto import conv_model
from liverseg.builtin.runtime import ConvBank, foreground_probability, sampled_roi
from liverseg.builtin.patch_maps import Moments, max_pool, upsample, upsample_matrix, upsampled_stats
from liverseg.builtin.staged import StagedPatch
from liverseg.builtin.staged_levels import ClassField, Layout
from liverseg.models.kul_unet import KulUNet, patch_norm, upsample_linear

ort = pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def liver_weights():
    return load_weights("liver")


@pytest.fixture(scope="module")
def liver_net(liver_weights):
    return torch_module("liver")


# ----------------------------------------------------------------------------- the port


def test_liver_network_has_the_originals_size_and_geometry(liver_net):
    assert sum(p.numel() for p in liver_net.parameters()) == 3_874_961  # 15 convolutions, as the hdf5
    assert liver_net.margin == 13 and liver_net.size_unit == 27
    # the staged (ONNX Runtime) path's torch-free mirror of that geometry agrees
    layout = Layout.from_weights({k: v.numpy() for k, v in liver_net.state_dict().items()}, liver_net.factor)
    assert (layout.levels, layout.margin, layout.size_unit) == (liver_net.levels, 13, 27)
    with torch.no_grad():
        out = liver_net.core(torch.zeros(1, 1, 189, 162, 162)[:, :, :54, :54, :54])
    assert tuple(out.shape) == (1, 2, 28, 28, 28)  # 27k -> 27k - 26


def test_weights_match_their_provenance_record(liver_weights):
    record = provenance(BUILTIN_MODELS["liver"])
    assert record["parameters"] == sum(a.size for a in liver_weights.values())
    assert record["licence"] == "Apache-2.0" and len(record["member_sha256"]) == 64


def test_patch_norm_is_the_originals_population_std_plus_epsilon():
    x = torch.randn(2, 3, 5, 4, 6)
    mean = x.mean(dim=(2, 3, 4), keepdim=True)
    std = x.var(dim=(2, 3, 4), keepdim=True, unbiased=False).sqrt()
    torch.testing.assert_close(patch_norm(x), (x - mean) / (std + 1e-7))


def test_linear_upsampling_is_repeat_then_a_stride_one_mean():
    x = torch.arange(4.0).reshape(1, 1, 4, 1, 1).expand(1, 1, 4, 3, 3).contiguous()
    up = upsample_linear(x, 3)
    assert up.shape[2:] == (10, 7, 7)
    expected = torch.tensor([0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2, 7 / 3, 8 / 3, 3])
    torch.testing.assert_close(up[0, 0, :, 3, 3], expected)
    # the numpy version used by the staged computation, with and without a row subset
    np.testing.assert_allclose(upsample(x[0].numpy(), 3), up[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(upsample(x[0].numpy(), 3, [slice(2, 5), slice(0, 7), slice(1, 2)]),
                               up[0, :, 2:5, :, 1:2].numpy(), atol=1e-6)
    np.testing.assert_allclose(upsample_matrix(4, 3) @ np.arange(4.0), expected.numpy(), atol=1e-6)


def test_forward_centres_the_input_in_the_patch_as_the_originals_sampler(liver_net):
    """Image voxel n // 2 sits at patch voxel P // 2; the output is the patch output at offset 13."""
    torch.manual_seed(0)
    x = torch.rand(1, 1, 21, 20, 17) - 0.5
    patch = (54, 54, 54)
    padded = torch.zeros(1, 1, *patch)
    starts = [p // 2 - n // 2 for p, n in zip(patch, x.shape[2:])]
    padded[(0, 0, *(slice(s, s + n) for s, n in zip(starts, x.shape[2:])))] = x[0, 0]
    with torch.no_grad():
        whole = liver_net.core(padded)
        out = liver_net(x, patch=patch)
    expected = whole[(slice(None), slice(None), *(slice(s - 13, s - 13 + n) for s, n in zip(starts, x.shape[2:])))]
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="cannot hold"):
        liver_net(torch.zeros(1, 1, 40, 20, 17), patch=patch)  # 40 + 26 > 54


def test_two_class_logits_reproduce_the_originals_sigmoid(liver_net):
    x = torch.rand(1, 1, 10, 10, 10) - 0.5
    with torch.no_grad():
        logits = liver_net(x)
    assert torch.all(logits[:, 0] == 0)  # the pair (0, z): softmax = (1 - sigmoid(z), sigmoid(z))
    torch.testing.assert_close(torch.softmax(logits, 1)[:, 1], torch.sigmoid(logits[:, 1]))


def test_even_factors_are_refused_with_the_reason():
    from liverseg.errors import ConfigError

    with pytest.raises(ConfigError, match="odd"):
        KulUNet(3, 1, 2, (8, 16), factor=2)


# ----------------------------------------------------------------------------- ONNX graphs


def _run(data: bytes, feed: dict) -> list:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)


def test_hand_written_onnx_passes_the_onnx_checker():
    onnx = pytest.importorskip("onnx")
    weight = np.random.default_rng(0).normal(size=(4, 6, 3, 3)).astype(np.float32)
    for options in ({}, {"prenorm": True, "masked": True, "moments": True, "pool": 2}, {"prenorm": True, "slices": 3}):
        w = weight if options.get("slices") else np.random.default_rng(1).normal(size=(4, 3, 3, 3, 3)).astype(np.float32)
        model = onnx.load_from_string(conv_model(w, np.zeros(4, np.float32), [1] * (2 * (w.ndim - 2)), **options))
        onnx.checker.check_model(model, full_check=True)


def test_conv_with_norm_mask_moments_and_pool_matches_torch():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 3, 3, 3, 3)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    x = rng.normal(size=(2, 3, 9, 6, 6)).astype(np.float32)
    mean, std = rng.normal(size=3).astype(np.float32), rng.uniform(0.5, 2, size=3).astype(np.float32)
    mask = (rng.uniform(size=(1, 1, 9, 6, 6)) > 0.3).astype(np.float32)
    bank = ConvBank({"c.conv.weight": w, "c.conv.bias": b})
    y, extras = bank("c", x, same=True, norm=(mean, std), mask=mask, moments=True, pool=3)
    a = F.leaky_relu(torch.from_numpy((x - mean.reshape(1, 3, 1, 1, 1)) / (std.reshape(1, 3, 1, 1, 1) + 1e-7)), 0.01)
    expected = F.conv3d(a * torch.from_numpy(mask), torch.from_numpy(w), torch.from_numpy(b), padding=1)
    np.testing.assert_allclose(y, expected.numpy(), atol=1e-4)
    np.testing.assert_allclose(extras["sum"], expected.double().sum((0, 2, 3, 4)).numpy(), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(extras["sumsq"], (expected.double() ** 2).sum((0, 2, 3, 4)).numpy(), rtol=1e-5)
    np.testing.assert_allclose(extras["pooled"], F.max_pool3d(expected, 3).numpy(), atol=1e-4)


def test_a_3d_kernel_spanning_all_slices_runs_as_a_2d_convolution():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(5, 4, 3, 3, 3)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    bank = ConvBank({"c.conv.weight": w, "c.conv.bias": b})
    x = rng.normal(size=(3, 4, 7, 8, 3)).astype(np.float32)  # (N, C, X, Y, 3 slices)
    slices = np.ascontiguousarray(np.moveaxis(x, -1, 2))  # (N, C, K, X, Y)
    y, extras = bank("c@2d", slices, same=True, moments=True, per_sample=True)
    expected = F.conv3d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), padding=(1, 1, 0))[..., 0]
    np.testing.assert_allclose(y, expected.numpy(), atol=1e-4)
    assert extras["sum"].shape == (3, 5)


# ----------------------------------------------------------------------------- staged computation


def test_moments_merge_parts_as_one_pass_would():
    rng = np.random.default_rng(4)
    x = rng.normal(3.0, 2.0, size=(3, 40)).astype(np.float32)
    m = Moments(3)
    m.add(x[:, :10], 0)
    m.add_sums(20.0, x[:, 10:30].astype(np.float64).sum(1), (x[:, 10:30].astype(np.float64) ** 2).sum(1))
    m.add_constant(np.array([1.0, 2.0, 3.0]), 5)
    everything = np.concatenate([x[:, :30], np.repeat([[1.0], [2.0], [3.0]], 5, axis=1)], axis=1)
    mean, std = m.stats()
    np.testing.assert_allclose(mean, everything.mean(1), rtol=1e-5)
    np.testing.assert_allclose(std, everything.std(1), rtol=1e-5)


def test_upsampled_statistics_need_no_upsampled_map():
    v = np.random.default_rng(5).normal(size=(2, 4, 5, 3)).astype(np.float32)
    mean, std = upsampled_stats(v, 3)
    up = upsample(v, 3)
    np.testing.assert_allclose(mean, up.mean(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(std, up.std(axis=(1, 2, 3)), rtol=1e-5)


def test_class_field_fills_borders_and_pools_like_the_whole_map():
    rng = np.random.default_rng(6)
    table = rng.normal(size=(2, 3, 3, 3)).astype(np.float32)
    box = (slice(4, 7), slice(3, 9), slice(5, 6))
    field = ClassField(table, (9, 12, 9), box, rng.normal(size=(2, 3, 6, 1)).astype(np.float32))
    whole = field.whole()
    assert whole[0, 0, 0, 0] == table[0, 0, 0, 0] and whole[1, 8, 5, 4] == table[1, 2, 1, 1]
    np.testing.assert_array_equal(whole[(slice(None), *box)], field.values)
    np.testing.assert_array_equal(field.fill((slice(0, 9), slice(2, 5), slice(7, 9))), whole[:, :, 2:5, 7:9])
    pooled = max_pool(whole, 3)
    cells = ClassField(field.pooled_table(), (3, 4, 3), (slice(1, 3), slice(1, 3), slice(1, 2)),
                       pooled[:, 1:3, 1:3, 1:2])
    np.testing.assert_array_equal(cells.whole(), pooled)


@pytest.mark.parametrize("shape", [(20, 23, 17), (28, 27, 28)])
def test_staged_computation_with_every_slice_sampled_is_the_whole_patch(liver_net, liver_weights, shape):
    rng = np.random.default_rng(7)
    image = rng.uniform(-0.5, 0.5, size=shape).astype(np.float32)
    patch = (54, 54, 54)
    staged = StagedPatch(ConvBank(liver_weights, 2), Layout.from_weights(liver_weights, 3), image, patch)
    staged.sample(staged.region_slices())
    z, sampled = staged.finalize()
    probability = foreground_probability(staged.logits(tuple(slice(0, n) for n in shape)))
    with torch.no_grad():
        expected = torch.softmax(liver_net(torch.from_numpy(image)[None, None], patch=patch), 1)[0, 1].numpy()
    np.testing.assert_allclose(probability, expected, atol=1e-4)
    np.testing.assert_array_equal(z, np.arange(shape[2]))
    np.testing.assert_allclose(foreground_probability(sampled), expected, atol=1e-4)
    # a box inside: the same values (chunked along S, region edges masked)
    box = (slice(3, 15), slice(0, 9), slice(2, 11))
    np.testing.assert_allclose(foreground_probability(staged.logits(box, chunk=4)), expected[box], atol=1e-4)


def test_sampled_region_of_interest_is_the_largest_structure_grown():
    probability = np.zeros((30, 30, 5), dtype=np.float32)
    probability[10:15, 12:20, 1:3] = 0.9  # the liver on two sampled slices
    probability[25:27, 2:4, 4] = 0.9  # a small stray structure
    roi = sampled_roi(np.array([3, 9, 15, 21, 27]), probability, (30, 30, 40), stride=6)
    assert roi == (slice(6, 19), slice(8, 24), slice(3, 22))
    assert sampled_roi(np.arange(5), np.zeros((4, 4, 5), np.float32), (4, 4, 5), 6) is None


def test_licence_attribution_and_samples_ship_beside_the_weights():
    from liverseg.builtin import WEIGHTS

    folder = WEIGHTS.parent
    notice = (folder / "NOTICE.md").read_text()
    assert "pyliverlesionseg" in notice and "Apache License 2.0" in notice and "10.1007/s00259-020-04800-3" in notice
    assert "Apache License" in (folder / "LICENSE-Apache-2.0.txt").read_text()[:200]
    assert (folder / "samples" / "totalseg_example_ct_3mm.nii.gz").is_file()
    assert (folder / "samples" / "totalseg_example_liver_model_v1.nii.gz").is_file()
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from pathlib import Path

    data = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    shipped = data["tool"]["setuptools"]["package-data"]["liverseg"]
    for name in ("builtin/NOTICE.md", "builtin/LICENSE-Apache-2.0.txt", "builtin/weights/*.npz",
                 "builtin/weights/*.json", "builtin/samples/*.nii.gz"):
        assert name in shipped


def test_sampled_slices_stand_for_the_slices_nearest_them_with_the_image_edges_as_walls(liver_weights):
    staged = StagedPatch(ConvBank(liver_weights, 2), Layout.from_weights(liver_weights, 3),
                         np.zeros((8, 8, 10), np.float32), (54, 54, 54))
    region, content = staged.region[2], staged.content[2]  # patch slices 13..40, the image at 22..31
    weights = staged._weights([15, 25, 29, 38])
    assert sum(weights.values()) == pytest.approx(region.stop - region.start)
    assert weights[15] == content.start - region.start  # alone below the image: all of it
    assert weights[25] + weights[29] == content.stop - content.start  # the image's slices, split between them
    assert weights[25] == pytest.approx(27.5 - 22) and weights[38] == region.stop - content.stop


def test_the_onnx_runtime_path_segments_without_importing_torch():
    """The CPU default (ONNX Runtime, staged) must never load PyTorch or liverseg.models: the lazy imports
    that keep them off it, and the torch-free mirror in staged_levels, exist for this."""
    code = ("import sys, numpy as np, liverseg\n"
            "array = np.full((96, 80, 60), -1000, np.int16); array[16:80, 12:68, 8:52] = 40\n"
            "liverseg.segment((array, np.diag([3.0, 3.0, 3.0, 1.0])), model='liver', device='cpu', threads=1)\n"
            "print(sorted(m for m in ('torch', 'liverseg.models', 'monai') if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
