"""Claims between the workers that write into one ``-o`` folder.

Claims: a worker predicts a case only while it holds ``OUT/.claims/<case>.claim``, created atomically
(a hard link of a complete temporary file, which fails when the name exists, on local file systems
and NFS alike; ``O_CREAT | O_EXCL`` where hard links are refused). The file holds the worker's pid,
host, process start time and a token; its mtime is the heartbeat, refreshed by a background thread
while the claim is held. A claim is stale, and taken over, when its worker is gone: on the same
host when its pid no longer runs (or runs another process), on any host when the heartbeat is older
than ``LIVERSEG_CLAIM_TIMEOUT`` seconds (default 300). Taking over goes through a second exclusive
file (``<case>.claim.break``) so two workers never both break one claim and both take the case.
A case whose final folder exists is complete and skipped; one claimed by a live worker is reported
as being done by another worker, never as a failure.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CLAIMS = ".claims"


def process_stat(pid: int) -> tuple[str, str | None] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc (Linux): the state tells a
    zombie, the start time a reused pid. None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (fields[0], fields[19] if len(fields) > 19 else None) if fields else None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether ``pid`` runs on this host (not a zombie), and is the process that started at ``start``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    except OSError:
        return False
    stat = process_stat(pid)
    if stat is None:
        return True
    state, current = stat
    return state not in ("Z", "X") and not (start and current and current != start)


@dataclass(frozen=True)
class Claim:
    case_id: str
    path: Path
    token: str


def stale_claim(content: bytes, mtime: float, host: str, timeout_s: float) -> bool:
    """Whether a claim (its file's content and mtime) belongs to a worker that is gone: on ``host``, its
    process has ended; elsewhere, its heartbeat is older than ``timeout_s``."""
    age = time.time() - mtime
    try:
        record = json.loads(content)
        owner, pid = record["host"], int(record["pid"])
    except (ValueError, KeyError, TypeError):  # written half by a worker killed at that moment
        return age > min(timeout_s, 30.0)
    if owner == host and not pid_alive(pid, record.get("process_start")):
        return True
    return age > timeout_s


def live_claims(out_dir: str | Path) -> list[str]:
    """Cases that live workers are predicting into ``out_dir`` right now (their claims are fresh)."""
    folder = Path(out_dir) / CLAIMS
    if not folder.is_dir():
        return []
    timeout_s = float(os.environ.get("LIVERSEG_CLAIM_TIMEOUT", 300))
    host, live = socket.gethostname(), []
    for path in sorted(folder.glob("*.claim")):
        try:
            content, mtime = path.read_bytes(), path.stat().st_mtime
        except FileNotFoundError:
            continue
        if not stale_claim(content, mtime, host, timeout_s):
            live.append(path.stem)
    return live


class Claims:
    """The claims of one worker on one output folder (see the module's docstring)."""

    def __init__(self, out_dir: str | Path, timeout_s: float | None = None, heartbeat_s: float | None = None):
        self.folder = Path(out_dir) / CLAIMS
        self.folder.mkdir(parents=True, exist_ok=True)
        self.timeout_s = float(timeout_s if timeout_s is not None else os.environ.get("LIVERSEG_CLAIM_TIMEOUT", 300))
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else max(0.5, min(30.0, self.timeout_s / 5))
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.start = (process_stat(self.pid) or (None, None))[1]
        self._held: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="liverseg-claims-heartbeat", daemon=True)
        self._thread.start()

    # -- files
    def path(self, case_id: str) -> Path:
        return self.folder / f"{case_id}.claim"

    def _create(self, path: Path, token: str) -> bool:
        """Create ``path`` holding this worker's record, atomically; False when it exists."""
        record = json.dumps({"pid": self.pid, "host": self.host, "process_start": self.start, "token": token,
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        tmp = self.folder / f".tmp.{self.host}.{self.pid}.{uuid.uuid4().hex}"
        tmp.write_text(record)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as handle:
                handle.write(record)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _read(self, path: Path) -> tuple[bytes, int, float] | None:
        """(content, inode, mtime) of a claim file; None when it is gone."""
        try:
            with path.open("rb") as handle:
                stat = os.fstat(handle.fileno())
                return handle.read(), stat.st_ino, stat.st_mtime
        except FileNotFoundError:
            return None

    def _stale(self, content: bytes, mtime: float) -> bool:
        return stale_claim(content, mtime, self.host, self.timeout_s)

    # -- claiming
    def acquire(self, case_id: str) -> Claim | None:
        """This worker's claim on ``case_id``, or None while a live worker holds it."""
        path = self.path(case_id)
        for _ in range(4):
            if self._stop.is_set():  # closed: the reader thread may still be finishing
                return None
            token = uuid.uuid4().hex
            if self._create(path, token):
                claim = Claim(case_id, path, token)
                with self._lock:
                    self._held[case_id] = claim
                return claim
            seen = self._read(path)
            if seen is None:
                continue
            if not self._stale(seen[0], seen[2]):
                return None
            self._break(path, seen)
        return None

    def _break(self, path: Path, seen: tuple[bytes, int, float]) -> None:
        """Remove the stale claim ``seen`` at ``path``, unless it changed meanwhile (under a break lock)."""
        lock = path.with_name(path.name + ".break")
        if not self._create(lock, "break"):
            held = self._read(lock)
            if held is not None and time.time() - held[2] > 60.0:  # a breaker died within these few lines
                lock.unlink(missing_ok=True)
            time.sleep(0.05)
            return
        try:
            now = self._read(path)
            if now is not None and now[:2] == seen[:2] and self._stale(now[0], now[2]):
                path.unlink(missing_ok=True)
                log.info("%s: took over the claim of a worker that is gone (%s)", path.stem,
                         now[0].decode(errors="replace")[:200])
        finally:
            lock.unlink(missing_ok=True)

    def holds(self, claim: Claim) -> bool:
        seen = self._read(claim.path)
        try:
            return seen is not None and json.loads(seen[0]).get("token") == claim.token
        except ValueError:
            return False

    def release(self, claim: Claim) -> None:
        with self._lock:
            self._held.pop(claim.case_id, None)
        if self.holds(claim):
            claim.path.unlink(missing_ok=True)

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def claimed_elsewhere(self, case_id: str) -> bool:
        return self.path(case_id).exists()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                paths = [claim.path for claim in self._held.values()]
            for path in paths:
                try:
                    os.utime(path)
                except OSError:
                    pass

    def close(self) -> None:
        """Stop the heartbeat, release what is held, remove the claims folder when no one else uses it."""
        self._stop.set()
        with self._lock:
            held = list(self._held.values())
        for claim in held:
            self.release(claim)
        try:
            self.folder.rmdir()
        except OSError:
            pass


def remove_leftovers(out_dir: Path, case_id: str) -> None:
    """A dead worker's temporary folders of ``case_id`` (``.<case>.XXXXXXXX.partial`` / ``.old``); call
    only while holding the case's claim, so no live worker is writing them."""
    prefix = f".{case_id}."
    try:
        entries = list(out_dir.iterdir())
    except OSError:
        return
    for entry in entries:
        name = entry.name
        for suffix in (".partial", ".old"):
            if name.startswith(prefix) and name.endswith(suffix) and "." not in name[len(prefix):-len(suffix)]:
                shutil.rmtree(entry, ignore_errors=True)


__all__ = ["CLAIMS", "Claims", "Claim", "process_stat", "pid_alive", "stale_claim", "live_claims", "remove_leftovers"]
