"""Case folders that appear whole or not at all, and the debris of killed runs.

A case folder is assembled under a hidden temporary name inside ``OUT`` (``owned_temp_dir``: a
``.<case>.XXXX-p<pid>-<start>-<host>.partial`` folder holding an owner record of the process that made
it) and renamed into place only when complete (``commit_case_folder``), so a killed run leaves no
partial case folder, only a ``.partial`` (or ``.old``) folder, which the next run in ``OUT`` removes
once its process is gone (``clean_stale_partials``).

The owner is in the folder's name too, because the name appears atomically with the folder: a run
killed between creating the folder and writing its record (or after removing the record, just before
the rename) leaves a folder whose owner is still known.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

from ..atomic import shared_mode
from ..errors import InputError
from .claims import pid_alive, process_stat
from .summary import BATCH_SUMMARY

log = logging.getLogger(__name__)

OWNER_FILE = ".liverseg-owner.json"  # inside a .partial/.old folder: the process that made it
STALE_AGE_S = 48 * 3600  # debris of another host (or without an owner record) untouched this long is removed


def commit_case_folder(work: Path, final: Path, overwrite: bool) -> None:
    """Rename the finished folder into place; an existing one is moved aside first, then removed."""
    old = None
    if final.exists():
        if not overwrite:
            raise InputError(f"{final}: appeared while predicting; pass --overwrite to replace it")
        old = owned_temp_dir(final.parent, final.name, ".old")
        os.rename(final, old / final.name)
    os.rename(work, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def owner_record() -> dict:
    pid = os.getpid()
    stat = process_stat(pid)
    return {"pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(),
            "start_ticks": stat[1] if stat else None, "created": time.time()}


def _host_tag() -> str:
    """This host and boot, in 8 hex digits (a folder name's owner is judged only on the host and boot
    that made it; elsewhere the owner record, or the age, decides)."""
    return hashlib.sha1(f"{socket.gethostname()}\0{_boot_id()}".encode()).hexdigest()[:8]


# the owner tag that ends a temporary folder's name: -p<pid>-<start ticks>-<host tag>.partial (no dot:
# claims.remove_leftovers tells a case's folders from those of a case named "<case>.<more>" by that)
_OWNER_TAG = re.compile(r"-p(\d+)-(\d*)-([0-9a-f]{8})\.(?:partial|old)$")


def owned_temp_dir(parent: Path, name: str, suffix: str) -> Path:
    """A new hidden ``.<name>.XXXX-p<pid>-<start>-<host><suffix>`` folder in ``parent`` with the umask's
    permissions (not mkdtemp's 0700) and an owner record, so a later run can tell when its process is
    gone; the name says the same where the record is missing (killed before it was written)."""
    record = owner_record()
    tag = f"-p{record['pid']}-{record['start_ticks'] or ''}-{_host_tag()}"
    folder = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=f"{tag}{suffix}", dir=parent))
    try:
        os.chmod(folder, shared_mode(0o777))
        (folder / OWNER_FILE).write_text(json.dumps(record), encoding="utf-8")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def _owner_gone(owner: dict) -> bool:
    """Whether the process recorded in ``owner`` (made on this host) no longer runs."""
    boot = _boot_id()
    if owner.get("boot_id") and boot and owner["boot_id"] != boot:
        return True  # rebooted since
    try:
        pid = int(owner["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    return pid > 0 and not pid_alive(pid, owner.get("start_ticks"))


def _newest_mtime(folder: Path) -> float:
    newest = folder.stat().st_mtime
    for entry in os.scandir(folder):
        try:
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
        except OSError:
            pass
    return newest


def _owner_from_name(folder: Path) -> dict | None:
    """The owner that ``owned_temp_dir`` put in the folder's name, when made on this host and boot."""
    match = _OWNER_TAG.search(folder.name)
    if match is None or match.group(3) != _host_tag():
        return None
    return {"pid": int(match.group(1)), "start_ticks": match.group(2) or None, "host": socket.gethostname()}


def _stale_reason(folder: Path, now: float) -> str | None:
    """Why ``folder`` (a ``.partial``/``.old`` folder) is debris of a dead run, or None to keep it."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
        if not isinstance(owner, dict):
            owner = None
    except (OSError, ValueError):
        owner = None
    if owner is None:  # killed before its record was written, or just after it was removed
        owner = _owner_from_name(folder)
    try:
        idle_h = (now - _newest_mtime(folder)) / 3600
    except OSError:
        return None  # removed meanwhile, or unreadable: not ours to judge
    old_enough = idle_h * 3600 > STALE_AGE_S
    if owner is None:  # an older liverseg's, or one whose owner record is being written right now
        return f"no owner record, untouched for {idle_h:.0f} h" if old_enough else None
    if owner.get("host") != socket.gethostname():
        return f"made on {owner.get('host')}, untouched for {idle_h:.0f} h" if old_enough else None
    if _owner_gone(owner):
        return f"its process {owner.get('pid')} is gone"
    return None


def _remove_debris(folder: Path) -> None:
    """Remove ``folder``, its owner record last: a cleaner killed halfway leaves it stale, not anonymous."""
    for entry in list(os.scandir(folder)):
        if entry.name == OWNER_FILE:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(folder / OWNER_FILE)
    os.rmdir(folder)


def clean_stale_partials(out_dir: str | Path) -> list[Path]:
    """Remove the ``.<case>.*.partial`` (and ``.old``) folders that killed runs left in ``out_dir``.

    Removed: those whose owner process (recorded in the folder) is gone on this host (a reused pid is
    told apart by its start time; a reboot by the boot id). Kept: those of running processes, of
    other hosts, and without an owner record (an older liverseg's, or one being made this instant),
    unless untouched for ``STALE_AGE_S`` (48 h). A temporary ``.batch_summary.csv.*`` file an hour
    old goes too. Returns what was removed.
    """
    out_dir = Path(out_dir)
    removed: list[Path] = []
    if not out_dir.is_dir():
        return removed
    now = time.time()
    for entry in sorted(out_dir.iterdir()):
        if entry.name.startswith(f".{BATCH_SUMMARY}.") and entry.is_file():  # atomic_path's, of a killed run
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > 3600:  # written in milliseconds: an hour old is debris
                    entry.unlink()
                    removed.append(entry)
            continue
        if not (entry.name.startswith(".") and entry.name.endswith((".partial", ".old"))):
            continue
        if entry.is_symlink() or not entry.is_dir():
            continue
        reason = _stale_reason(entry, now)
        if reason is None:
            continue
        try:
            _remove_debris(entry)
        except FileNotFoundError:  # another run removed it first
            continue
        except OSError as exc:
            log.warning("%s: stale (%s) but not removed: %s", entry, reason, exc)
            continue
        log.info("removed %s, left by a killed run (%s)", entry.name, reason)
        removed.append(entry)
    return removed


__all__ = ["OWNER_FILE", "STALE_AGE_S", "owner_record", "owned_temp_dir", "commit_case_folder",
           "clean_stale_partials"]
