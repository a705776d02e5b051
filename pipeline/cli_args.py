"""Argument types and the option groups several ``fascicle`` verbs share: values are checked
as they are parsed, so a bad one stops the command (exit 2) before any work."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def fields_of(args: argparse.Namespace, target) -> dict:
    """The command-line values named like the fields of a dataclass or a function's
    parameters (``target``)."""
    if dataclasses.is_dataclass(target):
        names = {f.name for f in dataclasses.fields(target)}
    else:
        names = set(inspect.signature(target).parameters)
    return {k: v for k, v in vars(args).items() if k in names}


def positive_float(text: str) -> float:
    if not float(text) > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return float(text)


def fraction(text: str) -> float:
    if not 0 <= float(text) <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return float(text)


def at_least(low: int) -> Callable[[str], int]:
    """An integer type refusing values below ``low``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value

    return parse


def batch_args(p: argparse.ArgumentParser, workers: int | None, what: str) -> None:
    """Options of the verbs that run over a batch of slides (predict's workers are decode
    threads, chosen from the cores by default; 0 decodes in line)."""
    p.add_argument("--out", type=Path, required=True, help="output folder")
    low = 0 if workers is None else 1
    p.add_argument(
        "--workers", type=at_least(low), default=workers, help=f"{what} ({workers or 'auto'})"
    )
    p.add_argument("--overwrite", action="store_true", help="redo finished slides")


def engine_args(p: argparse.ArgumentParser, workers: bool = False) -> None:
    """How tiles reach the model (``pipeline.tiles.engine``): device, precision, threads."""
    if workers:
        p.add_argument("--workers", type=at_least(0), help="tile-decoding threads (auto)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="autocast (auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32)",
    )
    p.add_argument("--threads", type=at_least(1), help="torch threads on CPU (all cores)")
    p.add_argument(
        "--decode",
        default="auto",
        choices=("auto", "cpu", "device"),
        help="where JPEG tiles are decoded (auto: on the GPU when there is one)",
    )


def call_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prior", help="named prior of the knowledge base (default: neutral)")
    p.add_argument("--coverage", type=fraction, help="conformal prediction sets, e.g. 0.9")


def slides_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("slides", nargs="*", type=Path, help="slide files or folders (or --manifest)")
    p.add_argument("--manifest", type=Path, help="CSV with slide_id,path[,mpp,...]")
    p.add_argument("--slide-mpp", type=positive_float, help="override the slides' µm/px")


def view_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", type=Path, help="a `fascicle predict --out` folder, or a slide file")
    p.add_argument("--result", type=Path, help="with a slide file: its prediction folder")
    p.add_argument("--slides", dest="slides_dir", type=Path, help="where the run's slides are now")
    p.add_argument("--slide", dest="slide_id", help="open at this slide id")
    p.add_argument("--port", type=at_least(0), default=0, help="port on 127.0.0.1 (0: a free one)")
    p.add_argument("--open", dest="open_browser", action="store_true", help="open a browser")


def closed_stdout() -> int:
    """After the reader of stdout went away: point stdout at /dev/null so the exit flush does
    not fail again, and end as a successful run (what was read was complete)."""
    import os
    import sys

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def report_rows(rows: Sequence[dict], summary: Path) -> int:
    """Print a batch's outcome; exit status 1 when any slide failed (0 when all are done)."""
    failed = [r for r in rows if r["status"] != "ok"]
    print(f"{len(rows) - len(failed)}/{len(rows)} slide(s) done; summary: {summary}")
    for row in failed:
        print(f"error: {row['error']}", file=sys.stderr)
    return 1 if failed else 0
