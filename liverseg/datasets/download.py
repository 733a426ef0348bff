"""Resumable, checksum-verified downloads of public datasets.

``download_file`` fetches a URL into ``dest`` through ``dest.part``: an interrupted download resumes with
an HTTP ``Range`` request (a server that ignores it is detected by its 200 answer and the file starts
over), the checksum is verified before the file takes its final name, and a progress bar shows bytes.
``download_dataset("msd_liver", folder)`` fetches the Decathlon's Task03_Liver tarball and extracts it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError


@dataclass(frozen=True)
class Resource:
    url: str
    filename: str
    hash_type: str          # "sha256" or "md5" (the publisher's or MONAI's published value)
    hash_value: str
    extracts_to: str


# The address and checksum MONAI's DecathlonDataset uses (monai/apps/datasets.py); MONAI publishes an md5.
DATASETS = {
    "msd_liver": Resource("https://msd-for-monai.s3-us-west-2.amazonaws.com/Task03_Liver.tar", "Task03_Liver.tar",
                          "md5", "a90ec6c4aa7f6a3d087205e23d4e6397", "Task03_Liver"),
}
CHUNK = 1 << 20


def file_hash(path: Path, hash_type: str) -> str:
    digest = hashlib.new(hash_type)
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, dest: str | Path, *, sha256: str | None = None, md5: str | None = None,
                  progress: bool = True, timeout_s: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``); verify the checksum; return ``dest``."""
    from tqdm import tqdm

    dest = Path(dest)
    expected = ("sha256", sha256.lower()) if sha256 else ("md5", md5.lower()) if md5 else None
    if dest.is_file():
        if expected is None or file_hash(dest, expected[0]) == expected[1]:
            return dest
        raise InputError(f"{dest}: exists but its {expected[0]} does not match {expected[1]}; delete it and run again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the range starts at the end: the part file is already complete
            response = None
        else:
            raise InputError(f"{url}: download failed (HTTP {exc.code} {exc.reason})") from None
    except (urllib.error.URLError, OSError) as exc:
        raise InputError(f"{url}: cannot connect ({getattr(exc, 'reason', exc)}); check the network and run the "
                         f"same command again to resume") from None
    if response is not None:
        with response:
            resumed = have and response.status == 206
            if not resumed:
                have = 0  # the server sent the whole file
            length = response.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not progress)
            try:
                with part.open("ab" if resumed else "wb") as handle:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        handle.write(block)
                        bar.update(len(block))
            except (OSError, urllib.error.URLError) as exc:
                raise InputError(f"{url}: download interrupted after {part.stat().st_size} bytes ({exc}); run the "
                                 "same command again to resume") from None
            finally:
                bar.close()
    if expected is not None:
        actual = file_hash(part, expected[0])
        if actual != expected[1]:
            part.unlink()
            raise InputError(f"{url}: {expected[0]} of the downloaded file is {actual}, expected {expected[1]}; the "
                             "partial file was deleted, run again to download it afresh")
    os.replace(part, dest)
    return dest


def extract_tar(archive: Path, folder: Path) -> None:
    """Extract with the 'data' filter (no absolute paths, links out of the folder or devices)."""
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")


def download_dataset(name: str, folder: str | Path, *, progress: bool = True, extract: bool = True) -> Path:
    """Download (and extract) a known dataset into ``folder``; returns the extracted dataset folder."""
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    resource = DATASETS[name]
    folder = Path(folder)
    archive = download_file(resource.url, folder / resource.filename, progress=progress,
                            **{resource.hash_type: resource.hash_value})
    target = folder / resource.extracts_to
    if extract and not target.is_dir():
        # extract beside the target, then rename: an interrupted extraction never looks complete
        scratch = Path(tempfile.mkdtemp(prefix=f".{resource.extracts_to}.", dir=folder))
        try:
            extract_tar(archive, scratch)
            if not (scratch / resource.extracts_to).is_dir():
                raise InputError(f"{archive}: does not contain the folder {resource.extracts_to}/")
            os.replace(scratch / resource.extracts_to, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


__all__ = ["DATASETS", "download_dataset", "download_file", "file_hash"]
