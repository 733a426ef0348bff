"""Fine-tuning (`liverseg train --init`): the built-in liver model's weights and preprocessing as a
run's start, the two-class mapping of its sigmoid, shape-mismatch re-initialisation, and --init RUN_DIR."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import liverseg.training.loop as train_module
from liverseg.builtin import BUILTIN_MODELS, provenance, torch_module
from liverseg.builtin.liver_grid import scale_hu
from liverseg.cli import main
from liverseg.config import ExperimentConfig, load_config
from liverseg.errors import ConfigError, InputError
from liverseg.training.finetune import finetune_config, load_init, resolve_init
from liverseg.io import write_volume
from liverseg.io.volume import Volume
from liverseg.datasets.manifest import write_manifest
from liverseg.models import build_model
from liverseg.grid.road import normalize_ct

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke_3d.yaml"
NO_AUG = [f"train.augment.{key}=0.0" for key in ("affine_prob", "flip_prob", "intensity_prob", "noise_prob",
                                                 "blur_prob", "contrast_prob", "lowres_prob", "gamma_prob")]


@pytest.fixture(scope="module")
def liver_source():
    return resolve_init("liver")


@pytest.fixture(scope="module")
def one_case(tmp_path_factory) -> Path:
    """One 27^3 CT at 3 mm (the network's grid, so a 27^3 patch is the whole case: every batch is the same)."""
    root = tmp_path_factory.mktemp("finetune_case")
    rng = np.random.default_rng(0)
    i, j, k = np.meshgrid(*[np.arange(27)] * 3, indexing="ij")
    liver = ((i - 15) / 9.0) ** 2 + ((j - 13) / 7.0) ** 2 + ((k - 14) / 8.0) ** 2 < 1.0
    hu = np.where(liver, 90.0, -60.0) + rng.normal(0, 15, liver.shape)
    hu[:, :, :3] = -1000.0  # some air
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    write_volume(Volume(hu.astype(np.float32), affine), root / "ct.nii.gz")
    write_volume(Volume(liver.astype(np.uint8), affine), root / "label.nii.gz")
    return write_manifest(root / "manifest.json", "one", {"background": 0, "liver": 1},
                          [{"id": "c1", "image": "ct.nii.gz", "label": "label.nii.gz"}],
                          {"train": ["c1"], "val": ["c1"]})


def _train_args(manifest: Path, run: Path, init: str, *extra: str) -> list[str]:
    args = ["train", "--config", str(SMOKE), "--run-dir", str(run), "--init", init, "-q", "--device", "cpu",
            "--manifest", str(manifest)]
    for override in ("train.epochs=1", "train.iters_per_epoch=3", "train.batch_size=1",
                     "train.patch_size=[27, 27, 27]", "train.lr=0.001", "train.schedule=constant", *NO_AUG, *extra):
        args += ["--set", override]
    return args


# ----------------------------------------------------------------------------- config and mapping

def test_init_liver_takes_the_builtins_network_and_preprocessing(liver_source):
    cfg = finetune_config(load_config(SMOKE), liver_source)
    model = BUILTIN_MODELS["liver"]
    assert cfg.model.name == "kul_unet" and cfg.model.channels == model.channels
    assert cfg.model.strides == (model.factor,) * 3
    assert cfg.preprocess.spacing_mm == (3.0, 3.0, 3.0) and not cfg.train.auto_plan and not cfg.infer.coarse_to_fine
    # liverseg's window + z-score reproduce the original's clip(HU / 1000, -0.2, 0.2) * 2.5
    hu = np.linspace(-1500.0, 1500.0, 30001, dtype=np.float32)
    p = cfg.preprocess
    np.testing.assert_allclose(normalize_ct(hu, p), scale_hu(hu.copy()), atol=1e-6)
    assert liver_source.sha256 == provenance(model)["weights_sha256"]
    # kul_unet's model.onnx would hold the example tile's sizes: a fine-tune predicts from its checkpoint
    assert not finetune_config(ExperimentConfig(), liver_source).train.export_onnx


def test_train_time_model_softmax_equals_the_builtins_sigmoid(liver_source):
    """The (0, z) logit pair: softmax foreground == the original network's sigmoid probability."""
    cfg = finetune_config(load_config(SMOKE), liver_source)
    model = build_model(cfg.model, 1, len(cfg.data.labels))
    load_init(model, liver_source)
    torch.manual_seed(1)
    x = torch.rand(1, 1, 27, 54, 27) - 0.5
    with torch.no_grad():
        ours = torch.softmax(model(x), dim=1)[:, 1]
        logits = torch_module("liver")(x)
    original = torch.sigmoid(logits[:, 1] - logits[:, 0])  # the original's single logit z
    torch.testing.assert_close(ours, original, atol=1e-5, rtol=0)


def test_mismatched_shapes_are_reinitialised_with_one_message(liver_source, caplog):
    cfg = finetune_config(load_config(SMOKE), liver_source, ["data.labels=[background, liver, tumour]"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 1, 3)
    fresh_head = model.net.head.conv.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="liverseg"):
        record = load_init(model, liver_source)
    messages = [r.getMessage() for r in caplog.records if "re-initialised" in r.getMessage()]
    assert messages == ["--init liver: re-initialised 2 tensors whose shapes differ from liver: "
                        "head.conv.weight (3,20,1,1,1) vs (1,20,1,1,1), head.conv.bias (3) vs (1)"]
    assert record["copied"] == 28 and not record["missing"] and not record["unexpected"]
    torch.testing.assert_close(model.net.head.conv.weight, fresh_head)  # kept its fresh initialisation
    torch.testing.assert_close(model.net.down[0][0].conv.weight,
                               torch.as_tensor(liver_source.weights["net.down.0.0.conv.weight"]))


def test_overrides_that_break_the_weights_fail_clearly(liver_source):
    base = load_config(SMOKE)
    with pytest.raises(ConfigError, match=r"model.name=unet but the source's weights are model.name=kul_unet"):
        finetune_config(base, liver_source, ["model.name=unet"])
    with pytest.raises(ConfigError, match=r"model.channels=\[8, 16, 32, 64\]"):
        finetune_config(base, liver_source, ["model.channels=[8, 16, 32, 64]"])
    with pytest.raises(ConfigError, match="auto_plan"):
        finetune_config(base, liver_source, ["train.auto_plan=true"])
    # overrides that keep the weights meaningful win
    cfg = finetune_config(base, liver_source, ["train.lr=0.0001", "train.patch_size=[54, 54, 54]"])
    assert cfg.train.lr == 1e-4 and cfg.train.patch_size == (54, 54, 54)
    with pytest.raises(InputError, match="not a built-in model"):
        resolve_init("no_such_model")
    assert main(["train", "--run-dir", "x", "--resume", "--init", "liver"]) == 2


# ----------------------------------------------------------------------------- training runs

@pytest.fixture(scope="module")
def liver_run(one_case, tmp_path_factory):
    """A 3-iteration fine-tune from --init liver, recording every training forward pass and loss."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    losses: list[float] = []
    original_forward = train_module._TrainForward.forward
    original_loss = train_module.SegmentationLoss

    def recording_forward(self, images):
        out = original_forward(self, images)
        calls.append((images.detach().clone(), out.detach().clone()))
        return out

    class RecordingLoss(original_loss):
        def forward(self, outputs, targets):
            loss = super().forward(outputs, targets)
            losses.append(float(loss.detach()))
            return loss

    run = tmp_path_factory.mktemp("finetune") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(train_module._TrainForward, "forward", recording_forward)
    mp.setattr(train_module, "SegmentationLoss", RecordingLoss)
    torch.manual_seed(0)
    try:
        code = main(_train_args(one_case, run, "liver"))
    finally:
        mp.undo()
    assert code == 0
    return run, calls, losses


def test_finetune_from_liver_starts_at_the_builtin_and_learns(liver_run):
    run, calls, losses = liver_run
    assert len(calls) == 3 and len(losses) == 3
    images, logits = calls[0]  # before the first optimiser step
    assert tuple(images.shape) == (1, 1, 27, 27, 27)
    with torch.no_grad():
        reference = torch_module("liver")(images.contiguous())
    torch.testing.assert_close(torch.softmax(logits, 1), torch.softmax(reference, 1), atol=1e-5, rtol=0)
    # the same batch every step (the patch is the whole case, no augmentation): the loss falls
    assert losses[-1] < losses[0] - 1e-3, losses
    # the run folder records the built-in's model, preprocessing and provenance
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["name"] == "kul_unet" and cfg["model"]["channels"] == [20, 40, 80, 160]
    assert cfg["preprocess"]["spacing_mm"] == [3.0, 3.0, 3.0]
    assert cfg["preprocess"]["hu_window"] == [-200.0, 200.0] and cfg["preprocess"]["intensity_std_hu"] == 400.0
    record = json.loads((run / "init.json").read_text())
    assert record["source"] == "liver" and record["kind"] == "builtin" and record["copied"] == 30
    assert record["sha256"] == provenance(BUILTIN_MODELS["liver"])["weights_sha256"]
    checkpoint = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["init"]["sha256"] == record["sha256"]
    # predict --model RUN_DIR rebuilds the same preprocessing from the run folder alone
    from liverseg.inference.sources import load_trained_model

    trained = load_trained_model(run)
    assert trained.cfg.preprocess == finetune_config(load_config(SMOKE), resolve_init("liver")).preprocess


def test_init_from_a_run_folder_and_a_checkpoint_file(liver_run, one_case, tmp_path, caplog):
    run, _, _ = liver_run
    weights = torch.load(run / "best.pt", map_location="cpu", weights_only=True)["model"]
    second = tmp_path / "second"
    with caplog.at_level(logging.INFO, logger="liverseg"):
        assert main(_train_args(one_case, second, str(run), "train.iters_per_epoch=1")) == 0
    record = json.loads((second / "init.json").read_text())
    assert record["kind"] == "run" and record["weights"] == str(run / "best.pt") and record["copied"] == 30
    assert any("copied 30 of 30 tensors" in r.getMessage() for r in caplog.records)
    # a checkpoint file, three labels: the head re-initialised, named in one message
    third = tmp_path / "third"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="liverseg"):
        assert main(_train_args(one_case, third, str(run / "best.pt"), "train.iters_per_epoch=1",
                                "data.labels=[background, liver, tumour]")) == 0
    assert any(f"--init {run / 'best.pt'}: re-initialised 2 tensors whose shapes differ" in r.getMessage()
               and "head.conv.weight (3,20,1,1,1) vs (1,20,1,1,1)" in r.getMessage() for r in caplog.records)
    assert json.loads((third / "init.json").read_text())["kind"] == "checkpoint"
    assert set(weights) == set(torch.load(third / "last.pt", map_location="cpu", weights_only=True)["model"])


def test_init_from_a_run_of_another_registry_model(tiny_dataset, tmp_path, caplog):
    """Any registry model: a tiny MONAI U-Net run, fine-tuned to three labels from its folder."""
    base = ["train", "--config", str(SMOKE), "-q", "--device", "cpu", "--set", f"data.manifest={tiny_dataset}",
            "--set", "train.epochs=1", "--set", "train.iters_per_epoch=1", "--set", "model.channels=[4, 8, 16]",
            "--set", "train.patch_size=[16, 16, 16]", "--set", "infer.roi_size=[16, 16, 16]"]
    assert main([*base, "--run-dir", str(tmp_path / "unet")]) == 0
    source = torch.load(tmp_path / "unet" / "last.pt", map_location="cpu", weights_only=True)["model"]
    with caplog.at_level(logging.INFO, logger="liverseg"):
        assert main([*base, "--run-dir", str(tmp_path / "tuned"), "--init", str(tmp_path / "unet"),
                     "--set", "data.labels=[background, liver, tumour]"]) == 0
    record = json.loads((tmp_path / "tuned" / "init.json").read_text())
    changed = {item["tensor"] for item in record["reinitialised"]}
    assert changed and record["copied"] == len(source) - len(changed)
    assert any("re-initialised" in r.getMessage() for r in caplog.records)
    # a different model name on top of a run: refused before anything is written
    assert main([*base, "--run-dir", str(tmp_path / "bad"), "--init", str(tmp_path / "unet"),
                 "--set", "model.name=dynunet"]) == 2
    assert not (tmp_path / "bad").exists()
