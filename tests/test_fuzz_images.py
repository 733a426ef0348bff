"""Fuzz: damaged NIfTI / NRRD / MHA files are refused in one line, never segmented silently.

Small volumes (24x20x12 int16) are written with nibabel / SimpleITK in every supported layout
(``.nii.gz``, ``.nii``, ``.nrrd`` raw and gzip, ``.nhdr`` + raw, ``.mha`` raw and compressed, ``.mhd`` +
raw), then damaged byte-wise or in their headers. For every damaged input, either ``check_input`` and
``read_volume`` succeed with exactly the good file's grid and voxels (damage SimpleITK itself would
have read the same way), or they raise a ``LiversegError`` whose one-line message names the file. For
the categories below that must be refused, reading must fail. A handful go through ``liverseg predict``
and ``liverseg evaluate`` in-process: exit 2, one stderr line naming the file, nothing under ``-o``.

``CATEGORY_COUNTS`` (printed by ``test_category_table``) is the table the README cites.
"""
from __future__ import annotations

import collections
import contextlib
import gzip
import io
import signal
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from liverseg.cli import main
from liverseg.errors import LiversegError
from liverseg.io import check_input, read_volume
from liverseg.io.images import sitk_to_volume

SHAPE = (24, 20, 12)
AFFINE = np.array([[-0.8, 0.0, 0.0, 40.0], [0.0, -0.9, 0.0, 30.0], [0.0, 0.0, 2.5, -60.0], [0.0, 0.0, 0.0, 1.0]])
FORMATS = ("a.nii.gz", "a.nii", "a.nrrd", "z.nrrd", "a.nhdr", "a.mha", "z.mha", "a.mhd")
FRACTIONS = (0.001, 0.1, 0.3, 0.5, 0.9, 0.99, 0.999)


def _array() -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.normal(0, 400, SHAPE) + np.arange(SHAPE[2])[None, None, :] * 3).astype(np.int16)


def _write_good(folder: Path) -> dict[str, Path]:
    """Every layout of the same volume, plus the detached data files they use."""
    array = _array()
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in ("a.nii.gz", "a.nii"):
        image = nib.Nifti1Image(array, AFFINE)
        image.header.set_qform(AFFINE, 1)
        image.header.set_sform(AFFINE, 1)
        nib.save(image, folder / name)
        files[name] = folder / name
    image = sitk.ReadImage(str(folder / "a.nii"))
    for name in FORMATS[2:]:
        sitk.WriteImage(image, str(folder / name), useCompression=name.startswith("z"))
        files[name] = folder / name
    return files


# ----------------------------------------------------------------------------- damage

def _truncate(data: bytes, fraction: float) -> bytes:
    return data[: max(1, int(len(data) * fraction))]


def _corrupt_middle(data: bytes, start_fraction: float, length: int = 24) -> bytes:
    buf = bytearray(data)
    start = int(len(buf) * start_fraction)
    for i in range(start, min(start + length, len(buf))):
        buf[i] ^= 0x5A
    return bytes(buf)


def _nifti_edit(data: bytes, edits: dict[int, tuple[str, object]], gz: bool) -> bytes:
    raw = bytearray(gzip.decompress(data) if gz else data)
    for offset, (fmt, value) in edits.items():
        struct.pack_into("<" + fmt, raw, offset, value)
    return gzip.compress(bytes(raw), mtime=0) if gz else bytes(raw)


def _nifti_pixdim(value: float, axis: int = 1) -> dict:
    return {76 + 4 * axis: ("f", value)}


def _nifti_with_dims(data: bytes, dims: tuple[int, ...], gz: bool) -> bytes:
    raw = bytearray(gzip.decompress(data) if gz else data)
    struct.pack_into("<8h", raw, 40, *dims)
    return gzip.compress(bytes(raw), mtime=0) if gz else bytes(raw)


def _mha_edit(data: bytes, key: str, value: str) -> bytes:
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(key.encode() + b" ="):
            lines[i] = f"{key} = {value}".encode()
            return b"\n".join(lines)
    raise AssertionError(key)


def _nrrd_edit(data: bytes, key: str, value: str) -> bytes:
    end = data.find(b"\n\n")
    end = len(data) if end < 0 else end  # a detached header (.nhdr) is all header
    head = data[:end].split(b"\n")
    for i, line in enumerate(head):
        if line.startswith(key.encode() + b":"):
            head[i] = f"{key}: {value}".encode()
            return b"\n".join(head) + data[end:]
    raise AssertionError(key)


def _float_nifti(array: np.ndarray, gz: bool = True) -> bytes:
    image = nib.Nifti1Image(array.astype(np.float32), AFFINE)
    buffer = io.BytesIO()
    image.header.set_qform(AFFINE, 1)
    image.header.set_sform(AFFINE, 1)
    file_map = image.make_file_map({"image": buffer, "header": buffer})
    image.to_file_map(file_map)
    raw = buffer.getvalue()
    return gzip.compress(raw, mtime=0) if gz else raw


def _variants(good: dict[str, Path]):
    """(category, id, file name, bytes or callable writing the input into a folder, must_refuse)."""
    data = {name: path.read_bytes() for name, path in good.items()}
    for name in FORMATS:
        for fraction in FRACTIONS:
            if name in ("a.nhdr", "a.mhd"):
                continue
            yield "truncated", f"{name}@{fraction}", name, _truncate(data[name], fraction), True
    # detached headers: the data file truncated
    for name, data_name in (("a.nhdr", "a.raw"), ("a.mhd", "a.raw")):
        folder_data = good[name].parent / data_name
        if folder_data.exists():
            raw = folder_data.read_bytes()
            for fraction in (0.1, 0.5, 0.99):
                yield "truncated", f"{name}-data@{fraction}", name, {name: data[name],
                                                                     data_name: _truncate(raw, fraction)}, True
    for name in ("a.nii.gz", "z.nrrd", "z.mha"):
        for fraction in (0.3, 0.5, 0.7, 0.9):
            yield "corrupt-compressed", f"{name}@{fraction}", name, _corrupt_middle(data[name], fraction), True
    for gz, name in ((True, "a.nii.gz"), (False, "a.nii")):
        for dims in ((3, 24, 20, 13, 1, 1, 1, 1), (3, 24, 40, 12, 1, 1, 1, 1), (3, 24, 20, 11, 1, 1, 1, 1),
                     (3, 12, 20, 12, 1, 1, 1, 1)):
            yield "dims-vs-data", f"{name}:{dims[1:4]}", name, _nifti_with_dims(data[name], dims, gz), True
    for name, key in (("a.mha", "DimSize"), ("a.nrrd", "sizes")):
        edit = _mha_edit if name.endswith(".mha") else _nrrd_edit
        for value in ("24 20 13", "24 20 11"):
            yield "dims-vs-data", f"{name}:{value}", name, edit(data[name], key, value), True
    for gz, name in ((True, "a.nii.gz"), (False, "a.nii")):
        for value in (0, 349, 540, -1, 1 << 20):
            yield "bad-sizeof_hdr-or-magic", f"{name}:sizeof={value}", name, _nifti_edit(data[name], {0: ("i", value)}, gz), True
        for magic in (b"ni1\0", b"n+2\0", b"\0\0\0\0", b"XXXX"):
            raw = bytearray(gzip.decompress(data[name]) if gz else data[name])
            raw[344:348] = magic
            yield ("bad-sizeof_hdr-or-magic", f"{name}:magic={magic!r}", name,
                   gzip.compress(bytes(raw), mtime=0) if gz else bytes(raw), True)
        for value in (1e9, 3.0e38, -352.0, 0.0, 100.0, 352.5, float("nan")):
            yield "vox_offset", f"{name}:{value}", name, _nifti_edit(data[name], {108: ("f", value)}, gz), True
        for value in (0.0, float("nan"), float("inf"), -0.8, -float("inf")):
            for axis in (1, 3):
                yield ("pixdim", f"{name}:pixdim[{axis}]={value}", name,
                       _nifti_edit(data[name], _nifti_pixdim(value, axis), gz), True)
        for code, bitpix in ((3, 16), (16, 16), (4, 8), (8, 32), (2, 8), (128, 24), (32, 64), (9999, 16)):
            yield ("datatype", f"{name}:datatype={code}/bitpix={bitpix}", name,
                   _nifti_edit(data[name], {70: ("h", code), 72: ("h", bitpix)}, gz), True)
        for dims in ((2, 24, 20, 1, 1, 1, 1, 1), (4, 24, 20, 3, 4, 1, 1, 1), (3, 1, 1, 1, 1, 1, 1, 1),
                     (3, 24000, 20000, 12000, 1, 1, 1, 1), (3, -24, 20, 12, 1, 1, 1, 1), (0, 24, 20, 12, 1, 1, 1, 1),
                     (9, 24, 20, 12, 1, 1, 1, 1)):
            yield "2d-4d-absurd-dims", f"{name}:dims={dims[:5]}", name, _nifti_with_dims(data[name], dims, gz), True
    for name in ("a.mha", "z.mha", "a.mhd"):
        for matrix in ("1 0 0 0.5 1 0 0 0 1", "1 0 0 1 0 0 0 0 1", "nan 0 0 0 1 0 0 0 1", "2 0 0 0 2 0 0 0 2",
                       "0 0 0 0 0 0 0 0 0"):
            yield "direction", f"{name}:{matrix}", name, _mha_edit(data[name], "TransformMatrix", matrix), True
        for spacing in ("0 0.9 2.5", "-0.8 0.9 2.5", "nan 1 1"):
            yield "spacing", f"{name}:{spacing}", name, _mha_edit(data[name], "ElementSpacing", spacing), True
    for name in ("a.nrrd", "z.nrrd", "a.nhdr"):
        for directions in ("(0.8,0,0) (0.4,0.9,0) (0,0,2.5)", "(0.8,0,0) (0.8,0,0) (0,0,2.5)",
                           "(0,0,0) (0,0.9,0) (0,0,2.5)", "(nan,0,0) (0,0.9,0) (0,0,2.5)"):
            yield "direction", f"{name}:{directions}", name, _nrrd_edit(data[name], "space directions", directions), True
    for name, value in (("a.mha", "2"), ("a.nrrd", "2")):
        if name.endswith(".mha"):
            yield "2d-4d-absurd-dims", f"{name}:NDims={value}", name, _mha_edit(data[name], "NDims", value), True
    array = _array().astype(np.float32)
    for label, make in (("all-nan", lambda a: np.full_like(a, np.nan)),
                        ("one-nan", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 77, np.nan, a)),
                        ("some-inf", lambda a: np.where(a > 900, np.inf, a)),
                        ("all-constant", lambda a: np.full_like(a, -1024.0)),
                        ("all-zero", lambda a: np.zeros_like(a))):
        for gz in (True, False):
            yield "nan-inf-constant", f"{label}.nii{'.gz' if gz else ''}", "a.nii.gz" if gz else "a.nii", \
                _float_nifti(make(array), gz), True
    # qform/sform disagreement: repaired the standard way with a warning (read, not refused)
    for gz, name in ((True, "a.nii.gz"), (False, "a.nii")):
        yield "qform-sform (warned)", f"{name}:sform-shifted", name, _nifti_edit(data[name], {292: ("f", 55.0)}, gz), False
        yield "qform-sform (warned)", f"{name}:no-forms", name, _nifti_edit(data[name], {252: ("h", 0), 254: ("h", 0)}, gz), False


CATEGORY_COUNTS: collections.Counter = collections.Counter()


@contextlib.contextmanager
def _deadline(seconds: int):
    def _raise(*_):
        raise TimeoutError(f"no answer within {seconds} s")
    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _materialise(folder: Path, good: dict[str, Path], name: str, payload) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if name in ("a.nhdr", "a.mhd"):  # detached data: copy the good data file unless the variant brings one
        for data_name in ("a.raw",):
            source = good[name].parent / data_name
            if source.exists():
                (folder / data_name).write_bytes(source.read_bytes())
    if isinstance(payload, dict):
        for file_name, content in payload.items():
            (folder / file_name).write_bytes(content)
    else:
        (folder / name).write_bytes(payload)
    return folder / name


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    return _write_good(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def reference(good) -> dict[str, object]:
    image = sitk.ReadImage(str(good["a.nii"]))
    return {"volume": sitk_to_volume(image, good["a.nii"]), "nib": nib.load(good["a.nii"])}


def test_good_files_read_with_the_input_grid(good, reference):
    """Every layout of the good volume reads exactly: same voxels, same grid as SimpleITK and nibabel say."""
    expected = reference["volume"]
    assert np.allclose(reference["nib"].affine, expected.affine_ras, atol=1e-4)
    for name, path in good.items():
        check_input(path)
        volume = read_volume(path)
        assert volume.shape == SHAPE, name
        assert np.allclose(volume.affine_ras, expected.affine_ras, atol=1e-4), name
        assert np.array_equal(volume.array, expected.array), name
        assert not volume.meta.get("warnings"), (name, volume.meta.get("warnings"))


def test_damaged_images_are_refused_in_one_line_or_read_exactly(good, reference, tmp_path):
    expected = reference["volume"]
    outcomes = collections.Counter()
    variants = list(_variants(good))
    assert len(variants) >= 200, len(variants)
    CATEGORY_COUNTS.clear()
    for n, (category, ident, name, payload, must_refuse) in enumerate(variants):
        CATEGORY_COUNTS[category] += 1
        path = _materialise(tmp_path / f"v{n:03d}", good, name, payload)
        try:
            with _deadline(20):
                check_input(path)
                volume = read_volume(path)
        except LiversegError as exc:
            message = str(exc)
            assert "\n" not in message.strip(), (ident, message)
            assert str(path) in message, (ident, message)
            assert "Traceback" not in message
            outcomes[(category, "refused")] += 1
            continue
        assert not must_refuse, f"{category} {ident}: read without complaint"
        assert volume.shape == SHAPE, ident
        if category.startswith("qform-sform"):
            assert volume.meta.get("warnings"), ident
            assert str(path) in volume.meta["warnings"][0]
            assert np.array_equal(volume.array, expected.array), ident
        else:
            assert np.allclose(volume.affine_ras, expected.affine_ras, atol=1e-4), ident
            assert np.array_equal(volume.array, expected.array), ident
        outcomes[(category, "read")] += 1
    print("\n" + "\n".join(f"{cat:28s} {count:4d} inputs" for cat, count in sorted(CATEGORY_COUNTS.items())))
    print(f"total {sum(CATEGORY_COUNTS.values())} inputs in {len(CATEGORY_COUNTS)} categories; outcomes {dict(outcomes)}")


# ----------------------------------------------------------------------------- through the CLI



def _cli_inputs(good: dict[str, Path]):
    data = {name: path.read_bytes() for name, path in good.items()}
    yield "truncated-nii.gz-50%", "a.nii.gz", _truncate(data["a.nii.gz"], 0.5)
    yield "truncated-nii.gz-99.9%", "a.nii.gz", _truncate(data["a.nii.gz"], 0.999)
    yield "truncated-nii-50%", "a.nii", _truncate(data["a.nii"], 0.5)
    yield "corrupt-nii.gz-middle", "a.nii.gz", _corrupt_middle(data["a.nii.gz"], 0.6)
    yield "pixdim-nan", "a.nii.gz", _nifti_edit(data["a.nii.gz"], _nifti_pixdim(float("nan")), True)
    yield "all-nan", "a.nii.gz", _float_nifti(np.full(SHAPE, np.nan, dtype=np.float32))
    yield "all-constant", "a.nii.gz", _float_nifti(np.full(SHAPE, -1024.0, dtype=np.float32))
    yield "mha-sheared", "a.mha", _mha_edit(data["a.mha"], "TransformMatrix", "1 0 0 0.5 1 0 0 0 1")
    yield "mha-compressed-corrupt", "z.mha", _corrupt_middle(data["z.mha"], 0.7)
    yield "nrrd-truncated", "z.nrrd", _truncate(data["z.nrrd"], 0.8)


@pytest.mark.parametrize("index", range(10))
def test_predict_refuses_a_damaged_image_in_one_line(good, untrained_run, tmp_path, capfd, index):
    ident, name, payload = list(_cli_inputs(good))[index]
    path = _materialise(tmp_path / "in", good, name, payload)
    out = tmp_path / "out"
    with _deadline(120):
        code = main(["predict", str(path), "-o", str(out), "--model", str(untrained_run), "--device", "cpu", "-q"])
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (ident, err)
    assert len(lines) == 1, (ident, err)
    assert str(path) in lines[0] and "Traceback" not in err, (ident, err)
    assert not out.exists() or not any(out.iterdir()), (ident, list(out.iterdir()))


def test_evaluate_refuses_a_truncated_prediction(good, tmp_path, capfd):
    labels = (_array() > 300).astype(np.uint8)
    reference = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(labels, AFFINE), reference)
    prediction = tmp_path / "pred.nii.gz"
    prediction.write_bytes(_truncate(reference.read_bytes(), 0.6))
    with _deadline(60):
        code = main(["evaluate", str(prediction), str(reference), "--no-qc"])
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and str(prediction) in lines[0] and "truncated" in lines[0], err
