"""Exact resume: a run SIGKILLed mid-epoch and resumed ends with bitwise the same weights as a run
trained straight through, and its metrics.csv has every epoch exactly once."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from liverseg.config import load_config
from liverseg.training.loop import train

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke_3d.yaml"
EPOCHS, ITERS = 3, 3
# checkpoint_minutes=1e-5: a mid-epoch last.pt after every step, so the kill lands inside an epoch.
OVERRIDES = [f"train.epochs={EPOCHS}", f"train.iters_per_epoch={ITERS}", "train.val_every=2",
             "train.checkpoint_minutes=0.00001", "train.augment.affine_prob=0.3", "train.augment.flip_prob=0.3",
             "model.channels=[4, 8, 16]", "model.dropout=0.1"]


@pytest.fixture
def deterministic_cpu():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads)


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _killed_mid_run(tiny_dataset, run_dir: Path) -> int:
    """Start the CLI in a subprocess, SIGKILL it once last.pt holds a step inside epoch 2; its step."""
    command = [sys.executable, "-m", "liverseg", "train", "--config", str(SMOKE), "--run-dir", str(run_dir),
               "--device", "cpu", "--threads", "1", "--deterministic", "-q", "--set", f"data.manifest={tiny_dataset}"]
    for override in OVERRIDES:
        command += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    step = 0
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (run_dir / "last.pt").exists():
                step = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["step"]
                if step > ITERS:
                    process.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.02)
    finally:
        if process.poll() is None and step <= ITERS:
            process.kill()
        _, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"the run was not killed mid-way: {err.decode()[-2000:]}"
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["step"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bitwise_equal(tiny_dataset, tmp_path, deterministic_cpu):
    killed = tmp_path / "killed"
    killed_step = _killed_mid_run(tiny_dataset, killed)
    assert ITERS < killed_step < EPOCHS * ITERS
    assert len(_rows(killed)) == killed_step // ITERS  # only finished epochs are in metrics.csv

    cfg = load_config(SMOKE, [f"data.manifest={tiny_dataset}", *OVERRIDES])
    straight = tmp_path / "straight"
    train(cfg, straight, device="cpu", progress=False, deterministic=True)
    train(load_config(killed / "config.yaml"), killed, device="cpu", progress=False, resume=True,
          deterministic=True)

    expected = torch.load(straight / "last.pt", map_location="cpu", weights_only=True)
    resumed = torch.load(killed / "last.pt", map_location="cpu", weights_only=True)
    assert resumed["step"] == expected["step"] == EPOCHS * ITERS
    assert expected["model"].keys() == resumed["model"].keys()
    for name, tensor in expected["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), f"{name} differs after resume"
    for a, b in zip(expected["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])

    rows, reference = _rows(killed), _rows(straight)
    assert [r["epoch"] for r in rows] == [str(e) for e in range(1, EPOCHS + 1)]  # none missing, none twice
    timing = ("epoch_seconds", "elapsed_minutes")
    assert ([{k: v for k, v in r.items() if k not in timing} for r in rows]
            == [{k: v for k, v in r.items() if k not in timing} for r in reference])
    assert rows[1]["val_mean_dice"] != "" and rows[0]["val_mean_dice"] == ""
    assert (killed / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in killed.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_resume_continues_a_finished_run_exactly_like_a_longer_one(tiny_dataset, tmp_path, deterministic_cpu):
    """Epoch-end resume in-process: 1 epoch, then --resume with train.epochs=2 == 2 epochs straight
    (same schedule length, so equal weights), with the rows of both epochs."""
    overrides = [f"data.manifest={tiny_dataset}", "train.iters_per_epoch=2", "train.val_every=5",
                 "model.channels=[4, 8, 16]", "train.schedule=constant", "train.augment.affine_prob=0.3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(load_config(SMOKE, overrides + ["train.epochs=2"]), straight, device="cpu", progress=False)
    train(load_config(SMOKE, overrides + ["train.epochs=1"]), split, device="cpu", progress=False)
    train(load_config(split / "config.yaml", ["train.epochs=2"]), split, device="cpu", progress=False, resume=True)
    a = torch.load(straight / "last.pt", map_location="cpu", weights_only=True)["model"]
    b = torch.load(split / "last.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in _rows(split)] == ["1", "2"]
