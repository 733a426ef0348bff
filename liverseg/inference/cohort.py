"""Cohorts: a share of the cases per job (``--part K/N``, torchrun ranks), claims between the workers
that write into one ``-o`` folder, and a pipelined loop (read ahead, write behind) inside one process.

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

Pipelining: a reader thread claims and reads the next case while the network runs on the current
one, and a writer thread writes and commits the previous one (``LIVERSEG_PIPELINE=0`` or
``PredictOptions(pipeline=False)`` turns it off: one case at a time, as before). At most one case
waits on each side, so about three volumes are in memory at once.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import socket
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from ..errors import InputError, LiversegError

log = logging.getLogger(__name__)

CLAIMS = ".claims"
CASE_ERRORS = (LiversegError, OSError, RuntimeError, ValueError, MemoryError)
T = TypeVar("T")


# ----------------------------------------------------------------------------- shares of the cases

def parse_part(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 1 <= K <= N."""
    k, slash, n = str(text).strip().partition("/")
    try:
        part, parts = int(k), int(n)
    except ValueError:
        part = parts = 0
    if not slash or parts < 1 or not 1 <= part <= parts:
        raise InputError(f"--part {text!r}: expected K/N with 1 <= K <= N, e.g. --part 3/8 "
                         "(the third of eight shares; Slurm: --part $((SLURM_ARRAY_TASK_ID+1))/N)")
    return part, parts


def select_part(cases: Sequence[T], part: int, parts: int, key: Callable[[T], str] = lambda c: c.case_id) -> list[T]:
    """Share ``part`` (1-based) of ``parts``: the cases sorted by id, case i going to share i % parts + 1.
    Deterministic whatever the input order, so every job of an array computes the same division."""
    ordered = sorted(cases, key=key)
    return [case for i, case in enumerate(ordered) if i % parts == part - 1]


# ----------------------------------------------------------------------------- claims

def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _process_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()[0]


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether ``pid`` runs on this host (not a zombie), and is the process that started at ``start``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    if _process_state(pid) in ("Z", "X"):
        return False
    current = _process_start(pid)
    return not (start and current and current != start)


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
        self.start = _process_start(self.pid)
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


# ----------------------------------------------------------------------------- the loop

def pipeline_enabled(option: bool = True) -> bool:
    return option and os.environ.get("LIVERSEG_PIPELINE", "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass
class CaseSteps:
    """How one case is done, in three steps: ``read(case)`` (reader thread), ``compute(case, read)``
    (the calling thread: the network), ``write(case, computed) -> Path`` (writer thread: outputs and
    the final rename). ``whole(case) -> Path`` does all three at once (no pipelining)."""

    read: Callable
    compute: Callable
    write: Callable
    whole: Callable


def run_cases(cases: Sequence, out_dir: Path, steps: CaseSteps, *, on_done: Callable, on_fail: Callable,
              on_skip: Callable, overwrite: bool = False, existing: Sequence[str] = (), pipeline: bool = True,
              progress: bool = True) -> None:
    """Do every case this worker can claim, reporting each: ``on_done(case, case_dir, seconds)``,
    ``on_fail(case, exception, seconds)`` (the others go on), ``on_skip(case)``.

    A case whose final folder exists (and was not there to be overwritten at the start) is skipped;
    so is a case another live worker holds. Those held by workers that died meanwhile are retried
    once at the end. ``pipeline``: read ahead and write behind in two threads (``LIVERSEG_PIPELINE=0``
    overrides); otherwise ``steps.whole`` does one case at a time.
    """
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    claims = Claims(out_dir)
    replace = set(existing) if overwrite else set()
    elsewhere: list = []
    bar = tqdm(total=len(cases), desc="cases", unit="case", disable=not progress)

    def complete(case_id: str) -> bool:
        return case_id not in replace and (out_dir / case_id).exists()

    def skip(case, why: str) -> None:
        log.info("%s: %s, skipped", case.case_id, why)
        on_skip(case)

    def take(case, retry: bool = False):
        """The case's claim, or None (reported) when it is done or being done elsewhere."""
        if complete(case.case_id) and not claims.claimed_elsewhere(case.case_id):
            skip(case, "done by another worker")
            return None
        claim = claims.acquire(case.case_id)
        if claim is None:
            if retry or claims.closed:
                skip(case, "being done by another worker")
            else:
                elsewhere.append(case)
            return None
        remove_leftovers(out_dir, case.case_id)
        if complete(case.case_id):
            claims.release(claim)
            skip(case, "done by another worker")
            return None
        return claim

    def write(case, claim, work: Callable[[], Path]) -> Path | None:
        try:
            if not claims.holds(claim):
                log.warning("%s: this worker's claim was taken over (heartbeat older than %.0f s?); "
                            "its result is dropped", case.case_id, claims.timeout_s)
                return None
            try:
                return work()
            except InputError:
                if complete(case.case_id):  # committed by another worker meanwhile: never a failure
                    log.warning("%s: predicted by two workers (claim taken over); the other's result is kept",
                                case.case_id)
                    return None
                raise
        finally:
            claims.release(claim)

    def record(case, case_dir: Path | None, started: float) -> None:
        if case_dir is None:
            skip(case, "done by another worker")
        else:
            on_done(case, case_dir, time.perf_counter() - started)

    def claimed_reads(items, retry: bool):
        """(case, claim, start time, read result or exception) of every case this worker claims."""
        for case in items:
            claim = take(case, retry)
            if claim is None:
                bar.update()
                continue
            started = time.perf_counter()
            try:
                yield case, claim, started, steps.read(case)
            except CASE_ERRORS as exc:
                yield case, claim, started, exc

    def sequential(items, retry: bool = False) -> None:
        for case in items:
            bar.set_postfix_str(case.case_id, refresh=False)
            claim = take(case, retry)
            if claim is not None:
                started = time.perf_counter()
                try:
                    record(case, write(case, claim, lambda: steps.whole(case)), started)
                except CASE_ERRORS as exc:
                    on_fail(case, exc, time.perf_counter() - started)
            bar.update()

    def finish(pending) -> None:
        case, started, future = pending
        try:
            record(case, future.result(), started)
        except CASE_ERRORS as exc:
            on_fail(case, exc, time.perf_counter() - started)
        bar.update()

    def pipelined(items, retry: bool = False) -> None:
        reads = _prefetch(claimed_reads(items, retry))
        pending = None  # (case, start, future) being written
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="liverseg-writer") as writer:
                for case, claim, started, read in reads:
                    bar.set_postfix_str(case.case_id, refresh=False)
                    submitted = None
                    try:
                        if isinstance(read, BaseException):
                            raise read
                        value = steps.compute(case, read)
                        del read
                        submitted = (case, started, writer.submit(write, case, claim,
                                                                  lambda c=case, v=value: steps.write(c, v)))
                        del value
                    except CASE_ERRORS as exc:
                        claims.release(claim)
                        on_fail(case, exc, time.perf_counter() - started)
                        bar.update()
                    except BaseException:
                        claims.release(claim)
                        raise
                    if pending is not None:
                        finish(pending)
                    pending = submitted
                if pending is not None:
                    finish(pending)
        finally:
            reads.close()

    try:
        run = pipelined if pipeline_enabled(pipeline) and len(cases) > 1 else sequential
        run(cases)
        if elsewhere:  # claims of workers that died meanwhile are stale by now
            retry, elsewhere[:] = list(elsewhere), []
            bar.total += len(retry)
            run(retry, retry=True)
    finally:
        bar.close()
        claims.close()


class _prefetch:
    """Iterate ``source`` in a background thread, one item ahead."""

    _END = object()

    def __init__(self, source):
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._source = source
        self._thread = threading.Thread(target=self._run, name="liverseg-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._source:
                while not self._stop.is_set():
                    try:
                        self._queue.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    break
            self._put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(("error", exc))

    def _put(self, entry) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        return self

    def __next__(self):
        kind, value = self._queue.get()
        if kind == "end":
            raise StopIteration
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        """Stop the reader; an item it read ahead keeps its claim until released here."""
        self._stop.set()
        while True:
            try:
                kind, value = self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=30)
        try:
            kind, value = self._queue.get_nowait()
        except queue.Empty:
            pass


__all__ = ["parse_part", "select_part", "Claims", "Claim", "pid_alive", "remove_leftovers", "pipeline_enabled",
           "CaseSteps", "run_cases"]


# ----------------------------------------------------------------------------- torchrun

def torchrun_context(device: str | None):
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): join the process group (gloo on CPU, NCCL with GPU
    ``LOCAL_RANK`` each) and return (``distributed.Context``, this rank's device); otherwise (None, device)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, device
    import torch

    from .. import distributed

    if device in (None, "auto"):
        wanted = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        wanted = torch.device(device)
    ctx, chosen = distributed.setup(wanted)
    return ctx, str(chosen)


def rank_summary(ctx, counts: dict, failed: Sequence[str], error: str | None) -> tuple[str | None, bool]:
    """After every rank's share: a barrier, then (rank 0's summary line or None elsewhere, whether any
    rank failed a case or stopped with an error)."""
    from .. import distributed

    everyone = distributed.gather(ctx, {"counts": counts, "failed": list(failed), "error": error})
    distributed.barrier(ctx)
    bad = any(item["failed"] or item["error"] for item in everyone)
    if not ctx.is_main:
        return None, bad
    total = {key: sum(item["counts"].get(key, 0) for item in everyone) for key in ("cases", "done", "skipped", "failed")}
    line = (f"liverseg predict: {total['cases']} case(s) on {ctx.world} processes: {total['done']} done, "
            f"{total['skipped']} skipped (done elsewhere), {total['failed']} failed")
    names = [name for item in everyone for name in item["failed"]]
    if names:
        line += f": {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}"
    errors = [f"rank {rank}: {item['error']}" for rank, item in enumerate(everyone) if item["error"]]
    if errors:
        line += "; stopped with an error on " + "; ".join(errors)
    return line, bad


__all__ += ["torchrun_context", "rank_summary"]
