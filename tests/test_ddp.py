"""torchrun with 2 CPU processes (gloo): one run folder, one checkpoint set, validation over both ranks."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from liverseg.config import load_config
from liverseg.modalities import modality_for
from liverseg.modalities.data import volume_validation_cases
from liverseg.modalities.items import case_dicts, load_training_manifest
from liverseg.models import build_model
from liverseg.training.loop import validate

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke_3d.yaml"


@pytest.mark.slow
def test_torchrun_two_cpu_processes_write_one_checkpoint_set(tiny_dataset, tmp_path):
    # Two validation cases, so each rank validates one and the Dice must be gathered.
    manifest = json.loads(tiny_dataset.read_text())
    manifest["splits"] = {"train": ["case_ras", "case_lps", "case_obl"], "val": ["case_perm", "case_obl"]}
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    overrides = [f"data.manifest={manifest_path}", f"data.root={tiny_dataset.parent}", "train.epochs=1",
                 "train.iters_per_epoch=2", "model.name=ma_unet"]  # ma_unet: unused heads need DDP's find_unused_parameters
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "liverseg", "train", "--config", str(SMOKE), "--run-dir", str(run_dir), "--device", "cpu",
               "--threads", "1", "-q"]
    for override in overrides:
        command += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]

    names = sorted(p.name for p in run_dir.iterdir())
    assert names == ["best.pt", "config.yaml", "last.pt", "metrics.csv", "train.log", "training_curves.png"]
    assert result.stdout.count("best checkpoint:") == 1  # only rank 0 prints
    log_text = (run_dir / "train.log").read_text()
    assert log_text.count("training summary") == 1 and "2 processes" in log_text
    with (run_dir / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1"] and rows[0]["step"] == "2"

    checkpoint = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["world"] == 2
    assert not any(key.startswith(("module.", "model.")) for key in checkpoint["model"])  # plain model weights

    # The logged Dice is the mean over both validation cases, i.e. both ranks' shares were gathered.
    cfg = load_config(run_dir / "config.yaml")
    model = build_model(cfg.model, in_channels=modality_for(cfg).in_channels(cfg), out_channels=len(cfg.data.labels))
    model.load_state_dict(checkpoint["model"])
    loaded = load_training_manifest(cfg)
    cases = volume_validation_cases(cfg, case_dicts(loaded.split("val"), "val", loaded))
    assert len(cases) == 2
    expected = validate(model, cases, cfg, torch.device("cpu"))
    assert float(rows[0]["val_dice_liver"]) == pytest.approx(expected["liver"], abs=1e-6)
