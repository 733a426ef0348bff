"""`liverseg train` on a manifest whose labels are not label-map files: a CHAOS-style DICOM series with
one PNG mask per DICOM file (label_format png_slices), placed on the image grid by io.labels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from liverseg.phantoms.dicom import write_series
from PIL import Image

from liverseg.cli import main

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke_3d.yaml"


def test_train_on_png_slice_labels_through_a_manifest(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n, rows, cols = 16, 24, 24
    block = np.zeros((n, rows, cols), dtype=bool)
    block[4:12, 6:18, 5:17] = True
    stored = (rng.normal(1000, 20, (n, rows, cols)) + 150 * block).astype(np.uint16)  # liver brighter
    case = tmp_path / "Train_Sets" / "CT" / "1"
    write_series(case / "DICOM_anon", stored, spacing=(4.0, 4.0), slice_mm=4.0,
                 names=[f"i{k:04d}.dcm" for k in range(n)])
    (case / "Ground").mkdir()
    for k in range(n):
        Image.fromarray(block[k].astype(np.uint8) * 255).save(case / "Ground" / f"liver_GT_{k:03d}.png")
    manifest = {"name": "chaos-like", "labels": {"background": 0, "liver": 1}, "label_format": "png_slices",
                "structures": {"liver": 1},
                "cases": [{"id": "ct1", "image": "Train_Sets/CT/1/DICOM_anon", "label": "Train_Sets/CT/1/Ground"}],
                "splits": {"train": ["ct1"], "val": ["ct1"]}}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    run = tmp_path / "run"
    code = main(["train", "--config", str(SMOKE), "--run-dir", str(run), "-q", "--manifest", str(tmp_path / "m.json"),
                 "--set", "train.patch_size=[16, 16, 16]", "--set", "infer.roi_size=[16, 16, 16]",
                 "--set", "train.epochs=1", "--set", "train.iters_per_epoch=2"])
    assert code == 0, capsys.readouterr().err
    header = (run / "metrics.csv").read_text().splitlines()
    assert len(header) == 2 and "val_dice_liver" in header[0]
    # the validation Dice is computed against the PNG labels: a value, not an empty field
    row = dict(zip(header[0].split(","), header[1].split(",")))
    assert 0.0 <= float(row["val_dice_liver"]) <= 1.0
    # ... and the label training read is the PNG masks, voxel for voxel on the image grid
    from liverseg.io import read_volume
    from liverseg.io.labels import read_label
    from liverseg.datasets.manifest import load_manifest

    case = load_manifest(tmp_path / "m.json").split("train")[0]
    label = read_label(case.label, read_volume(case.image), case.label_format, case.structures)
    np.testing.assert_array_equal(label.array == 1, block.transpose(2, 1, 0))  # (k, row, col) -> (i=col, j=row, k)
