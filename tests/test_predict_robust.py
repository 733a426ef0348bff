"""Batch robustness of `liverseg predict`: a bad input is one failed case (not a refused batch), debris
of killed runs is cleaned by the next run, outputs honour the umask, bad checkpoints and budgets are
refused in one line, `sNNNN/ct.nii.gz` layouts get unique names, and batch_summary.csv lists every case.
"""
from __future__ import annotations

import contextlib
import csv
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

from liverseg.cli import main
from liverseg.modalities import ct_case
from liverseg.inference.case_folders import OWNER_FILE, clean_stale_partials, owned_temp_dir, owner_record
from liverseg.inference.cases import cases_from_inputs
from liverseg.io import write_volume

from conftest import make_volume

REPO = Path(__file__).resolve().parents[1]
CASE_FILES = {"segmentation.nii.gz", "segmentation.seg.nrrd", "labels.ctbl", "report.json"}


@pytest.fixture(scope="module")
def run_dir(untrained_run) -> Path:
    return untrained_run


def _write_ct(path: Path, seed: int, shape=(18, 16, 8)) -> Path:
    rng = np.random.default_rng(seed)
    return write_volume(make_volume(shape, (4.0, 4.0, 5.0), array=rng.integers(-200, 300, shape).astype(np.int16)),
                        path)


def _write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def _predict(*args) -> int:
    return main(["predict", *map(str, args), "--device", "cpu", "-q", "--no-preview"])


def _summary(out: Path) -> list[dict]:
    with (out / "batch_summary.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _debris(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- a bad input in a batch

def test_one_corrupt_input_among_two_good_is_one_failed_case(run_dir, tmp_path, capfd):
    inputs = tmp_path / "in"
    _write_ct(inputs / "a.nii.gz", 0)
    bad = _write_corrupt(inputs / "b.nii.gz")
    _write_ct(inputs / "c.nii.gz", 2)
    out = tmp_path / "out"
    code = _predict(inputs, "-o", out, "--model", run_dir)
    err = capfd.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    naming_it = [line for line in err.splitlines() if str(bad) in line]
    assert len(naming_it) == 1 and naming_it[0].startswith("b: failed, skipped"), err  # case and file, one line
    assert "1 of 3 case(s) failed: b" in err
    assert sorted(p.name for p in out.iterdir()) == ["a", "batch_summary.csv", "c"]
    for case in ("a", "c"):
        assert {p.name for p in (out / case).iterdir()} == CASE_FILES
    rows = _summary(out)
    assert [(r["case"], r["status"]) for r in rows] == [("a", "ok"), ("b", "failed"), ("c", "ok")]
    assert list(rows[0]) == ["case", "status", "seconds", "liver_ml", "warnings", "error"]
    report = json.loads((out / "a" / "report.json").read_text())
    assert float(rows[0]["liver_ml"]) == pytest.approx(report["labels"]["liver"]["volume_ml"], abs=0.01)
    assert float(rows[0]["seconds"]) >= 0 and rows[0]["error"] == ""
    assert str(bad) in rows[1]["error"] and rows[1]["liver_ml"] == ""


@pytest.mark.parametrize("pipeline", ["1", "0"])
def test_a_blank_volume_is_refused_in_a_batch_as_alone(run_dir, tmp_path, capfd, monkeypatch, pipeline):
    """A volume of one value (blank export) is refused whether it comes alone or in a batch, pipelined or not."""
    monkeypatch.setenv("LIVERSEG_PIPELINE", pipeline)
    good = _write_ct(tmp_path / "good.nii.gz", 0)
    blank = write_volume(make_volume((18, 16, 8), (4.0, 4.0, 5.0), array=np.full((18, 16, 8), -1000, np.int16)),
                         tmp_path / "blank.nii.gz")
    out = tmp_path / "out"
    assert _predict(good, blank, "-o", out, "--model", run_dir) == 2
    rows = _summary(out)
    assert [(r["case"], r["status"]) for r in rows] == [("good", "ok"), ("blank", "failed")]
    assert "same value" in rows[1]["error"]
    capfd.readouterr()
    assert _predict(blank, "-o", tmp_path / "alone", "--model", run_dir) == 2
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "same value" in err and not (tmp_path / "alone").exists()


def test_a_missing_path_among_others_is_a_failed_case_and_alone_an_error(run_dir, tmp_path, capfd):
    good = _write_ct(tmp_path / "good.nii.gz", 0)
    missing = tmp_path / "missing.nii.gz"
    out = tmp_path / "out"
    assert _predict(good, missing, "-o", out, "--model", run_dir) == 2
    assert [(r["case"], r["status"]) for r in _summary(out)] == [("good", "ok"), ("missing", "failed")]
    capfd.readouterr()
    alone = tmp_path / "alone"
    assert _predict(missing, "-o", alone, "--model", run_dir) == 2
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(missing) in err
    assert not alone.exists()


def test_skip_existing_cases_are_skipped_rows_with_their_volumes(run_dir, tmp_path):
    a, b = _write_ct(tmp_path / "a.nii.gz", 0), _write_ct(tmp_path / "b.nii.gz", 1)
    out = tmp_path / "out"
    assert _predict(a, "-o", out, "--model", run_dir) == 0
    assert _predict(a, b, "-o", out, "--model", run_dir, "--skip-existing") == 0
    rows = _summary(out)
    assert [(r["case"], r["status"]) for r in rows] == [("a", "skipped"), ("b", "ok")]
    assert rows[0]["liver_ml"] != "" and rows[0]["seconds"] == ""


# ----------------------------------------------------------------------------- debris of killed runs

def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _partial(out: Path, name: str, owner: dict | None, age_h: float = 0.0, tag: str = "") -> Path:
    folder = out / f".{name}.x1y2{tag}.partial"
    folder.mkdir(parents=True)
    (folder / "segmentation.nii.gz").write_bytes(b"half")
    if owner is not None:
        (folder / OWNER_FILE).write_text(json.dumps(owner))
    if age_h:
        then = time.time() - age_h * 3600
        for path in [*folder.iterdir(), folder]:
            os.utime(path, (then, then))
    return folder


def test_stale_partials_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    out = tmp_path / "out"
    me = owner_record()
    dead = _partial(out, "dead", {**me, "pid": _dead_pid()})
    reused = _partial(out, "reused", {**me, "start_ticks": "1"})  # our pid, another process's start time
    live = _partial(out, "live", me)
    elsewhere = _partial(out, "elsewhere", {**me, "host": socket.gethostname() + "-other", "pid": _dead_pid()})
    elsewhere_old = _partial(out, "elsewhere_old", {**me, "host": "other-host"}, age_h=72)
    anonymous = _partial(out, "anonymous", None)  # an older liverseg's, or being created this instant
    anonymous_old = _partial(out, "anonymous_old", None, age_h=72)
    # killed between creating the folder and writing its record: the owner in the name (owned_temp_dir's)
    host = owned_temp_dir(tmp_path, "probe", ".partial").name.rsplit("-", 1)[1].split(".")[0]
    unrecorded_dead = _partial(out, "unrecorded_dead", None, tag=f"-p{_dead_pid()}-{me['start_ticks']}-{host}")
    unrecorded_live = _partial(out, "unrecorded_live", None, tag=f"-p{me['pid']}-{me['start_ticks']}-{host}")
    unrecorded_elsewhere = _partial(out, "unrecorded_elsewhere", None, tag=f"-p{_dead_pid()}-1-0123abcd")
    (out / "case_a").mkdir()  # finished outputs are never touched
    summary_tmp, summary_tmp_old = out / ".batch_summary.csv.k3j.csv", out / ".batch_summary.csv.q9z.csv"
    summary_tmp.write_text("case\n")
    summary_tmp_old.write_text("case\n")
    os.utime(summary_tmp_old, (time.time() - 7200, time.time() - 7200))
    removed = clean_stale_partials(out)
    assert sorted(removed) == sorted([dead, reused, elsewhere_old, anonymous_old, summary_tmp_old, unrecorded_dead])
    assert _debris(out) == sorted(p.name for p in (live, elsewhere, anonymous, summary_tmp, unrecorded_live,
                                                   unrecorded_elsewhere))
    assert (out / "case_a").is_dir()


def test_the_next_predict_run_cleans_a_dead_runs_partial(run_dir, tmp_path):
    out = tmp_path / "out"
    _partial(out, "a", {**owner_record(), "pid": _dead_pid()})
    assert _predict(_write_ct(tmp_path / "a.nii.gz", 0), "-o", out, "--model", run_dir) == 0
    assert _debris(out) == []
    assert {p.name for p in (out / "a").iterdir()} == CASE_FILES


def test_a_partial_being_written_carries_its_owner_and_is_kept(run_dir, tmp_path, monkeypatch):
    """While a case is written its partial folder names this (live) process, so a concurrent run's
    cleaning keeps it; the owner record does not reach the finished case folder."""
    seen = {}
    real = ct_case.write_case_outputs

    def spy(bundle, case, volume, labels, case_dir, *args, **kwargs):
        seen["owner"] = json.loads((case_dir / OWNER_FILE).read_text())
        seen["removed"] = clean_stale_partials(case_dir.parent)
        return real(bundle, case, volume, labels, case_dir, *args, **kwargs)

    monkeypatch.setattr(ct_case, "write_case_outputs", spy)
    out = tmp_path / "out"
    assert _predict(_write_ct(tmp_path / "a.nii.gz", 0), "-o", out, "--model", run_dir) == 0
    assert seen["owner"]["pid"] == os.getpid() and seen["removed"] == []
    assert {p.name for p in (out / "a").iterdir()} == CASE_FILES


# ----------------------------------------------------------------------------- permissions

@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_case_folders_and_files_honour_the_umask(run_dir, tmp_path, umask, folder_mode, file_mode):
    image = _write_ct(tmp_path / "a.nii.gz", 0)
    old = os.umask(umask)
    try:
        assert _predict(image, "-o", tmp_path / "out", "--model", run_dir) == 0
    finally:
        os.umask(old)
    case_dir = tmp_path / "out" / "a"
    assert case_dir.stat().st_mode & 0o777 == folder_mode
    for path in [*case_dir.iterdir(), tmp_path / "out" / "batch_summary.csv"]:
        assert path.stat().st_mode & 0o777 == file_mode, path


# ----------------------------------------------------------------------------- refused in one line

def _assert_refused(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_an_empty_best_pt_is_refused(tmp_path, capfd):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"")
    code = _predict(_write_ct(tmp_path / "a.nii.gz", 0), "-o", tmp_path / "out", "--model", run)
    _assert_refused(code, capfd.readouterr().err, str(run / "best.pt"), "cannot be loaded")
    assert not (tmp_path / "out").exists()


def test_a_best_pt_folder_is_refused_not_passed_over_for_last_pt(run_dir, tmp_path, capfd):
    run = tmp_path / "run"
    (run / "best.pt").mkdir(parents=True)
    (run / "last.pt").write_bytes((run_dir / "best.pt").read_bytes())
    code = _predict(_write_ct(tmp_path / "a.nii.gz", 0), "-o", tmp_path / "out", "--model", run)
    _assert_refused(code, capfd.readouterr().err, str(run / "best.pt"), "is a folder")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_memory_budget_that_is_not_a_positive_number_is_refused(run_dir, tmp_path, capfd, value):
    code = _predict(_write_ct(tmp_path / "a.nii.gz", 0), "-o", tmp_path / "out", "--model", run_dir,
                    "--memory-gb", value)
    _assert_refused(code, capfd.readouterr().err, f"--memory-gb {value}", "positive")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- case names

def test_cases_sharing_a_file_name_are_named_after_their_folders(run_dir, tmp_path):
    root = tmp_path / "totalseg"
    files = [_write_ct(root / f"s000{i}" / "ct.nii.gz", i) for i in (1, 2)]
    other = _write_ct(tmp_path / "liver_7.nii.gz", 3)
    out = tmp_path / "out"
    assert _predict(*files, other, "-o", out, "--model", run_dir) == 0
    assert sorted(p.name for p in out.iterdir()) == ["batch_summary.csv", "liver_7", "s0001", "s0002"]
    # the same names from the case folders themselves, in any order, on every run
    assert [c.case_id for c in cases_from_inputs([root / "s0002", root / "s0001"])] == ["s0002", "s0001"]
    assert [c.case_id for c in cases_from_inputs([files[0]])] == ["ct"]  # no clash: the file's name


def test_clashing_folder_names_take_more_of_the_path_and_true_duplicates_are_refused(run_dir, tmp_path, capfd):
    a = _write_ct(tmp_path / "a" / "x" / "ct.nii.gz", 0)
    b = _write_ct(tmp_path / "b" / "x" / "ct.nii.gz", 1)
    assert [c.case_id for c in cases_from_inputs([a, b])] == ["a_x", "b_x"]
    code = _predict(a, a, "-o", tmp_path / "out", "--model", run_dir)
    _assert_refused(code, capfd.readouterr().err, "share the case name(s) ct")


# ----------------------------------------------------------------------------- SIGKILL at random moments

@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_nothing_a_rerun_does_not_clean(run_dir, tmp_path):
    """Each run is killed a random moment (0-0.02 s) after its first new partial folder appears; the
    next run removes the dead runs' partials and predicts the rest (--skip-existing)."""
    inputs = tmp_path / "in"
    names = [f"case{i}" for i in range(6)]
    for i, name in enumerate(names):
        # big enough that writing a case folder takes 25-55 ms on a 2-core machine (a 48x40x24 one took
        # 7-20 ms, so kills 16-51 ms after its partial appeared all landed after its rename on some runs)
        _write_ct(inputs / f"{name}.nii.gz", i, shape=(96, 80, 48))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "liverseg", "predict", str(inputs), "-o", str(out), "--model", str(run_dir),
               "--device", "cpu", "-q", "--skip-existing", "--threads", "1", "--no-preview"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random(0)
    debris_seen = 0
    for _ in range(4):
        # a dead run's partial is still there until this run cleans it: wait for one this run made
        earlier = set(_debris(out)) if out.is_dir() else set()
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline and not (
                out.is_dir() and any(name.endswith(".partial") for name in set(_debris(out)) - earlier)):
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.02))  # inside the case folder's writing, mostly
        process.send_signal(signal.SIGKILL)
        process.wait()
        debris_seen += bool(out.is_dir() and any(name.endswith(".partial") for name in set(_debris(out)) - earlier))
    subprocess.run(command, check=True, env=env, capture_output=True)
    assert debris_seen >= 1  # the kills did hit a case being written
    assert _debris(out) == []
    assert sorted(p.name for p in out.iterdir()) == ["batch_summary.csv", *names]
    for name in names:
        assert {p.name for p in (out / name).iterdir()} == CASE_FILES
        json.loads((out / name / "report.json").read_text())
    print(f"kills that left a partial folder behind: {debris_seen} of 4")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs, nearly full: writes there fail with ENOSPC (skipped where it cannot be mounted)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:100]}")
    try:
        filler = mount / "filler"
        with filler.open("wb") as handle:  # leave a few KB: the first files fit, a later one does not
            with contextlib.suppress(OSError):
                handle.write(b"\0" * (1024 * 1024 - 12 * 1024))
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(run_dir, tmp_path, small_disk, capfd):
    ct = _write_ct(tmp_path / "in" / "big.nii.gz", 7, shape=(64, 64, 40))
    out = small_disk / "out"
    assert _predict(ct, "-o", out, "--model", run_dir) == 2
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert any("No space left on device" in line for line in err), err
    assert not any("Traceback" in line for line in err)
    assert not (out / "big").exists() and not any(p.name.startswith(".") for p in out.iterdir())
