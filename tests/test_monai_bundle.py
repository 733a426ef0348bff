"""`liverseg export RUN --format monai-bundle`: a MONAI bundle folder that `python -m monai.bundle run`
runs on a NIfTI, giving the label map of `liverseg predict` on the same grid, up to resampling."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from liverseg.cli import main
from liverseg.config import load_config, to_dict
from liverseg.errors import InputError
from liverseg.io import write_volume
from liverseg.io.volume import Volume
from liverseg.models import build_model
from liverseg.export.monai_bundle import export_monai_bundle
from liverseg.grid.road import labels_to_network_grid, to_network_grid

from conftest import dice_of, make_volume, permutation, rotation

REPO = Path(__file__).resolve().parents[1]
SHAPE = (40, 36, 20)  # 2 mm voxels, LPS rotated by 20 degrees about S: Orientationd and Invertd must work
# Measured (torch 2.13, MONAI 1.6.1): voxel agreement 0.9995, liver Dice 0.9986 on this volume; the
# rest is MONAI's Spacingd (exact 4 mm spacing, no anti-aliasing) against liverseg's resampling.
MIN_AGREEMENT, MIN_DICE = 0.995, 0.98


def _phantom() -> tuple[Volume, np.ndarray]:
    index = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).astype(float)
    inside = (((index - np.array(SHAPE) / 2.0) / np.array([14.0, 12.0, 7.0])) ** 2).sum(-1) < 1.0
    hu = np.where(inside, 60.0, -100.0) + np.random.default_rng(0).normal(0.0, 20.0, SHAPE)
    direction = rotation(2, 20.0) @ permutation((0, 1, 2), (-1, -1, 1))
    return make_volume(SHAPE, (2.0, 2.0, 2.0), direction, (10.0, -5.0, 3.0), array=hu.astype(np.int16)), inside


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory) -> tuple[Path, Path]:
    """The smoke model fitted in 40 steps (2 s) to the phantom's ellipsoid: an untrained network's
    near-0.5 probabilities would make the comparison a coin toss at every voxel."""
    cfg = load_config(REPO / "configs" / "smoke_3d.yaml")
    volume, inside = _phantom()
    folder = tmp_path_factory.mktemp("monai_bundle")
    image = write_volume(volume, folder / "input" / "ct.nii.gz")
    on_grid, record = to_network_grid(volume, cfg.preprocess)
    x, y = torch.from_numpy(on_grid), torch.from_numpy(labels_to_network_grid(inside.astype(np.uint8), record)).long()
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    try:
        model = build_model(cfg.model, in_channels=1, out_channels=len(cfg.data.labels))
        optimiser = torch.optim.Adam(model.parameters(), 3e-3)
        for _ in range(40):
            loss = torch.nn.functional.cross_entropy(model(x[None, None]), y[None])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    run = folder / "run"
    run.mkdir()
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "epoch": 40}, run / "best.pt")
    return run, image


def test_the_bundle_runs_with_monai_and_agrees_with_predict(fitted_run, tmp_path, capsys):
    run, image = fitted_run
    bundle = tmp_path / "bundle"
    assert main(["export", str(run), "--format", "monai-bundle", "-o", str(bundle)]) == 0
    assert capsys.readouterr().out.strip() == str(bundle)
    assert sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()) == [
        "LICENSE", "configs/inference.json", "configs/metadata.json", "docs/README.md", "models/model.ts"]
    assert not list(tmp_path.glob(".*"))  # no temporary folder left
    # What the command in docs/README.md runs (`python -m monai.bundle run` is this function behind
    # MONAI's `fire` command line, an optional dependency), in-process: a second interpreter would spend
    # 5 s importing torch and MONAI.
    readme = (bundle / "docs" / "README.md").read_text()
    assert "python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json" in readme
    from monai.bundle import run as run_bundle

    run_bundle(config_file=str(bundle / "configs" / "inference.json"),
               meta_file=str(bundle / "configs" / "metadata.json"), bundle_root=str(bundle),
               dataset_dir=str(image.parent), output_dir=str(tmp_path / "monai"))
    assert torch.is_grad_enabled()  # the bundle leaves the caller's autograd as it was
    assert main(["predict", str(image), "-o", str(tmp_path / "liverseg"), "--model", str(run), "--device", "cpu",
                 "-q", "--threads", "1", "--backend", "torch"]) == 0
    got = sitk.ReadImage(str(tmp_path / "monai" / "ct_seg.nii.gz"))
    want = sitk.ReadImage(str(tmp_path / "liverseg" / "ct" / "segmentation.nii.gz"))
    source = sitk.ReadImage(str(image))
    for out in (got, want):  # the input's own grid
        assert out.GetSize() == source.GetSize() == SHAPE
        np.testing.assert_allclose(out.GetDirection(), source.GetDirection(), atol=1e-5)
        np.testing.assert_allclose(out.GetOrigin(), source.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(out.GetSpacing(), source.GetSpacing(), atol=1e-5)
    a, b = sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(want)
    assert set(np.unique(a)) <= {0, 1} and (b == 1).sum() > 3000  # the fitted model finds the ellipsoid
    assert (a == b).mean() > MIN_AGREEMENT and dice_of(a == 1, b == 1) > MIN_DICE, ((a == b).mean(), dice_of(a, b))
    # The TorchScript takes any size (padded to the divisor inside), as the sliding window needs.
    module = torch.jit.load(str(bundle / "models" / "model.ts"))
    assert tuple(module(torch.zeros(1, 1, 13, 7, 9)).shape) == (1, 2, 13, 7, 9)


def test_metadata_and_config_describe_the_run(fitted_run, tmp_path):
    import monai

    run, _ = fitted_run
    bundle = export_monai_bundle(run, tmp_path / "b")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    for key in ("schema", "version", "monai_version", "pytorch_version", "numpy_version", "task", "description",
                "authors", "copyright", "network_data_format"):
        assert meta[key], key
    assert meta["monai_version"] == monai.__version__ and meta["numpy_version"] == np.__version__
    inputs, outputs = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert inputs["num_channels"] == 1 and inputs["pixdim"] == [4.0, 4.0, 4.0] and inputs["modality"] == "CT"
    assert inputs["hu_window"] == [-200.0, 300.0] and inputs["value_range"] == [0.0, 1.0]
    assert outputs["num_channels"] == 2 and outputs["channel_def"] == {"0": "background", "1": "liver"}
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    transforms = {t["_target_"]: t for t in config["preprocessing"]["transforms"]}
    assert transforms["Orientationd"]["axcodes"] == "RAS" and transforms["Spacingd"]["pixdim"] == [4.0, 4.0, 4.0]
    assert (transforms["ScaleIntensityRanged"]["a_min"], transforms["ScaleIntensityRanged"]["a_max"]) == (-200.0, 300.0)
    assert config["roi_size"] == [48, 48, 48] and config["overlap"] == 0.25
    post = [t["_target_"] for t in config["postprocessing"]["transforms"]]
    assert post == ["Invertd", "AsDiscreted", "KeepLargestConnectedComponentd", "SaveImaged"]
    with pytest.raises(InputError, match="not an empty folder"):
        export_monai_bundle(run, bundle)


def test_a_kul_unet_run_is_refused_with_the_reason(tmp_path):
    cfg = load_config(REPO / "configs" / "smoke_3d.yaml",
                      ["model.name=kul_unet", "model.channels=[2, 2, 2, 2]", "model.strides=[3, 3, 3]"])
    model = build_model(cfg.model, in_channels=1, out_channels=2)
    run = tmp_path / "kul"
    run.mkdir()
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "epoch": 1}, run / "best.pt")
    with pytest.raises(InputError, match="kul_unet.*not shape-generic.*--format onnx"):
        export_monai_bundle(run, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


@pytest.mark.slow
def test_the_readme_command_runs_the_bundle_in_a_fresh_interpreter(fitted_run, tmp_path):
    """`python -m monai.bundle run ...` as docs/README.md gives it (python-fire: the `bundle` extra)."""
    pytest.importorskip("fire")
    import subprocess
    import sys

    run, image = fitted_run
    bundle = tmp_path / "bundle"
    assert main(["export", str(run), "--format", "monai-bundle", "-o", str(bundle)]) == 0
    out = tmp_path / "monai"
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                           "--meta_file", "configs/metadata.json", "--bundle_root", str(bundle),
                           "--dataset_dir", str(image.parent), "--output_dir", str(out)],
                          cwd=bundle, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = sitk.ReadImage(str(out / "ct_seg.nii.gz"))
    assert got.GetSize() == sitk.ReadImage(str(image)).GetSize()
