"""Cohorts: --part K/N shares, claims between workers on one -o folder (fast unit tests, and several
`liverseg predict` processes killed at random, slow), pipelined prediction, torchrun prediction."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from liverseg.cli import main
from liverseg.inference.case_folders import owned_temp_dir
from liverseg.inference.claims import CLAIMS, Claims, remove_leftovers
from liverseg.inference.cohort import parse_part, select_part
from liverseg.errors import InputError
from liverseg.io import write_volume
from liverseg.datasets.manifest import Case

from conftest import make_volume

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(untrained_run) -> Path:
    return untrained_run


def _inputs(folder: Path, count: int) -> Path:
    for index in range(count):
        shape = (16 + index % 3, 18, 8)
        rng = np.random.default_rng(index)
        write_volume(make_volume(shape, (4.0, 4.0, 5.0), array=rng.integers(-200, 300, shape).astype(np.int16)),
                     folder / f"case{index}.nii.gz")
    return folder


def _complete(case_dir: Path) -> bool:
    names = {p.name for p in case_dir.iterdir()}
    return {"segmentation.nii.gz", "segmentation.seg.nrrd", "labels.ctbl", "report.json"} <= names


# ----------------------------------------------------------------------------- --part

def test_parts_are_deterministic_disjoint_and_cover_every_case():
    cases = [Case(f"c{i:02d}", Path(f"c{i}.nii.gz"), None) for i in range(11)]
    shuffled = random.Random(3).sample(cases, len(cases))
    shares = [select_part(shuffled, k, 4) for k in range(1, 5)]
    assert shares[0] == select_part(cases, 1, 4)  # input order does not matter
    assert [c.case_id for c in shares[1]] == ["c01", "c05", "c09"]
    assert sorted(c.case_id for share in shares for c in share) == sorted(c.case_id for c in cases)
    assert parse_part(" 2/8 ") == (2, 8)
    for bad in ("0/4", "5/4", "3", "a/b", "1/0", "-1/2"):
        with pytest.raises(InputError, match="--part"):
            parse_part(bad)


def test_part_option_predicts_its_share_and_validates(run_dir, tmp_path, capfd):
    inputs = _inputs(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert main(["predict", str(inputs), "-o", str(out), "--model", str(run_dir), "--device", "cpu", "-q",
                 "--part", "2/2"]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.is_dir()) == ["case1"]
    capfd.readouterr()
    assert main(["predict", str(inputs), "-o", str(out), "--model", str(run_dir), "--part", "3/2"]) == 2
    err = capfd.readouterr().err
    assert "--part '3/2'" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- claims

def test_claims_are_exclusive_and_dead_workers_claims_are_taken_over(tmp_path):
    first, second = Claims(tmp_path, timeout_s=60), Claims(tmp_path, timeout_s=60)
    try:
        claim = first.acquire("a")
        assert claim is not None and second.acquire("a") is None  # a live worker holds it
        record = json.loads(claim.path.read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        first.release(claim)
        again = second.acquire("a")
        assert again is not None and second.holds(again) and not first.holds(claim)
        second.release(again)

        # a worker on this host that is gone: its pid no longer runs
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        path = first.path("b")
        path.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "token": "x"}))
        taken = first.acquire("b")
        assert taken is not None and first.holds(taken)
        first.release(taken)

        # a worker on another host: alive while its heartbeat is fresh, gone when it is older than the timeout
        path = first.path("c")
        path.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "token": "y"}))
        assert first.acquire("c") is None
        old = time.time() - 120
        os.utime(path, (old, old))
        assert first.acquire("c") is not None

        # the heartbeat keeps a held claim fresh
        beating = Claims(tmp_path, timeout_s=60, heartbeat_s=0.05)
        held = beating.acquire("d")
        os.utime(held.path, (old, old))
        time.sleep(0.3)
        assert time.time() - held.path.stat().st_mtime < 5
        beating.close()
        assert not held.path.exists()
    finally:
        first.close()
        second.close()
    assert not (tmp_path / CLAIMS).exists()


def test_leftovers_of_one_case_only_are_removed(tmp_path):
    for name in (".a.abc12345.partial", ".a.b.xyz98765.partial", ".a.qqq11111.old", "a", ".b.abc12345.partial"):
        (tmp_path / name).mkdir()
    made = [owned_temp_dir(tmp_path, "a", ".partial"), owned_temp_dir(tmp_path, "a.b", ".partial"),
            owned_temp_dir(tmp_path, "a", ".old")]  # the names predict gives them, owner tag included
    remove_leftovers(tmp_path, "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".a.b.xyz98765.partial", ".b.abc12345.partial", "a",
                                                                 made[1].name])


def test_cases_done_or_claimed_by_another_worker_are_skipped_not_failed(run_dir, tmp_path, capfd):
    inputs = _inputs(tmp_path / "in", 4)
    out = tmp_path / "out"
    other = Claims(out, timeout_s=60)  # another live worker holds case1
    held = other.acquire("case1")
    try:
        assert main(["predict", str(inputs), "-o", str(out), "--model", str(run_dir), "--device", "cpu", "-q"]) == 0
        err = capfd.readouterr().err
        assert "case1: being done by another worker, skipped" in err and "failed" not in err
        assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == [
            "case0", "case2", "case3"]
    finally:
        other.release(held)
        other.close()
    # a second worker with the same inputs: the done cases are skipped, the rest predicted
    assert main(["predict", str(inputs), "-o", str(out), "--model", str(run_dir), "--device", "cpu", "-q",
                 "--skip-existing"]) == 0
    assert all(_complete(out / f"case{i}") for i in range(4))
    assert not (out / CLAIMS).exists() and not [p for p in out.iterdir() if p.name.endswith((".partial", ".old"))]


def test_a_worker_joining_late_needs_no_skip_existing_while_others_work(run_dir, tmp_path, capfd):
    """Workers of one job array start at different times: a late one finds finished cases, and while
    another worker's claim is live they are that cohort's work, not an earlier run's outputs to protect."""
    inputs = _inputs(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert main(["predict", str(inputs / "case0.nii.gz"), "-o", str(out), "--model", str(run_dir), "--device",
                 "cpu", "-q"]) == 0
    other = Claims(out, timeout_s=60)
    held = other.acquire("case1")
    try:
        assert main(["predict", str(inputs), "-o", str(out), "--model", str(run_dir), "--device", "cpu", "-q"]) == 0
        assert _complete(out / "case2") and not (out / "case1").exists()
    finally:
        other.release(held)
        other.close()
    capfd.readouterr()
    # nobody at work any more: finished outputs are protected again
    assert main(["predict", str(inputs), "-o", str(out), "--model", str(run_dir), "--device", "cpu", "-q"]) == 2
    assert "already exist" in capfd.readouterr().err


@pytest.mark.parametrize("pipeline", ["1", "0"])
def test_pipelined_and_sequential_runs_give_the_same_outputs(run_dir, tmp_path, monkeypatch, pipeline):
    import SimpleITK as sitk

    inputs = _inputs(tmp_path / "in", 3)
    monkeypatch.setenv("LIVERSEG_PIPELINE", pipeline)
    out = tmp_path / "out"
    assert main(["predict", str(inputs), "-o", str(out), "--model", str(run_dir), "--device", "cpu", "-q"]) == 0
    reference = tmp_path / "reference"
    monkeypatch.setenv("LIVERSEG_PIPELINE", "0")
    assert main(["predict", str(inputs), "-o", str(reference), "--model", str(run_dir), "--device", "cpu", "-q"]) == 0
    for i in range(3):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"case{i}" / "segmentation.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(reference / f"case{i}" / "segmentation.nii.gz")))
        assert np.array_equal(a, b) and _complete(out / f"case{i}")


# ----------------------------------------------------------------------------- many workers, killed at random

def _worker(inputs: Path, out: Path, run_dir: Path, extra=()) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "liverseg", "predict", str(inputs), "-o", str(out), "--model",
                             str(run_dir), "--device", "cpu", "--threads", "1", "-q", "--skip-existing", *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_workers_killed_at_random_leave_every_case_done_once(run_dir, tmp_path, seed):
    rng = random.Random(seed)
    inputs = _inputs(tmp_path / "in", 8)
    out = tmp_path / "out"
    out.mkdir()
    workers = [_worker(inputs, out, run_dir) for _ in range(rng.choice([3, 4]))]
    doomed = rng.sample(range(len(workers)), rng.choice([1, 2]))
    deadline = time.monotonic() + 180
    for index in doomed:
        time.sleep(rng.uniform(1.0, 6.0))
        workers[index].send_signal(signal.SIGKILL)
    outputs = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=max(1.0, deadline - time.monotonic()))
        outputs.append((worker.returncode, stdout, stderr))
    for index, (code, _, stderr) in enumerate(outputs):
        if index not in doomed or code != -signal.SIGKILL:
            assert code == 0, stderr[-2000:]
        assert "failed" not in stderr and "two workers" not in stderr, stderr[-2000:]
    done_before = {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")}
    # once more: the cases of the killed workers (and their claims and partial folders) are taken over
    final = _worker(inputs, out, run_dir)
    stdout, stderr = final.communicate(timeout=180)
    assert final.returncode == 0, stderr[-2000:]
    predicted = {Path(line).parent.name for line in stdout.split()}
    assert predicted.isdisjoint(done_before)  # nothing done twice
    assert predicted | done_before == {f"case{i}" for i in range(8)}
    for i in range(8):
        assert _complete(out / f"case{i}")
    assert not (out / CLAIMS).exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- torchrun

@pytest.mark.slow
def test_torchrun_ranks_predict_their_shares_and_rank0_prints_the_summary(run_dir, tmp_path):
    inputs = _inputs(tmp_path / "in", 5)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "liverseg", "predict", str(inputs), "-o", str(out), "--model", str(run_dir), "--device", "cpu",
               "--threads", "1", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(_complete(out / f"case{i}") for i in range(5))
    assert result.stderr.count("liverseg predict: 5 case(s) on 2 processes: 5 done, 0 skipped") == 1
    assert sorted(Path(line).parent.name for line in result.stdout.split()) == [f"case{i}" for i in range(5)], result.stdout
    reports = {i: json.loads((out / f"case{i}" / "report.json").read_text()) for i in range(5)}
    assert len(reports) == 5 and not (out / CLAIMS).exists()
