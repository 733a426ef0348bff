"""Fuzz: damaged DICOM series are read exactly or refused in one line, never crash and never hang.

Random damage: each of >= 200 variants damages one file of a small (16x16x4) valid series: truncated,
random bytes in the header or the pixel data, or a mandatory tag removed. Reading the folder must
either succeed or refuse the series with a LiversegError (exit code 2 with one line from the CLI).

Damage by category (an 8-slice 32x32 series): every header/pixel-data mismatch (Rows, Columns,
BitsAllocated, BitsStored, PixelRepresentation, SamplesPerPixel, NumberOfFrames, short/long/compressed
pixel data, wrong transfer syntax, undecodable compressed data), missing tags, geometry faults,
special files (FIFO, socket, link to /dev/zero, link loops), unreadable files and junk files (a
thumbnail, DICOMDIR, 1,000 junk files: one summary line). Each must give exactly the series' grid
and pixels or a one-line refusal naming the folder, the file and the problem, within a timeout.
"""
from __future__ import annotations

import copy
import logging
import os
import random
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from liverseg.phantoms.dicom import write_series

from liverseg.cli import main
from liverseg.errors import LiversegError
from liverseg.io import check_input, read_volume
from liverseg.io.dicom import clear_series_cache

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
            if volume.shape[2] < 4:  # a slice went missing: its damaged SeriesInstanceUID made it a series
                # of its own and the choice was announced (any other damaged slice refuses the series)
                assert "DICOM series found" in caplog.text, (kind, caplog.text)
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


# ----------------------------------------------------------------------------- damaged by category
#
# A valid 8-slice 32x32 series, copied and damaged one way per case. Every case must end in one of
# two ways within TIMEOUT_S: the series read with exactly its grid (and its pixels), or a one-line
# LiversegError naming the folder and the problem. No other exception, no hang.

N, ROWS, COLS = 8, 32, 32
TIMEOUT_S = 30
VICTIM = 3  # an interior slice; END = the last slice (a missing end slice leaves no gap to see)
END = N - 1
REFUSE, READ = "refuse", "read"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("template")
    stored = np.random.default_rng(7).integers(0, 1500, (N, ROWS, COLS)).astype(np.uint16)
    paths = write_series(folder / "series", stored)
    good = read_volume(folder / "series")
    return {"folder": folder / "series", "names": [p.name for p in paths], "stored": stored, "good": good}


def _in_thread(function, timeout: float = TIMEOUT_S):
    """``function()``'s result or exception, or a test failure when it does not return in time."""
    box: dict = {}

    def run():
        try:
            box["value"] = function()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"no answer within {timeout} s (hung on a special file?)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _outcome(folder: Path, **kwargs) -> tuple[str, object, list[str]]:
    """("read", Volume, warnings) or ("refuse", message, warnings); anything else fails the test."""
    handler = _Lines()
    logger = logging.getLogger("liverseg")
    logger.addHandler(handler)
    try:
        def attempt():
            check_input(folder, **kwargs)
            return read_volume(folder, **kwargs)
        try:
            volume = _in_thread(attempt)
        except LiversegError as exc:
            return REFUSE, str(exc), handler.lines
    finally:
        logger.removeHandler(handler)
    return READ, volume, handler.lines


def _copy(template, tmp_path) -> Path:
    folder = tmp_path / "case"
    shutil.copytree(template["folder"], folder)
    return folder


def _edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    try:
        change(ds)
    except _Written as label:
        _save_labelled(ds, path, str(label))
    else:
        ds.save_as(path)


def _set(**values):
    def change(ds):
        for key, value in values.items():
            if value is None:
                delattr(ds, key)
            else:
                setattr(ds, key, value)
    return change


def _set_pixels(transform):
    def change(ds):
        ds.PixelData = transform(bytes(ds.PixelData))
    return change


def _j2k_stream(ds) -> bytes:
    """The JPEG 2000 code stream of this slice (pylibjpeg-openjpeg's encoder)."""
    from pydicom.encaps import generate_frames
    from pydicom.uid import JPEG2000Lossless

    packed = copy.deepcopy(ds)
    packed.compress(JPEG2000Lossless)
    return next(generate_frames(packed.PixelData, number_of_frames=1))


def _j2k_under_native(ds):
    stream = _j2k_stream(ds)
    ds.PixelData = stream + b"\0" * (len(stream) % 2)


def _j2k_same_size_under_native(ds):  # a stream padded to exactly the expected size: only its signature tells
    stream = _j2k_stream(ds)
    ds.PixelData = stream + b"\0" * (ROWS * COLS * 2 - len(stream))


class _Written(Exception):
    """The change wrote the file itself (pydicom's writer would refuse or re-encode it)."""


def _save_labelled(ds, path: Path, uid: str) -> None:
    """Write ``ds`` as explicit VR little endian but with ``uid`` in the file meta (pydicom would
    re-encode the data set or refuse the mismatch)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    meta = copy.deepcopy(ds.file_meta)
    meta.TransferSyntaxUID = uid
    head, body = DicomBytesIO(), DicomBytesIO()
    for fp in (head, body):
        fp.is_little_endian, fp.is_implicit_VR = True, False
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    write_dataset(body, ds)
    path.write_bytes(head.getvalue() + body.getvalue())


def _encapsulated_under_native(ds):
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([_j2k_stream(ds)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    raise _Written(ds.file_meta.TransferSyntaxUID)


def _transfer_syntax(uid):
    def change(ds):
        raise _Written(uid)
    return change


# (category, id, victim slice, change, expected outcome, words the refusal must hold)
HEADER_PIXEL = [
    ("header/pixel", "rows+1", VICTIM, _set(Rows=ROWS + 1), REFUSE, "pixel data holds"),
    ("header/pixel", "rows-1", END, _set(Rows=ROWS - 1), REFUSE, "pixel data holds"),
    ("header/pixel", "columns+1", VICTIM, _set(Columns=COLS + 1), REFUSE, "pixel data holds"),
    ("header/pixel", "columns-half", END, _set(Columns=COLS // 2), REFUSE, "pixel data holds"),
    ("header/pixel", "bits-allocated-8", VICTIM, _set(BitsAllocated=8, BitsStored=8, HighBit=7), REFUSE,
     "pixel data holds"),
    ("header/pixel", "bits-allocated-32", END, _set(BitsAllocated=32, BitsStored=32, HighBit=31), REFUSE,
     "pixel data holds"),
    ("header/pixel", "bits-allocated-12", VICTIM, _set(BitsAllocated=12), REFUSE, "BitsAllocated 12"),
    ("header/pixel", "bits-stored-above-allocated", VICTIM, _set(BitsStored=20), REFUSE, "BitsStored 20"),
    ("header/pixel", "bits-stored-0", VICTIM, _set(BitsStored=0), REFUSE, "BitsStored 0"),
    ("header/pixel", "bits-stored-12", VICTIM, _set(BitsStored=12, HighBit=11), READ, ""),  # values < 4096
    ("header/pixel", "pixel-representation-2", VICTIM, _set(PixelRepresentation=2), REFUSE, "PixelRepresentation"),
    ("header/pixel", "samples-per-pixel-3", VICTIM, _set(SamplesPerPixel=3), REFUSE, "SamplesPerPixel 3"),
    ("header/pixel", "samples-per-pixel-3-data-x3", END,
     lambda ds: (_set(SamplesPerPixel=3, PlanarConfiguration=0, PhotometricInterpretation="RGB")(ds),
                 _set_pixels(lambda raw: raw * 3)(ds)), REFUSE, "SamplesPerPixel 3"),
    ("header/pixel", "number-of-frames-2", END, _set(NumberOfFrames=2), REFUSE, "NumberOfFrames 2"),
    ("header/pixel", "number-of-frames-0", VICTIM, _set(NumberOfFrames=0), REFUSE, "NumberOfFrames 0"),
    ("header/pixel", "pixel-data-half", VICTIM, _set_pixels(lambda raw: raw[: len(raw) // 2]), REFUSE,
     "pixel data holds"),
    ("header/pixel", "pixel-data-one-byte-short", END, _set_pixels(lambda raw: raw[:-2]), REFUSE,
     "pixel data holds"),
    ("header/pixel", "pixel-data-empty", VICTIM, _set_pixels(lambda raw: b""), REFUSE, "pixel data holds"),
    ("header/pixel", "extra-2-bytes", VICTIM, _set_pixels(lambda raw: raw + b"\0\0"), REFUSE, "pixel data holds"),
    ("header/pixel", "extra-slice", END, _set_pixels(lambda raw: raw * 2), REFUSE, "pixel data holds"),
    ("header/pixel", "j2k-under-native", VICTIM, _j2k_under_native, REFUSE, "pixel data"),
    ("header/pixel", "j2k-same-size-under-native", END, _j2k_same_size_under_native, REFUSE, "JPEG 2000"),
    ("header/pixel", "encapsulated-under-native", VICTIM, _encapsulated_under_native, REFUSE, "encapsulated"),
    ("header/pixel", "native-labelled-j2k", VICTIM, _transfer_syntax("1.2.840.10008.1.2.4.90"), REFUSE,
     "not encapsulated"),
    ("header/pixel", "native-labelled-rle", END, _transfer_syntax("1.2.840.10008.1.2.5"), REFUSE,
     "not encapsulated"),
    ("header/pixel", "unknown-transfer-syntax", VICTIM, _transfer_syntax("1.2.3.4.5"), REFUSE,
     "transfer syntax"),
    ("header/pixel", "explicit-labelled-implicit", VICTIM, _transfer_syntax("1.2.840.10008.1.2"), REFUSE, ""),
]

MISSING = [("missing tag", f"no-{tag}", victim, _set(**{tag: None}), REFUSE, words)
           for tag, victim, words in (
               ("PixelData", VICTIM, "PixelData"), ("PixelData", END, "PixelData"), ("Rows", END, "Rows"),
               ("Columns", VICTIM, "Rows/Columns"), ("BitsAllocated", VICTIM, "BitsAllocated"),
               ("PixelRepresentation", END, "PixelRepresentation"),
               ("ImagePositionPatient", END, "ImagePositionPatient"),
               ("ImageOrientationPatient", VICTIM, "ImageOrientationPatient"),
               ("PixelSpacing", END, "PixelSpacing"), ("SeriesInstanceUID", END, "SeriesInstanceUID"),
               ("RescaleIntercept", END, "RescaleIntercept"), ("RescaleSlope", VICTIM, "RescaleSlope"))]
MISSING += [("missing tag", "no-SliceThickness", VICTIM, _set(SliceThickness=None), READ, ""),
            ("missing tag", "no-SOPClassUID", VICTIM, _set(SOPClassUID=None), READ, ""),
            ("missing tag", "no-InstanceNumber", END, _set(InstanceNumber=None), READ, "")]

GEOMETRY = [
    ("geometry", "pixel-spacing-zero", END, _set(PixelSpacing=[0.0, 0.7]), REFUSE, "PixelSpacing"),
    ("geometry", "pixel-spacing-negative", VICTIM, _set(PixelSpacing=[0.8, -0.7]), REFUSE, "PixelSpacing"),
    ("geometry", "pixel-spacing-nan", VICTIM, _set(PixelSpacing=["NaN", "0.7"]), REFUSE, "PixelSpacing"),
    ("geometry", "pixel-spacing-one-value", END, _set(PixelSpacing=[0.8]), REFUSE, "PixelSpacing"),
    ("geometry", "pixel-spacing-other", END, _set(PixelSpacing=[0.9, 0.7]), REFUSE, "pixel spacing differs"),
    ("geometry", "position-nan", VICTIM, _set(ImagePositionPatient=[-20.0, 10.0, "NaN"]), REFUSE,
     "ImagePositionPatient"),
    ("geometry", "position-two-values", END, _set(ImagePositionPatient=[-20.0, 10.0]), REFUSE, "ImagePositionPatient"),
    ("geometry", "position-gap", VICTIM, _set(ImagePositionPatient=[-20.0, 10.0, 30.0 + 2 * N + 10]), REFUSE,
     "missing slices"),
    ("geometry", "orientation-not-unit", VICTIM, _set(ImageOrientationPatient=[2, 0, 0, 0, 1, 0]), REFUSE,
     "ImageOrientationPatient"),
    ("geometry", "orientation-not-orthogonal", END, _set(ImageOrientationPatient=[1, 0, 0, 0.5, 0.866, 0]), REFUSE,
     "ImageOrientationPatient"),
    ("geometry", "orientation-zeros", VICTIM, _set(ImageOrientationPatient=[0, 0, 0, 0, 0, 0]), REFUSE,
     "ImageOrientationPatient"),
    ("geometry", "orientation-other", END, _set(ImageOrientationPatient=[1, 0, 0, 0, 0.9950042, 0.0998334]), REFUSE,
     "orientation"),
    ("geometry", "slice-thickness-zero", VICTIM, _set(SliceThickness=0.0), READ, ""),
    ("geometry", "slice-thickness-nan", END, _set(SliceThickness="NaN"), READ, ""),
    ("geometry", "rescale-slope-zero", END, _set(RescaleSlope=0), REFUSE, "RescaleSlope"),
    ("geometry", "rescale-slope-nan", VICTIM, _set(RescaleSlope="NaN"), REFUSE, ""),
    ("geometry", "rescale-intercept-inf", VICTIM, _set(RescaleIntercept="Infinity"), REFUSE, ""),
]

CASES = HEADER_PIXEL + MISSING + GEOMETRY


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom complains about the damaged values it parses
@pytest.mark.parametrize("category, name, victim, change, expected, words", CASES,
                         ids=[f"{c[0].replace(' ', '-')}:{c[1]}" for c in CASES])
def test_damaged_series_is_read_exactly_or_refused_in_one_line(template, tmp_path, category, name, victim, change,
                                                              expected, words):
    folder = _copy(template, tmp_path)
    target = folder / template["names"][victim]
    _edit(target, change)
    outcome, value, warnings = _outcome(folder)
    assert outcome == expected, (name, value)
    _assert_outcome(template, folder, outcome, value, words, target)


def _assert_outcome(template, folder, outcome, value, words, target=None):
    if outcome == REFUSE:
        message = str(value)
        assert "\n" not in message.strip() and "Traceback" not in message, message
        assert str(folder) in message, message
        if target is not None and words != "missing slices":  # a gap is named by the slices around it
            assert target.name in message, message
        assert words in message, (words, message)
    else:
        good = template["good"]
        assert value.shape == good.shape == (COLS, ROWS, N)
        np.testing.assert_allclose(value.affine_ras, good.affine_ras, atol=1e-6)
        np.testing.assert_array_equal(value.array, good.array)


@pytest.mark.parametrize("same_pixels", [True, False], ids=["geometry:duplicate-same-pixels",
                                                               "geometry:duplicate-different-pixels"])
def test_duplicate_position(template, tmp_path, same_pixels):
    folder = _copy(template, tmp_path)
    ds = pydicom.dcmread(folder / template["names"][VICTIM])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    if not same_pixels:
        ds.PixelData = bytes(reversed(ds.PixelData))
    ds.save_as(folder / "copy.dcm")
    outcome, value, _ = _outcome(folder)
    assert outcome == (READ if same_pixels else REFUSE), value
    _assert_outcome(template, folder, outcome, value, "" if same_pixels else "hold different pixels",
                    None if same_pixels else folder / "copy.dcm")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_odd_sized_8bit_slices_with_their_pad_byte_are_read(tmp_path):
    stored = np.random.default_rng(1).integers(0, 200, (4, 31, 31)).astype(np.uint8)
    paths = write_series(tmp_path, stored.astype(np.uint16))
    for path, pixels in zip(paths, stored):
        ds = pydicom.dcmread(path)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = pixels.tobytes() + b"\0"  # 961 bytes and the standard pad byte
        ds["PixelData"].VR = "OB"
        ds.save_as(path)
    assert len(pydicom.dcmread(paths[0]).PixelData) == 962
    volume = read_volume(tmp_path)
    np.testing.assert_array_equal(volume.array, stored.astype(np.int16).transpose(2, 1, 0) - 1024)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("damage", ["zeroed-stream", "truncated-stream", "garbage-fragment"])
def test_undecodable_compressed_slice_is_refused(template, tmp_path, damage):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    folder = _copy(template, tmp_path)
    for name in template["names"]:
        _edit(folder / name, lambda ds: ds.compress(JPEG2000Lossless))
    np.testing.assert_array_equal(read_volume(folder).array, template["good"].array)
    clear_series_cache()
    target = folder / template["names"][VICTIM]
    ds = pydicom.dcmread(target)
    from pydicom.encaps import generate_frames

    stream = next(generate_frames(ds.PixelData, number_of_frames=1))
    if damage == "zeroed-stream":
        stream = stream[:2] + b"\0" * (len(stream) - 2)
    elif damage == "truncated-stream":
        stream = stream[: len(stream) // 3]
    else:
        stream = bytes(np.random.default_rng(3).integers(0, 256, len(stream), dtype=np.uint8))
    ds.PixelData = encapsulate([stream + b"\0" * (len(stream) % 2)])
    ds.save_as(target)
    outcome, value, _ = _outcome(folder)
    if outcome == READ:  # a decoder that "succeeds" on a damaged stream must at least give the grid
        pytest.fail(f"{damage}: a damaged JPEG 2000 stream was decoded without an error")
    _assert_outcome(template, folder, outcome, value, "pixel data", target)


# ----------------------------------------------------------------------------- special and unreadable files

def _fifo(path: Path):
    os.mkfifo(path)


def _socket(path: Path):
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(path))
    except OSError as exc:  # the path is too long for a socket address
        pytest.skip(f"cannot bind a socket at {path}: {exc}")
    _SOCKETS.append(sock)


_SOCKETS: list = []


SPECIAL = [
    ("special file", "fifo", lambda f: _fifo(f / "pipe")),
    ("special file", "fifo-named-like-a-slice", lambda f: _fifo(f / "slice999.dcm")),
    ("special file", "socket", lambda f: _socket(f / "s")),
    ("special file", "link-to-dev-zero", lambda f: (f / "zero").symlink_to("/dev/zero")),
    ("special file", "link-to-fifo", lambda f: (_fifo(f.parent / "outside_pipe"), (f / "p").symlink_to(f.parent / "outside_pipe"))),
    ("special file", "link-loop-self", lambda f: (f / "loop").symlink_to(f / "loop")),
    ("special file", "link-loop-pair", lambda f: ((f / "a").symlink_to(f / "b"), (f / "b").symlink_to(f / "a"))),
    ("special file", "folder-link-to-itself", lambda f: (f / "again").symlink_to(f, target_is_directory=True)),
    ("special file", "folder-link-to-parent", lambda f: (f / "sub").mkdir() or (f / "sub" / "up").symlink_to(f)),
    ("special file", "broken-link", lambda f: (f / "gone.jpg").symlink_to(f / "nowhere.jpg")),
]


@pytest.mark.parametrize("category, name, make", SPECIAL, ids=[f"special:{c[1]}" for c in SPECIAL])
def test_special_files_are_never_opened_and_summed_up(template, tmp_path, category, name, make):
    folder = _copy(template, tmp_path)
    make(folder)
    outcome, value, warnings = _outcome(folder)
    assert outcome == READ, value
    _assert_outcome(template, folder, outcome, value, "")
    assert len(warnings) == 1 and "skipped " in warnings[0], warnings


def _readable_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.mark.skipif(_readable_as_root(), reason="root reads files whatever their permissions")
@pytest.mark.parametrize("victim, expected", [(VICTIM, REFUSE), (END, REFUSE), (None, READ)],
                         ids=["unreadable:interior-slice", "unreadable:end-slice", "unreadable:thumbnail"])
def test_unreadable_files(template, tmp_path, victim, expected):
    folder = _copy(template, tmp_path)
    target = folder / (template["names"][victim] if victim is not None else "thumb.jpg")
    if victim is None:
        target.write_bytes(b"\xff\xd8\xff\xe0 a thumbnail")
    target.chmod(0)
    try:
        outcome, value, warnings = _outcome(folder)
    finally:
        target.chmod(0o644)
    assert outcome == expected, value
    _assert_outcome(template, folder, outcome, value, "Permission denied" if victim is not None else "", target
                    if victim is not None else None)


@pytest.mark.parametrize("victim, expected", [(VICTIM, REFUSE), (END, REFUSE), (None, READ)],
                         ids=["unreadable-simulated:interior-slice", "unreadable-simulated:end-slice",
                              "unreadable-simulated:no-suffix-junk-beside-another-folder"])
def test_unreadable_files_simulated(template, tmp_path, monkeypatch, victim, expected):
    """The same as root can see it: opening the file raises PermissionError."""
    from liverseg.io.dicom import frames as dicom  # where discovery opens each file

    folder = _copy(template, tmp_path)
    if victim is None:  # an unreadable file in a folder without slices counts against no series
        (folder / "other").mkdir()
        target = folder / "other" / "LOCKED"
        target.write_bytes(b"x")
    else:
        target = folder / template["names"][victim]
    real = dicom.open_regular

    def refusing(path):
        if Path(path) == target:
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(dicom, "open_regular", refusing)
    outcome, value, warnings = _outcome(folder)
    assert outcome == expected, value
    _assert_outcome(template, folder, outcome, value, "Permission denied", target if victim is not None else None)
    if outcome == READ:  # a refusal names the file in its one line, without the summary before it
        assert len(warnings) == 1 and "1 unreadable" in warnings[0], warnings
    else:
        assert warnings == [], warnings


@pytest.mark.skipif(_readable_as_root(), reason="root lists folders whatever their permissions")
def test_unlistable_subfolder_is_summed_up(template, tmp_path):
    folder = _copy(template, tmp_path)
    (folder / "private").mkdir()
    (folder / "private").chmod(0)
    try:
        outcome, value, warnings = _outcome(folder)
    finally:
        (folder / "private").chmod(0o755)
    assert outcome == READ and len(warnings) == 1 and "private" in warnings[0], (value, warnings)


# ----------------------------------------------------------------------------- junk beside the slices

def _pacs_cd(root: Path, template) -> Path:
    """A PACS CD: DICOMDIR, autorun.inf, index.html, a viewer and its thumbnails at the top, the
    slices (no suffix) under DICOM/S0/."""
    shutil.copytree(template["folder"], root / "DICOM" / "S0")
    for name in template["names"]:
        (root / "DICOM" / "S0" / name).rename(root / "DICOM" / "S0" / f"I{name[5:8]}")
    (root / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 20)  # a DICOMDIR pydicom cannot parse
    (root / "autorun.inf").write_text("[autorun]\nopen=viewer.exe\n")
    (root / "index.html").write_text("<html>open the viewer</html>")
    (root / "README").write_text("Images of patient X")
    (root / "viewer").mkdir()
    (root / "viewer" / "viewer.exe").write_bytes(b"MZ" + b"\0" * 500)
    (root / "viewer" / "thumb.jpg").write_bytes(b"\xff\xd8\xff\xe0 a thumbnail")
    return root


JUNK = [
    ("junk", "thumb.jpg", lambda f, t: (f / "thumb.jpg").write_bytes(b"\xff\xd8\xff\xe0 a thumbnail"), 1),
    ("junk", "dicomdir", lambda f, t: (f / "DICOMDIR").write_bytes(b"\0" * 132), 1),
    ("junk", "text-without-suffix", lambda f, t: (f / "NOTES").write_text("scanned on Tuesday\n"), 1),
    ("junk", "empty-file", lambda f, t: (f / "empty").write_bytes(b""), 1),
    ("junk", "hidden-files", lambda f, t: ((f / ".DS_Store").write_bytes(b"\0" * 40),
                                           (f / "._slice000.dcm").write_bytes(b"\0" * 40)), 2),
    ("junk", "1000-junk-files", lambda f, t: [(f / f"junk{i:04d}.{('jpg', 'html', 'bin', 'txt')[i % 4]}")
                                              .write_bytes(b"junk %d" % i) for i in range(1000)], 1000),
]


@pytest.mark.parametrize("category, name, make, n_junk", JUNK, ids=[f"junk:{c[1]}" for c in JUNK])
def test_junk_beside_the_slices_is_skipped_with_one_line(template, tmp_path, category, name, make, n_junk):
    folder = _copy(template, tmp_path)
    make(folder, template)
    outcome, value, warnings = _outcome(folder)
    assert outcome == READ, value
    _assert_outcome(template, folder, outcome, value, "")
    assert len(warnings) == 1 and f"skipped {n_junk:,} of {N + n_junk:,} file(s)" in warnings[0], warnings


def test_pacs_cd_layout_is_read_with_one_summary_line(template, tmp_path):
    root = _pacs_cd(tmp_path / "cd", template)
    outcome, value, warnings = _outcome(root)
    assert outcome == READ, value
    _assert_outcome(template, root, outcome, value, "")
    assert len(warnings) == 1, warnings
    for name in ("DICOMDIR", "autorun.inf", "index.html"):
        assert name in warnings[0]
    from liverseg.io.dicom import holds_dicom

    assert holds_dicom(root) and not holds_dicom(root / "viewer")


# ----------------------------------------------------------------------------- the command line

def test_cli_inspect_and_check_never_hang_on_a_fifo_and_sum_up_junk(template, tmp_path, capfd):
    root = _pacs_cd(tmp_path / "cd", template)
    os.mkfifo(root / "DICOM" / "S0" / "pipe")
    for i in range(300):
        (root / f"junk{i}.jpg").write_bytes(b"x")
    code = _in_thread(lambda: main(["inspect", str(root)]))
    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and "skipped 307" in captured.err, captured.err
    assert f"{N}" in captured.out




def test_cli_predict_refuses_a_damaged_series_in_one_line_and_writes_nothing(template, untrained_run, tmp_path,
                                                                             capfd):
    folder = _copy(template, tmp_path)
    _edit(folder / template["names"][END], _set(Rows=ROWS - 1))
    out_dir = tmp_path / "out"
    code = _in_thread(lambda: main(["predict", str(folder), "-o", str(out_dir), "--model", str(untrained_run),
                                    "--device", "cpu", "-q"]))
    captured = capfd.readouterr()
    assert code == 2 and "Traceback" not in captured.err, captured.err
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 1 and template["names"][END] in errors[0] and "pixel data holds" in errors[0], captured.err
    assert not out_dir.exists() or not any(out_dir.rglob("*"))


def test_cli_predict_reads_a_series_beside_a_fifo_and_junk(template, untrained_run, tmp_path, capfd):
    folder = tmp_path / "case"  # 3.5 mm pixels: the smoke model's grid needs a few voxels
    write_series(folder, template["stored"], spacing=(3.5, 3.5), slice_mm=4.0)
    os.mkfifo(folder / "pipe")
    (folder / "notes.txt").write_text("junk")
    out_dir = tmp_path / "out"
    code = _in_thread(lambda: main(["predict", str(folder), "-o", str(out_dir), "--model", str(untrained_run),
                                    "--device", "cpu", "-q", "--no-preview"]), timeout=120)
    captured = capfd.readouterr()
    assert code == 0 and "Traceback" not in captured.err, captured.err
    assert len([line for line in captured.err.splitlines() if "skipped 2" in line]) == 1, captured.err
    import SimpleITK as sitk

    assert sitk.ReadImage(str(out_dir / "case" / "segmentation.nii.gz")).GetSize() == (COLS, ROWS, N)


def test_cli_predict_takes_a_dicom_folder_with_a_thumbnail_as_dicom(template, untrained_run, tmp_path, capfd):
    folder = _copy(template, tmp_path)
    (folder / "thumb.jpg").write_bytes(b"\xff\xd8\xff\xe0 a thumbnail")
    from liverseg.inference.cases import cases_from_inputs

    assert [(c.case_id, Path(c.image)) for c in cases_from_inputs([folder])] == [("case", folder)]
