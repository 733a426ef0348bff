"""Fuzz: corrupted DICOM files never raise an unhandled exception.

Each of >= 200 variants damages one file of a small (16x16x4) valid series: truncated, random bytes in
the header or the pixel data, or a mandatory tag removed. Reading the folder must either succeed (the
damaged file skipped with a warning naming it) or refuse the series with a LiversegError (exit code 2
with one line from the CLI).
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from liverseg.phantoms.dicom import write_series

from liverseg.cli import main
from liverseg.errors import LiversegError
from liverseg.io import check_input, read_volume

MANDATORY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "PixelData",
             "BitsAllocated", "PixelRepresentation", "SeriesInstanceUID", "SOPClassUID", "TransferSyntaxUID",
             "RescaleSlope", "SamplesPerPixel")
N_PER_KIND = 52  # 4 kinds -> 208 corrupted files


def _corrupt(data: bytes, kind: str, rng: random.Random, pixel_offset: int) -> bytes:
    if kind == "truncate":
        return data[: rng.randrange(0, len(data))]
    buf = bytearray(data)
    if kind == "header":
        lo, hi = 128, max(pixel_offset, 140)
    else:  # pixels
        lo, hi = pixel_offset, len(buf)
    for _ in range(rng.randint(1, 12)):
        start = rng.randrange(lo, hi)
        for i in range(start, min(start + rng.randint(1, 8), len(buf))):
            buf[i] = rng.randrange(256)
    return bytes(buf)


def _variants():
    rng = random.Random(1234)
    for kind in ("truncate", "header", "pixels"):
        for i in range(N_PER_KIND):
            yield kind, rng.randrange(4), random.Random(rng.random())
    for i in range(N_PER_KIND):
        yield f"drop:{MANDATORY[i % len(MANDATORY)]}", rng.randrange(4), random.Random(rng.random())


@pytest.fixture(scope="module")
def good_series(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("good")
    stored = np.random.default_rng(0).integers(0, 1500, (4, 16, 16)).astype(np.uint16)
    return write_series(folder, stored)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom complains about the damaged values it parses
def test_corrupted_files_are_skipped_or_refused_never_crash(good_series, tmp_path, caplog):
    originals = {p.name: p.read_bytes() for p in good_series}
    pixel_offset = len(originals[good_series[0].name]) - 16 * 16 * 2
    outcomes = {"read": 0, "refused": 0}
    variants = list(_variants())
    assert len(variants) >= 200
    for n, (kind, victim, rng) in enumerate(variants):
        folder = tmp_path / f"v{n:03d}"
        folder.mkdir()
        for name, data in originals.items():
            (folder / name).write_bytes(data)
        target = folder / good_series[victim].name
        if kind.startswith("drop:"):
            tag = kind.split(":", 1)[1]
            ds = pydicom.dcmread(target)
            if tag == "TransferSyntaxUID":
                del ds.file_meta.TransferSyntaxUID
                ds.save_as(target)  # pydicom still writes it implicitly: also truncate the meta group length
            else:
                delattr(ds, tag)
                ds.save_as(target)
        else:
            target.write_bytes(_corrupt(originals[target.name], kind, rng, pixel_offset))
        caplog.clear()
        try:
            check_input(folder)
            volume = read_volume(folder)
        except LiversegError as exc:
            assert "\n" not in str(exc).strip(), str(exc)  # one line
            assert str(folder) in str(exc), str(exc)  # naming the input (or a file in it)
            outcomes["refused"] += 1
        else:
            outcomes["read"] += 1
            assert volume.array.ndim == 3 and np.isfinite(volume.affine_ras).all()
            if volume.shape[2] < 4:  # a slice went missing: a warning names the damaged file, or its
                # damaged SeriesInstanceUID made it a series of its own and the choice was announced
                assert target.name in caplog.text or "DICOM series found" in caplog.text, (kind, caplog.text)
        shutil.rmtree(folder)
    assert outcomes["read"] > 0 and outcomes["refused"] > 0, outcomes


def test_cli_refuses_a_damaged_series_with_one_line_and_exit_2(good_series, tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    for p in good_series:
        shutil.copy(p, folder / p.name)
    damaged = folder / good_series[1].name
    damaged.write_bytes(damaged.read_bytes()[:-100])  # pixel data cut short: the header still parses
    assert main(["inspect", str(folder)]) == 0  # inspect reads headers only and lists the series
    capsys.readouterr()
    manifest = tmp_path / "m.json"
    manifest.write_text('{"name": "t", "labels": {"background": 0}, "cases": [{"id": "c1", "image": "broken"}]}')
    assert main(["check", str(manifest), "-q"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert err[-1].startswith("liverseg check: error:") and "1 of 1 cases failed" in err[-1]
    row = [line for line in captured.out.splitlines() if line.startswith("c1")][0]
    assert "FAIL" in row and damaged.name in row and "pixel data" in row
