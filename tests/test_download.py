"""Download helper against a local HTTP server on 127.0.0.1 (no network): full download, resume with
an HTTP Range request, a server that ignores Range, checksum failure, dataset download + extraction."""
from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from liverseg.datasets import download
from liverseg.errors import InputError

PAYLOAD = bytes(range(256)) * 40  # 10 KiB


def _tar_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = b'{"name": "Liver"}'
        info = tarfile.TarInfo("Task03_Liver/dataset.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    honour_range = True
    ranges: list[str | None] = []

    def do_GET(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        requested = self.headers.get("Range")
        type(self).ranges.append(requested)
        start = int(requested.split("=")[1].rstrip("-")) if requested and self.honour_range else 0
        if start >= len(body) and requested:
            self.send_response(416)
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    _Handler.files = {"/data.bin": PAYLOAD, "/Task03_Liver.tar": _tar_bytes()}
    _Handler.honour_range = True
    _Handler.ranges = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_full_download_verifies_sha256(server, tmp_path):
    dest = download.download_file(f"{server}/data.bin", tmp_path / "data.bin", sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "data.bin.part").exists()
    assert _Handler.ranges == [None]
    # already there and verified: no second request
    download.download_file(f"{server}/data.bin", dest, sha256=SHA, progress=False)
    assert _Handler.ranges == [None]


def test_resume_asks_for_the_missing_range(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:4000])
    dest = download.download_file(f"{server}/data.bin", tmp_path / "data.bin", sha256=SHA, progress=False)
    assert _Handler.ranges == ["bytes=4000-"]
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    _Handler.honour_range = False
    (tmp_path / "data.bin.part").write_bytes(b"garbage-from-another-file")
    dest = download.download_file(f"{server}/data.bin", tmp_path / "data.bin", sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_refuses_and_deletes_the_part(server, tmp_path):
    with pytest.raises(InputError, match="sha256 of the downloaded file is .* expected 000"):
        download.download_file(f"{server}/data.bin", tmp_path / "data.bin", sha256="0" * 64, progress=False)
    assert not (tmp_path / "data.bin").exists() and not (tmp_path / "data.bin.part").exists()
    with pytest.raises(InputError, match="HTTP 404"):
        download.download_file(f"{server}/missing.bin", tmp_path / "m.bin", progress=False)


def test_download_dataset_extracts_atomically(server, tmp_path, monkeypatch):
    tar = _tar_bytes()
    resource = download.Resource(f"{server}/Task03_Liver.tar", "Task03_Liver.tar", "md5",
                                 hashlib.md5(tar).hexdigest(), "Task03_Liver")
    monkeypatch.setitem(download.DATASETS, "msd_liver", resource)
    target = download.download_dataset("msd_liver", tmp_path, progress=False)
    assert (target / "dataset.json").read_text() == '{"name": "Liver"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Task03_Liver", "Task03_Liver.tar"]
    with pytest.raises(InputError, match="unknown dataset 'msd_spleen'; known: msd_liver"):
        download.download_dataset("msd_spleen", tmp_path)


def test_real_msd_resource_is_the_monai_address():
    resource = download.DATASETS["msd_liver"]
    assert resource.url == "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task03_Liver.tar"
    assert resource.hash_type == "md5" and len(resource.hash_value) == 32
    assert Path(resource.filename).name == "Task03_Liver.tar"
