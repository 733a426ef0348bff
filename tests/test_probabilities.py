"""``liverseg predict --save-probabilities`` and ensembles (``--model A --model B``), and evaluate's
AUC/ECE from a CT probability map; tiny untrained models on small synthetic volumes."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from liverseg import metrics
from liverseg.cli import main
from liverseg.evaluation import evaluate
from liverseg.io import write_volume

from conftest import make_volume, permutation

NO_POSTPROCESSING = "infer.largest_component=[]"


def _run_folder(folder: Path, seed: int, labels: list[str] | None = None) -> Path:
    """A smoke-config run folder with untrained weights of ``seed`` (as conftest's ``untrained_run``)."""
    import torch

    from liverseg.config import from_dict, load_config, to_dict
    from liverseg.models import build_model

    config = to_dict(load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke_3d.yaml"))
    if labels is not None:
        config["data"]["labels"] = labels
    cfg = from_dict(config).validate()
    torch.manual_seed(seed)
    model = build_model(cfg.model, in_channels=1, out_channels=len(cfg.data.labels))
    folder.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "epoch": 0}, folder / "best.pt")
    return folder


@pytest.fixture(scope="module")
def second_run(tmp_path_factory) -> Path:
    return _run_folder(tmp_path_factory.mktemp("untrained_b") / "run", seed=1)


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    """A small CT on a permuted, flipped grid (so the way back to the input grid is not the identity)."""
    rng = np.random.default_rng(3)
    shape = (30, 22, 18)
    array = rng.integers(-300, 300, shape).astype(np.int16)
    array[8:20, 5:15, 4:12] = 80
    volume = make_volume(shape, (4.0, 5.0, 3.5), permutation((1, 2, 0), (-1, 1, -1)), origin=(10.0, -5.0, 3.0),
                         array=array)
    return write_volume(volume, tmp_path_factory.mktemp("ct") / "ct.nii.gz")


def _predict(ct: Path, out: Path, *models: Path, extra: tuple[str, ...] = ()) -> Path:
    args = ["predict", str(ct), "-o", str(out), "-q", "--no-preview", "--save-probabilities", "--device", "cpu",
            "--set", NO_POSTPROCESSING, *extra]
    for model in models:
        args += ["--model", str(model)]
    assert main(args) == 0
    return out / "ct"


def _saved(case_dir: Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Image, nib.Nifti1Image]:
    seg = nib.load(str(case_dir / "segmentation.nii.gz"))
    prob = nib.load(str(case_dir / "probabilities.nii.gz"))
    return np.asarray(seg.dataobj), np.asarray(prob.dataobj.get_unscaled()), seg, prob


def _argmax_consistent(labels: np.ndarray, values: np.ndarray) -> None:
    """Each label is a largest saved value of its voxel (strictly the argmax where the uint8 values differ)."""
    top = values.max(axis=-1)
    chosen = np.take_along_axis(values, labels[..., None].astype(np.int64), axis=-1)[..., 0]
    assert np.array_equal(chosen, top)
    untied = (values == top[..., None]).sum(-1) == 1
    assert untied.mean() > 0.5
    assert np.array_equal(labels[untied], values.argmax(-1)[untied])


def test_probabilities_on_the_input_grid_sum_to_255_and_agree_with_the_labels(untrained_run, ct, tmp_path):
    case_dir = _predict(ct, tmp_path / "out", untrained_run)
    labels, values, seg, prob = _saved(case_dir)
    source = nib.load(str(ct))
    assert values.dtype == np.uint8 and values.shape == (*source.shape, 2)
    np.testing.assert_allclose(prob.affine, source.affine, atol=1e-4)
    np.testing.assert_allclose(prob.affine, seg.affine, atol=1e-4)
    assert int(prob.header["qform_code"]) == 1 and int(prob.header["sform_code"]) == 1
    assert prob.dataobj.slope == pytest.approx(1 / 255) and prob.get_fdata().max() <= 1.0 + 1e-6
    assert prob.header.get_intent()[2] == "softmax v/255"
    assert b"background,liver" in bytes(prob.header["descrip"])
    sums = values.astype(int).sum(-1)
    assert np.all(np.abs(sums - 255) <= 1)  # one rounding per label
    _argmax_consistent(labels, values)
    report = json.loads((case_dir / "report.json").read_text())
    described = report["extra"]["probabilities"]
    assert described["file"] == "probabilities.nii.gz" and described["labels"] == ["background", "liver"]
    assert "255" in described["value"]


def test_ensemble_of_a_model_with_itself_is_the_model(untrained_run, ct, tmp_path):
    alone = _saved(_predict(ct, tmp_path / "a", untrained_run))
    twice = _saved(_predict(ct, tmp_path / "aa", untrained_run, untrained_run))
    assert np.abs(alone[1].astype(int) - twice[1].astype(int)).max() <= 1
    assert np.mean(alone[0] == twice[0]) > 0.99  # only ties at 1/32767 can go either way
    _argmax_consistent(twice[0], twice[1])


def test_ensemble_averages_the_members_and_names_them(untrained_run, second_run, ct, tmp_path, caplog):
    a = _saved(_predict(ct, tmp_path / "a", untrained_run))[1].astype(float)
    b = _saved(_predict(ct, tmp_path / "b", second_run))[1].astype(float)
    with caplog.at_level("INFO", logger="liverseg"):
        case_dir = _predict(ct, tmp_path / "ab", untrained_run, second_run)
    labels, values, _, _ = _saved(case_dir)
    assert np.abs(values - (a + b) / 2).max() <= 1.0  # each member rounded once, the mean once more
    assert np.abs(a - b).max() > 5  # the members do differ
    _argmax_consistent(labels, values)
    report = json.loads((case_dir / "report.json").read_text())
    members = report["extra"]["ensemble_members"]
    assert len(members) == 2 and all("best.pt" in m for m in members)
    shown = " ".join(r.getMessage() for r in caplog.records)
    assert "ensemble of 2 models" in shown and members[0] in shown and members[1] in shown


def test_members_with_different_labels_are_refused_in_one_line(untrained_run, ct, tmp_path, capsys):
    other = _run_folder(tmp_path / "three", seed=2, labels=["background", "liver", "tumour"])
    code = main(["predict", str(ct), "-o", str(tmp_path / "out"), "-q", "--model", str(untrained_run),
                 "--model", str(other)])
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    line = [l for l in err if "different labels" in l]
    assert len(line) == 1 and str(untrained_run) in line[0] and str(other) in line[0]
    assert not (tmp_path / "out" / "ct").exists()


def test_evaluate_reports_auc_and_ece_from_the_probabilities(untrained_run, ct, tmp_path, capsys):
    case_dir = _predict(ct, tmp_path / "out", untrained_run)
    source = nib.load(str(ct))
    reference = np.zeros(source.shape, dtype=np.uint8)
    reference[8:20, 5:15, 4:12] = 1
    ref_path = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(reference, source.affine), str(ref_path))
    results = evaluate(case_dir / "segmentation.nii.gz", ref_path, {1: "liver"})
    (result,) = results
    values = np.asarray(nib.load(str(case_dir / "probabilities.nii.gz")).dataobj.get_unscaled())
    p = values[..., 1] / 255.0
    assert result.auc == pytest.approx(metrics.roc_auc(p, reference == 1), abs=1e-9)
    assert result.ece == pytest.approx(metrics.expected_calibration_error(p, reference == 1), abs=1e-6)
    capsys.readouterr()
    assert main(["evaluate", str(case_dir / "segmentation.nii.gz"), str(ref_path), "--labels", "1=liver",
                 "--no-qc"]) == 0
    out = capsys.readouterr().out
    assert "AUC" in out and "ECE" in out and "ece" in out


def test_expected_calibration_error():
    prob = np.array([0.05, 0.05, 0.95, 0.95, 0.55, 0.55])
    ref = np.array([0, 0, 1, 1, 1, 0], dtype=bool)
    assert metrics.expected_calibration_error(prob, ref) == pytest.approx((2 * 0.05 + 2 * 0.05 + 2 * 0.05) / 6)
    assert metrics.expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0


def test_a_built_in_model_joins_an_ensemble_with_its_input_grid_probabilities(untrained_run, ct):
    """A built-in member brings its own road's uint8 probabilities (``segment_volume_with_probabilities``);
    they are averaged with the run folder's on the input grid."""
    from types import SimpleNamespace

    from liverseg.inference.sources import load_model
    from liverseg.engine.volume import predict_volume_probabilities
    from liverseg.io import read_volume

    volume = read_volume(ct)
    run = load_model(str(untrained_run), "cpu", None, "torch")
    count = len(run.cfg.data.labels)
    fixed = np.zeros((*volume.shape, count), dtype=np.uint8)
    fixed[..., 0], fixed[..., 1] = 55, 200  # "liver" at 200/255 everywhere

    class Builtin:
        def segment_volume(self, vol, threads=None):
            raise AssertionError("an ensemble asks for probabilities")

        def segment_volume_with_probabilities(self, vol, threads=None):
            return fixed[..., 1] > 127, fixed, ["a built-in warning"], {}

    builtin = SimpleNamespace(model=Builtin(), cfg=run.cfg, model_id="builtin stand-in", device="cpu")
    _, alone = predict_volume_probabilities([run], volume)
    _, both = predict_volume_probabilities([run, builtin], volume)
    expected = (alone.astype(np.float64) + fixed) / 2.0
    assert np.abs(both.astype(np.float64) - expected).max() <= 1.0
