"""Every registered model, 3D and 2D (2.5D), trains through `liverseg train` with the smoke configs and
predicts through `liverseg predict` with exactly the input geometry."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from liverseg.cli import main
from liverseg.models import MODELS

REPO = Path(__file__).resolve().parents[1]
SMOKE = {3: REPO / "configs" / "smoke_3d.yaml", 2: REPO / "configs" / "smoke_2d.yaml"}


@pytest.mark.slow
@pytest.mark.parametrize("dims", [3, 2], ids=["3d", "2d"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_trains_and_predicts_on_the_input_grid(name, dims, tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    extra = ["--set", "model.strides=[3,3]"] if name == "kul_unet" else []  # an odd factor (see KulUNet)
    code = main(["train", "--config", str(SMOKE[dims]), "--run-dir", str(run), "--set", f"data.manifest={tiny_dataset}",
                 "--set", f"model.name={name}", "--set", "model.deep_supervision=true", "--set", "train.epochs=1",
                 "--device", "cpu", "-q", *extra])
    assert code == 0, capsys.readouterr().err
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    oblique = tiny_dataset.parent / "images" / "case_obl.nii.gz"
    out = tmp_path / "out"
    assert main(["predict", str(oblique), "-o", str(out), "--model", str(run), "--device", "cpu", "-q"]) == 0
    written = sitk.ReadImage(str(out / "case_obl" / "segmentation.nii.gz"))
    reference = sitk.ReadImage(str(oblique))
    assert written.GetSize() == reference.GetSize()
    np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), rtol=0, atol=1e-6)
    assert written.GetPixelID() == sitk.sitkUInt8
