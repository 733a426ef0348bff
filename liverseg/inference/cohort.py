"""Cohorts: a share of the cases per job (``--part K/N``, torchrun ranks), and a pipelined loop (read
ahead, write behind) inside one process that takes each case under a claim (``claims.py``: between
the workers that write into one ``-o`` folder).

Pipelining: a reader thread claims and reads the next case while the network runs on the current
one, and a writer thread writes and commits the previous one (``LIVERSEG_PIPELINE=0`` or
``PredictOptions(pipeline=False)`` turns it off: one case at a time, as before). At most one case
waits on each side, so about three volumes are in memory at once.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from ..errors import InputError, LiversegError
from .claims import Claims, remove_leftovers

log = logging.getLogger(__name__)

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


__all__ = ["parse_part", "select_part", "pipeline_enabled", "CaseSteps", "run_cases"]


# ----------------------------------------------------------------------------- torchrun

def torchrun_context(device: str | None):
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): join the process group (gloo on CPU, NCCL with GPU
    ``LOCAL_RANK`` each) and return (``distributed.Context``, this rank's device); otherwise (None, device)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, device
    import torch

    from .. import distributed  # heavy (torch.distributed): only torchrun jobs get here

    if device in (None, "auto"):
        wanted = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        wanted = torch.device(device)
    ctx, chosen = distributed.setup(wanted)
    return ctx, str(chosen)


def rank_summary(ctx, counts: dict, failed: Sequence[str], error: str | None) -> tuple[str | None, bool]:
    """After every rank's share: a barrier, then (rank 0's summary line or None elsewhere, whether any
    rank failed a case or stopped with an error)."""
    from .. import distributed  # heavy (torch.distributed): only torchrun jobs get here

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
