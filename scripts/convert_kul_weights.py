#!/usr/bin/env python3
"""Convert the KU Leuven liver and liver-lesion models' Keras weights (``pyliverlesionseg==0.3``,
Apache-2.0) into liverseg's built-in weight files.

    python scripts/convert_kul_weights.py                      # downloads the wheel with pip
    python scripts/convert_kul_weights.py --wheel pyliverlesionseg-0.3-py3-none-any.whl

Needs ``h5py`` (``pip install h5py``; a conversion tool, not a liverseg dependency). Writes
``liverseg/builtin/weights/<name>.npz`` (float32 arrays under the parameter names of
``liverseg.models.kul_unet.KulUNet`` or ``liverseg.models.kul_resunet.KulResUNet``) and ``<name>.json`` (provenance: the wheel's and the hdf5's
sha256, the member path inside the wheel, the weight file's own sha256, licence, citation).

The hdf5 holds weights only (no graph). Its Keras layers ``conv3d_1`` .. ``conv3d_15`` are, in order,
the convolutions of the network as ``KulUNet`` lists them (down pathways 1, 3, 9, 27, up pathways 9,
3, 1, the 1x1x1 output); the lesion model's ``conv3d_1`` .. ``conv3d_21`` are ``KulResUNet``'s, each
residual block's 1x1x1 projection after the block's two convolutions. The shapes confirm both orders: every converted tensor must fit its ``KulUNet``
parameter exactly or the script stops. Keras kernels are ``(kx, ky, kz, in, out)``; PyTorch's are
``(out, in, kx, ky, kz)``. The check against an independent implementation of the original graph is
``scripts/check_kul_port.py``.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WHEEL = "pyliverlesionseg-0.3-py3-none-any.whl"
WHEEL_SHA256 = "ffe1576aefff5922ea8d1cfa2c50864cda97798798559542b9517689fd290cb8"
MODELS = {
    "kul_liver_3mm": {
        "member": "pyliverlesionseg/trained_models/model_unet_ct_mr_liv_seg_resize_1.5mm_med_3_resize_3mm_"
                  "20201011_dice_loss_val_binary_dice_mean.hdf5",
        "spec": dict(spatial_dims=3, in_channels=1, out_channels=2, channels=(20, 40, 80, 160), factor=3),
        "keras_layers": [f"conv3d_{i}" for i in range(1, 16)],
    },
    "kul_lesion_1x1x3mm": {
        "member": "pyliverlesionseg/trained_models/model_unet_ct_mr_lesion_seg_resize_1mm_1mm_3mm_"
                  "20220207_dice_loss_val_binary_dice_mean.hdf5",
        "network": "kul_resunet",
        "spec": dict(spatial_dims=3, in_channels=1, out_channels=2, channels=(20, 40, 80, 160)),
        # 15 convolutions and, after each residual block whose width changes, its 1x1x1 projection
        "keras_layers": [f"conv3d_{i}" for i in range(1, 22)],
    },
}
OUT_DIR = REPO / "liverseg" / "builtin" / "weights"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_wheel(dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--python-version", "3.6",
                    "--only-binary=:all:", "pyliverlesionseg==0.3", "-d", str(dest)], check=True)
    return dest / WHEEL


def deterministic_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """``np.savez`` bytes without time stamps, so a re-run writes the same file (and sha256)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, arrays[key], allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    return buffer.getvalue()


def keras_weights(hdf5: bytes, layers: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel, bias) of each named Keras Conv3D layer, from the hdf5's ``model_weights`` group."""
    import h5py

    with h5py.File(io.BytesIO(hdf5), "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        voxel_size = [float(v) for v in f["header/voxel_size"][()]] if "header" in f else None
        out = []
        for name in layers:
            layer = group[name][name]
            out.append((np.asarray(layer["kernel:0"], dtype=np.float32), np.asarray(layer["bias:0"], dtype=np.float32)))
    return out, voxel_size


def convert(name: str, wheel_path: Path) -> Path:
    import torch  # only to read the parameter names and shapes of liverseg's own module

    from liverseg.models.kul_resunet import KulResUNet
    from liverseg.models.kul_unet import KulUNet

    model = MODELS[name]
    network = {"kul_unet": KulUNet, "kul_resunet": KulResUNet}[model.get("network", "kul_unet")]
    wheel_bytes = wheel_path.read_bytes()
    if sha256(wheel_bytes) != WHEEL_SHA256:
        raise SystemExit(f"{wheel_path}: sha256 {sha256(wheel_bytes)} is not the published wheel's {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel_path) as wheel:
        hdf5 = wheel.read(model["member"])
        licence = wheel.read("pyliverlesionseg-0.3.dist-info/LICENSE").decode()
    weights, voxel_size = keras_weights(hdf5, model["keras_layers"])
    net = network(**model["spec"])
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Conv2d))]
    names = {id(p): n for n, p in net.named_parameters()}
    if len(convs) != len(weights):
        raise SystemExit(f"{name}: {len(weights)} Keras convolutions, {len(convs)} in {network.__name__}")
    arrays = {}
    for conv, (kernel, bias) in zip(convs, weights):
        torch_kernel = np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2))
        if torch_kernel.shape != tuple(conv.weight.shape) or bias.shape != tuple(conv.bias.shape):
            raise SystemExit(f"{name}: Keras kernel {kernel.shape} does not fit {names[id(conv.weight)]} "
                             f"{tuple(conv.weight.shape)}")
        arrays[names[id(conv.weight)]] = torch_kernel
        arrays[names[id(conv.bias)]] = bias
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    npz_path = OUT_DIR / f"{name}.npz"
    npz_bytes = deterministic_npz(arrays)
    npz_path.write_bytes(npz_bytes)
    provenance = {
        "name": name,
        "source": "PyPI pyliverlesionseg==0.3 (KU Leuven), https://pypi.org/project/pyliverlesionseg/0.3/",
        "wheel": WHEEL, "wheel_sha256": WHEEL_SHA256,
        "member": model["member"], "member_sha256": sha256(hdf5),
        "hdf5_voxel_size_mm": voxel_size,
        "weights_file": npz_path.name, "weights_sha256": sha256(npz_bytes),
        "parameters": int(sum(a.size for a in arrays.values())),
        "conversion": "scripts/convert_kul_weights.py: Keras (kx, ky, kz, in, out) -> PyTorch (out, in, kx, ky, kz)",
        "licence": "Apache-2.0",
    }
    (OUT_DIR / f"{name}.json").write_text(json.dumps(provenance, indent=2) + "\n")
    (OUT_DIR.parent / "LICENSE-Apache-2.0.txt").write_text(licence)  # the wheel's LICENSE: plain Apache-2.0
    print(json.dumps(provenance, indent=2))
    return npz_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, default=None, help=f"{WHEEL} (default: pip download it)")
    parser.add_argument("--model", choices=sorted(MODELS), default=None, help="convert only this one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch_wheel(Path(tmp))
        for name in [args.model] if args.model else sorted(MODELS):
            convert(name, wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
