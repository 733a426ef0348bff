#!/usr/bin/env python3
"""Faithfulness check of liverseg's port of the KU Leuven liver-lesion network against the original.

liverseg runs the lesion U-Net of ``pyliverlesionseg`` 0.3 (Apache-2.0) through its own PyTorch port
(``liverseg/models/kul_resunet.py``, ``KulResUNet``) with weights converted to
``liverseg/builtin/weights/kul_lesion_1x1x3mm.npz``, on a CPU through the slab-wise evaluation of
``liverseg/builtin/resunet_stream.py``. This script checks that both compute the original's function.

* The *reference* is an independent rebuild of the original graph with the ``keras`` 3 package
  (PyTorch backend), written here from the network's description (not from the original's code), with
  the ORIGINAL hdf5 weights read out of the original wheel (sha256-checked against
  ``liverseg/builtin/weights/kul_lesion_1x1x3mm.json``), its graph cross-checked against the hdf5's
  list of saved layers and its parameter count against 3,464,221.
* Inputs, in the original's 180 x 172 x 86 tile (output 92 x 84 x 42 at 1 x 1 x 3 mm):
  - noise, uniform in [-0.5, 0.5] (the range of the original's CT scaling);
  - one tile of a real CT prepared by liverseg's own lesion road (``kul_lesion.prepare``: scaling,
    ``zoom3d`` to 1 x 1 x 3 mm, the dilated liver gate, -0.5 outside it, crop), the tile the product
    runs first (default: LiTS case 117 with its expert liver mask, ``../shared/data/lits117``);
  - with ``--float64``: noise in a 100 x 100 x 54 tile, Keras and ``KulResUNet`` both in float64.
* Columns: Keras (K) against ``KulResUNet.core`` (T) and against the streamed evaluation (S).

The bar: max |difference| of the lesion probability <= 1e-4 on every input (exit code 1 otherwise).

Keras is NEVER a liverseg dependency: run this from a separate virtual environment (see
``scripts/check_kul_port.py`` for one), e.g.::

    KERAS_BACKEND=torch /tmp/kvenv/bin/python scripts/check_kul_lesion_port.py \
        [--wheel pyliverlesionseg-0.3-py3-none-any.whl] [--ct CT --liver MASK] [--threads 2] [--float64]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from check_kul_port import dice, max_abs, original_hdf5  # noqa: E402  (the same wheel handling)

PROVENANCE = REPO / "liverseg" / "builtin" / "weights" / "kul_lesion_1x1x3mm.json"
NPZ = REPO / "liverseg" / "builtin" / "weights" / "kul_lesion_1x1x3mm.npz"
DATA = REPO.parent / "shared" / "data" / "lits117"
TILE = (180, 172, 86)
SMALL = (100, 100, 54)
PARAMETERS = 3_464_221
TOLERANCE = 1e-4
EPSILON = 1e-7

# The original graph as a table, in the order of the hdf5's conv3d_1 .. conv3d_21. Each residual block:
# (kernel, filters) of its two convolutions; a 1x1x1 projection of the block's input follows them where
# the width changes. Down pathways sub-sampled by 1, 2, 4, 8 (max pooling 2); up pathways 4, 2, 1 after
# copying every voxel twice and concatenating the centre-cropped skip (skip first).
DOWN = (
    (((3, 3, 1), 20), ((3, 3, 3), 40)),
    (((3, 3, 1), 40), ((3, 3, 3), 80)),
    (((3, 3, 1), 80), ((3, 3, 3), 160)),
    (((3, 3, 1), 160), ((3, 3, 3), 160)),
)
UP = (  # deepest first
    (((3, 3, 3), 160), ((3, 3, 1), 80)),
    (((3, 3, 3), 80), ((3, 3, 1), 40)),
    (((3, 3, 3), 40), ((3, 3, 1), 20)),
)


def read_keras_weights(hdf5: bytes) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    import io

    import h5py

    with h5py.File(io.BytesIO(hdf5), "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in root.attrs["layer_names"]]
        weights = [(np.asarray(root[f"conv3d_{n}"][f"conv3d_{n}"]["kernel:0"], dtype=np.float32),
                    np.asarray(root[f"conv3d_{n}"][f"conv3d_{n}"]["bias:0"], dtype=np.float32))
                   for n in range(1, 22)]
    return weights, names


def check_saved_structure(names: list[str]) -> None:
    """21 convolutions, 14 norms and LeakyReLUs, 7 residual additions, 3 concatenations, 10 croppings
    (3 skips, 7 shortcuts) in the hdf5's saved layer list."""
    kinds = Counter(n.rsplit("_", 1)[0] for n in names if n.rsplit("_", 1)[-1].isdigit())
    expected = {"conv3d": 21, "lambda": 14, "leaky_re_lu": 14, "add": 7, "concatenate": 3, "cropping3d": 10}
    wrong = {k: (kinds.get(k, 0), v) for k, v in expected.items() if kinds.get(k, 0) != v}
    if wrong:
        sys.exit(f"the hdf5's layer list does not fit the description (kind: (saved, expected)): {wrong}")


def make_keras_reference(tile=TILE, dtype: str = "float32"):
    """The original graph as a Keras 3 model, channels last: (1, X, Y, Z, 1) -> (logit, probability)."""
    import keras
    from keras import layers, ops

    def instance_norm(t):
        if dtype == "float32":
            mean = ops.mean(t, axis=[1, 2, 3], keepdims=True)
        else:  # keras.ops.mean computes float64 in float32 on the torch backend
            mean = ops.sum(t, axis=[1, 2, 3], keepdims=True) / float(np.prod(t.shape[1:4]))
        return (t - mean) / (ops.std(t, axis=[1, 2, 3], keepdims=True) + EPSILON)

    def crop_to(t, shape):
        cut = [(int(a) - int(b)) // 2 for a, b in zip(t.shape[1:4], shape)]
        return t[:, cut[0]:cut[0] + shape[0], cut[1]:cut[1] + shape[1], cut[2]:cut[2] + shape[2], :]

    class OriginalResUNet(keras.Model):
        def __init__(self):
            super().__init__(name="kul_lesion_original", dtype=dtype)
            self.convs = []
            width = 1
            n = 1
            for block in DOWN + UP:
                if block in UP:
                    width = 2 * width  # concatenation: skip (as wide as the up-sampled input here) + input
                for kernel, filters in block:
                    self.convs.append(layers.Conv3D(filters, kernel, padding="valid", name=f"conv3d_{n}", dtype=dtype))
                    n += 1
                if block[-1][1] != width:
                    self.convs.append(layers.Conv3D(block[-1][1], (1, 1, 1), padding="valid", name=f"conv3d_{n}",
                                                    dtype=dtype))
                    n += 1
                width = block[-1][1]
            self.convs.append(layers.Conv3D(1, (1, 1, 1), padding="valid", name=f"conv3d_{n}", dtype=dtype))
            self.norm = layers.Lambda(instance_norm, dtype=dtype)
            self.lrelu = layers.LeakyReLU(negative_slope=0.01, dtype=dtype)
            self.pool = layers.MaxPooling3D(2, strides=2, padding="valid", dtype=dtype)
            self.repeat = layers.UpSampling3D(2, dtype=dtype)
            self.concat = layers.Concatenate(axis=-1, dtype=dtype)
            self.add = layers.Add(dtype=dtype)
            self.sigmoid = layers.Activation("sigmoid", dtype=dtype)

        def call(self, x):
            convs = iter(self.convs)

            def block(x, spec, first_pre):
                shortcut = x
                for j, _ in enumerate(spec):
                    if j or first_pre:
                        x = self.lrelu(self.norm(x))
                    x = next(convs)(x)
                shortcut = crop_to(shortcut, x.shape[1:4])
                if shortcut.shape[-1] != x.shape[-1]:
                    shortcut = next(convs)(shortcut)
                return self.add([x, shortcut])

            skips = []
            for level, spec in enumerate(DOWN):
                x = block(self.pool(x) if level else x, spec, first_pre=level > 0)
                skips.append(x)
            skips.pop()
            for spec in UP:
                x = self.repeat(x)
                x = self.concat([crop_to(skips.pop(), x.shape[1:4]), x])
                x = block(x, spec, first_pre=True)
            logit = next(convs)(self.lrelu(self.norm(x)))
            return logit, self.sigmoid(logit)

    model = OriginalResUNet()
    logit, _ = model(keras.Input(shape=(*tile, 1), batch_size=1, dtype=dtype))
    return model, tuple(int(s) for s in logit.shape[1:4])


def run_keras(model, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = torch.from_numpy(tile[None, ..., None].astype(model.convs[0].kernel.dtype))
    with torch.no_grad():
        logit, probability = model(x, training=False)
    return logit[0, ..., 0].cpu().numpy(), probability[0, ..., 0].cpu().numpy()


def liverseg_module(dtype=torch.float32):
    from liverseg.models.kul_resunet import KulResUNet

    net = KulResUNet(3, 1, 2)
    with np.load(NPZ) as archive:
        net.load_state_dict({k: torch.from_numpy(archive[k]) for k in archive.files})
    return net.to(dtype).eval()


def run_torch(net, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dtype = next(net.parameters()).dtype
    with torch.inference_mode():
        logits = net.core(torch.from_numpy(tile)[None, None].to(dtype))
    return (logits[0, 1] - logits[0, 0]).numpy(), torch.softmax(logits, 1)[0, 1].numpy()


def run_streamed(net, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from liverseg.builtin.resunet_stream import StreamedResUNet

    z = StreamedResUNet(net).logits(tile)
    return z, 1.0 / (1.0 + np.exp(-z.astype(np.float64)))


def real_tile(ct: Path, liver: Path) -> tuple[str, np.ndarray]:
    """The first tile that the product runs on ``ct`` gated by ``liver`` (liverseg's lesion road)."""
    from liverseg.builtin import kul_lesion
    from liverseg.io import read_volume
    from liverseg.grid.record import canonical_ornt, to_canonical

    volume, mask = read_volume(ct), read_volume(liver)
    ornt = canonical_ornt(volume.affine_ras)
    spacing = tuple(float(s) for s in volume.spacing_mm[np.argsort(ornt[:, 0])])
    prepared = kul_lesion.prepare(to_canonical(volume.array, ornt), to_canonical(np.asarray(mask.array) > 0, ornt),
                                  spacing)
    if prepared is None:
        sys.exit(f"{liver}: empty mask")
    start = next(s for s in kul_lesion.tiles(prepared.image.shape)
                 if prepared.gate[tuple(slice(max(0, a), a + o) for a, o in zip(s, kul_lesion.TILE_OUTPUT))].any())
    return f"{ct.parent.name}/{ct.name} tile {start}", kul_lesion.tile_input(prepared.image, start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, default=None)
    parser.add_argument("--ct", type=Path, default=DATA / "ct.nii.gz")
    parser.add_argument("--liver", type=Path, default=DATA / "label.nii.gz", help="liver mask (every label > 0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float64", action="store_true")
    args = parser.parse_args()

    import keras

    if keras.backend.backend() != "torch":
        sys.exit(f"keras runs on {keras.backend.backend()!r}: run with KERAS_BACKEND=torch")
    torch.set_num_threads(args.threads)
    provenance = json.loads(PROVENANCE.read_text())
    hdf5, wheel = original_hdf5(args.wheel, provenance)
    weights, names = read_keras_weights(hdf5)
    check_saved_structure(names)
    model, out_shape = make_keras_reference()
    for layer, (kernel, bias) in zip(model.convs, weights, strict=True):
        layer.set_weights([kernel, bias])
    if model.count_params() != PARAMETERS:
        sys.exit(f"the Keras graph has {model.count_params():,} parameters, the original {PARAMETERS:,}")
    net = liverseg_module()
    print(f"original: {wheel} (sha256 ok), 21 convolutions, {model.count_params():,} parameters, output "
          f"{out_shape}; keras {keras.__version__} on torch {torch.__version__}, {args.threads} threads", flush=True)

    rng = np.random.default_rng(args.seed)
    inputs = [("random U(-0.5,0.5)", rng.uniform(-0.5, 0.5, TILE).astype(np.float32), model, net, True)]
    if args.ct.is_file() and args.liver.is_file():
        inputs.append((*real_tile(args.ct, args.liver), model, net, True))
    else:
        print(f"{args.ct} or {args.liver} not found: the real-CT row is left out")
    if args.float64:
        model64, _ = make_keras_reference(SMALL, "float64")
        for layer, (kernel, bias) in zip(model64.convs, weights, strict=True):
            layer.set_weights([kernel.astype(np.float64), bias.astype(np.float64)])
        inputs.append((f"random {'x'.join(map(str, SMALL))}, float64", rng.uniform(-0.5, 0.5, SMALL),
                       model64, liverseg_module(torch.float64), False))

    failed = False
    print(f"\n{'input':<34} {'fg>0.5':>7} {'|Δp| K-T':>9} {'|Δz| K-T':>9} {'|Δp| K-S':>9} {'|Δz| K-S':>9} "
          f"{'Dice K-T':>8} {'Dice K-S':>8} {'t K':>5} {'t T':>5} {'t S':>5}")
    for label, tile, keras_model, torch_net, streamed in inputs:
        t0 = time.perf_counter()
        kz, kp = run_keras(keras_model, tile)
        t1 = time.perf_counter()
        tz, tp = run_torch(torch_net, tile)
        t2 = time.perf_counter()
        cells = [f"{max_abs(kp, tp):9.1e}", f"{max_abs(kz, tz):9.1e}"]
        dp = [max_abs(kp, tp)]
        if streamed:
            sz, sp = run_streamed(torch_net, tile.astype(np.float32))
            dp.append(max_abs(kp, sp))
            cells += [f"{max_abs(kp, sp):9.1e}", f"{max_abs(kz, sz):9.1e}"]
        else:
            cells += [f"{'n/a':>9}", f"{'n/a':>9}"]
        t3 = time.perf_counter()
        dice_s = f"{dice(kp > 0.5, sp > 0.5):8.5f}" if streamed else f"{'n/a':>8}"
        print(f"{label[:34]:<34} {int((kp > 0.5).sum()):7d} {' '.join(cells)} {dice(kp > 0.5, tp > 0.5):8.5f} "
              f"{dice_s} {t1 - t0:5.0f} {t2 - t1:5.0f} {t3 - t2:5.0f}", flush=True)
        failed |= max(dp) > TOLERANCE
    print("\nK = Keras on the original hdf5, T = KulResUNet.core, S = the streamed evaluation "
          "(liverseg's CPU path); |Δp|, |Δz|: max abs difference of the probability and the logit over the "
          "92 x 84 x 42 output; t: seconds")
    print(f"\n{'FAIL' if failed else 'PASS'}: max |Δp| {'>' if failed else '<='} {TOLERANCE:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
