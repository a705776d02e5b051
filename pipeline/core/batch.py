"""Run one job per slide over many slides: worker processes, progress bar, errors isolated.

A job is a picklable function ``job(entry, **options) -> dict`` returning one summary row;
an entry is anything with ``slide_id`` and ``path`` (a manifest's ``SlideEntry``). A failing
slide becomes an ``error`` row with the reason; the others go on. ``on_row`` sees each row
in the main process as soon as it is done (to write a result, say), in completion order.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import multiprocessing
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from typing import Protocol

from pipeline.core.atomic import write_text
from pipeline.core.errors import FascicleError, SlideBusyError

log = logging.getLogger(__name__)

Job = Callable[..., dict]


class SlideEntry(Protocol):
    slide_id: str
    path: Path


def _guarded(job: Job, entry: SlideEntry, **options: object) -> dict:
    """Run ``job``; turn any failure into an error row (the batch must go on)."""
    try:
        return {"slide_id": entry.slide_id, "status": "ok", **job(entry, **options)}
    except SlideBusyError as err:
        return {"slide_id": entry.slide_id, "status": "not_done", "error": str(err)}
    except FascicleError as err:
        return {"slide_id": entry.slide_id, "status": "error", "error": str(err)}
    except Exception as err:  # an unexpected bug must not sink the other slides
        log.debug("%s failed:\n%s", entry.slide_id, traceback.format_exc())
        return {
            "slide_id": entry.slide_id,
            "status": "error",
            "error": f"{entry.path}: internal error {type(err).__name__}: {err} "
            "(please report it with the slide's format)",
        }


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _one_thread_per_worker() -> Iterator[None]:
    """Worker processes inherit single-threaded BLAS/OpenMP: N workers on N cores, not N²."""
    saved = {k: os.environ.get(k) for k in THREAD_VARS}
    os.environ.update({k: "1" for k in THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


WORKER_DIED = (
    "{path}: the worker process died while this slide was in progress (killed, or out of "
    "memory); rerun, with fewer --workers if memory is short"
)


def _die_with_parent() -> None:
    """Pool initializer: on Linux, a worker is killed when the main process dies."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _run_pool(job, entries, workers, done, last: bool, options) -> list:
    """One pool over ``entries``; returns those caught by a worker's death (to retry), or
    reports them as errors when ``last``."""
    context = multiprocessing.get_context("spawn")
    lost = []
    with (
        _one_thread_per_worker(),
        ProcessPoolExecutor(
            min(workers, len(entries)), mp_context=context, initializer=_die_with_parent
        ) as pool,
    ):
        futures = {pool.submit(partial(_guarded, job, e, **options)): e for e in entries}
        for future in as_completed(futures):
            entry = futures[future]
            try:
                done(entry, future.result())
            except BrokenProcessPool:
                if last:
                    error = WORKER_DIED.format(path=entry.path)
                    done(entry, {"slide_id": entry.slide_id, "status": "error", "error": error})
                else:
                    lost.append(entry)
    if lost:
        log.warning("a worker process died; retrying %d slide(s) in a new pool", len(lost))
    return lost


def run_slides(
    job: Job,
    entries: Sequence[SlideEntry],
    workers: int = 1,
    progress: bool = True,
    desc: str = "slides",
    on_row: Callable[[SlideEntry, dict], None] | None = None,
    **options: object,
) -> list[dict]:
    """Apply ``job`` to every entry; rows come back in the order of ``entries``."""

    def done(entry: SlideEntry, row: dict) -> None:
        rows[entry.slide_id] = row
        if on_row is not None:
            on_row(entry, row)
        bar.update()

    from tqdm import tqdm

    rows: dict[str, dict] = {}
    bar = tqdm(total=len(entries), desc=desc, unit="slide", disable=not progress)
    try:
        if workers <= 1 or len(entries) <= 1:
            for entry in entries:
                done(entry, _guarded(job, entry, **options))
        else:
            lost = _run_pool(job, entries, workers, done, False, options)
            for entry in lost:  # alone now: a slide that kills its worker harms no other
                _run_pool(job, [entry], 1, done, True, options)
    finally:
        bar.close()
    return [rows[e.slide_id] for e in entries]


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """CSV with ``columns`` (keys missing from a row are left empty, extra keys ignored)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore"
    )
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_summary(path: str | Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Write ``rows`` as CSV (atomically) with ``columns`` first, extra keys after."""
    extra = sorted({k for row in rows for k in row} - set(columns))
    cells = [{k: _cell(v) for k, v in row.items()} for row in rows]
    write_text(path, csv_text(cells, [*columns, *extra]))


def _cell(value: object) -> object:
    return f"{value:.6g}" if isinstance(value, float) else value
