"""`liverseg export`: ONNX and TorchScript files carry the config, and predict from them gives the
same label map as the run folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from liverseg.cli import main
from liverseg.config import load_config, to_dict
from liverseg.errors import InputError
from liverseg.inference.sources import load_exported
from liverseg.io import write_volume
from liverseg.models import build_model

from conftest import make_volume

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_and_input(tmp_path_factory) -> tuple[Path, Path]:
    cfg = load_config(REPO / "configs" / "smoke_3d.yaml", ["infer.roi_size=[24, 24, 24]"])
    torch.manual_seed(0)
    model = build_model(cfg.model, in_channels=1, out_channels=len(cfg.data.labels))
    folder = tmp_path_factory.mktemp("export")
    run = folder / "run"
    run.mkdir()
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "epoch": 2}, run / "best.pt")
    shape = (22, 20, 10)
    array = np.random.default_rng(0).integers(-200, 300, shape).astype(np.int16)
    image = folder / "ct.nii.gz"
    write_volume(make_volume(shape, (4.0, 4.0, 5.0), array=array), image)
    return run, image


@pytest.mark.parametrize("fmt, name", [("onnx", "model.onnx"), ("torchscript", "model.torchscript.pt")])
def test_exported_model_predicts_like_the_run(run_and_input, tmp_path, fmt, name, capsys):
    pytest.importorskip("onnxruntime") if fmt == "onnx" else None
    run, image = run_and_input
    exported = tmp_path / "exported" / name
    assert main(["export", str(run), "--format", fmt, "-o", str(exported)]) == 0
    assert capsys.readouterr().out.strip() == str(exported)
    assert [p.name for p in exported.parent.iterdir()] == [name]  # no temporary file left
    bundle = load_exported(exported, torch.device("cpu"))
    assert bundle.cfg == load_config(REPO / "configs" / "smoke_3d.yaml", ["infer.roi_size=[24, 24, 24]"])
    assert bundle.backend == fmt and "best.pt epoch 2" in bundle.model_id
    for model, out in ((run, tmp_path / "from_run"), (exported, tmp_path / "from_file"),
                       (exported.parent, tmp_path / "from_folder")):
        assert main(["predict", str(image), "-o", str(out), "--model", str(model), "--device", "cpu", "-q",
                     "--threads", "1"]) == 0
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "from_run" / "ct" / "segmentation.nii.gz")))
    for out in ("from_file", "from_folder"):
        got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / out / "ct" / "segmentation.nii.gz")))
        assert (got == expected).mean() > 0.999  # same weights; float differences only at near-ties


def test_a_foreign_file_is_refused_with_one_line(tmp_path):
    bogus = tmp_path / "weights.pt"
    torch.save({"not": "a model"}, bogus)
    with pytest.raises(InputError, match="weights.pt: is neither a run folder nor a model written by"):
        load_exported(bogus, torch.device("cpu"))


def _copy_run(run: Path, dest: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, dest))


def test_a_run_folder_with_a_current_model_onnx_predicts_with_onnx_runtime_on_a_cpu(run_and_input, tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    from liverseg.inference.sources import load_model
    from liverseg.training.loop import export_for_prediction

    run = _copy_run(run_and_input[0], tmp_path / "run")
    assert load_model(run, "cpu").backend == "torch"  # nothing exported yet
    with pytest.raises(InputError, match="--backend onnx, but there is no model.onnx"):
        load_model(run, "cpu", backend="onnx")
    assert export_for_prediction(run) == run / "model.onnx"  # what train does at the end of a CT run
    assert load_model(run, "cpu").backend == "onnx"
    assert load_model(run, "cpu", backend="torch").backend == "torch"
    # A checkpoint written after the export (a resumed run): the stale ONNX file is not used.
    checkpoint = torch.load(run / "best.pt", weights_only=True)
    checkpoint["epoch"] = 3
    torch.save(checkpoint, run / "best.pt")
    with caplog.at_level("INFO", logger="liverseg"):
        assert load_model(run, "cpu").backend == "torch"
    assert "exported from another checkpoint than best.pt" in caplog.text
    with pytest.raises(InputError, match="another checkpoint"):
        load_model(run, "cpu", backend="onnx")


def test_onnx_prediction_never_imports_torch_or_monai(run_and_input, tmp_path):
    """Start-up time: PyTorch's import alone is about as long as a small CT's whole prediction."""
    pytest.importorskip("onnxruntime")
    import subprocess
    import sys

    run, image = run_and_input
    exported = tmp_path / "model.onnx"
    assert main(["export", str(run), "--format", "onnx", "-o", str(exported)]) == 0
    code = ("import sys; from liverseg.cli import main; "
            f"rc = main(['predict', {str(image)!r}, '-o', {str(tmp_path / 'out')!r}, '--model', {str(exported)!r}, "
            "'--device', 'cpu', '-q', '--threads', '1']); "
            "heavy = sorted(m for m in ('torch', 'monai', 'nibabel') if m in sys.modules); "
            "print('imported:', heavy); sys.exit(rc or (3 if heavy else 0))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "out" / "ct" / "segmentation.seg.nrrd").is_file()


def test_onnx_device_names_are_checked_without_torch():
    from liverseg.inference.sources import onnx_providers

    assert onnx_providers("cpu", ["CPUExecutionProvider"]) == (["CPUExecutionProvider"], "cpu")
    assert onnx_providers(None, ["CPUExecutionProvider"])[1] == "cpu"
    providers, device = onnx_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert device == "cuda" and providers[0][0] == "CUDAExecutionProvider"
    assert onnx_providers("cuda:1", ["CUDAExecutionProvider"])[0][0] == ("CUDAExecutionProvider", {"device_id": 1})
    with pytest.raises(InputError, match="no CUDA provider"):
        onnx_providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(InputError, match="not a device name"):
        onnx_providers("tpu", ["CPUExecutionProvider"])
