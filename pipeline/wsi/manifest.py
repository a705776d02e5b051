"""Slide manifests (CSV): validated as a whole, every problem reported at once.

Columns: ``slide_id`` (unique), ``path`` (absolute or relative to the manifest's folder),
``label`` (optional), ``patient_id`` (default: slide_id), ``split`` (train/val/test, optional),
``mpp`` (optional resolution override, µm/px).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import ManifestError, UsageError
from pipeline.wsi.resolution import MPP_RANGE

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
REQUIRED = ("slide_id", "path")
KNOWN = (*REQUIRED, "label", "patient_id", "split", "mpp")


@dataclass(frozen=True)
class SlideEntry:
    """One row of a manifest."""

    slide_id: str
    path: Path
    label: str | None = None
    patient_id: str = ""
    split: str | None = None
    mpp: float | None = None


def _parse_row(row: dict[str, str], line: int, base: Path, problems: list[str]) -> SlideEntry:
    slide_id = (row.get("slide_id") or "").strip()
    raw_path = (row.get("path") or "").strip()
    where = f"line {line}" + (f" ({slide_id})" if slide_id else "")
    if not slide_id:
        problems.append(f"{where}: empty slide_id")
    if not raw_path:
        problems.append(f"{where}: empty path")
    path = Path(raw_path)
    if raw_path and not path.is_absolute():
        path = base / path
    if raw_path and not path.exists():
        problems.append(f"{where}: slide file not found: {path}")
    split = (row.get("split") or "").strip().lower() or None
    if split is not None and split not in SPLITS:
        problems.append(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    mpp = None
    raw_mpp = (row.get("mpp") or "").strip()
    if raw_mpp:
        try:
            mpp = float(raw_mpp)
            if not MPP_RANGE[0] <= mpp <= MPP_RANGE[1]:
                problems.append(f"{where}: mpp {mpp:g} outside {MPP_RANGE[0]}-{MPP_RANGE[1]} µm/px")
        except ValueError:
            problems.append(f"{where}: mpp {raw_mpp!r} is not a number")
    return SlideEntry(
        slide_id=slide_id,
        path=path,
        label=(row.get("label") or "").strip() or None,
        patient_id=(row.get("patient_id") or "").strip() or slide_id,
        split=split,
        mpp=mpp,
    )


def unsafe_id(slide_id: str) -> str | None:
    """Why ``slide_id`` cannot name a file under an output folder, or None when it can."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in slide_id):
        return "has control characters"
    if "/" in slide_id or "\\" in slide_id:
        return "has a path separator"
    if slide_id.startswith("."):
        return "starts with a dot"
    if slide_id != slide_id.strip():
        return "starts or ends with white space"
    if len(slide_id.encode()) > 200:
        return "is longer than 200 bytes"
    return None


def validate_entries(
    entries: Sequence[SlideEntry], labels: Iterable[str] | None = None
) -> list[str]:
    """Cross-row problems: duplicate ids, unknown labels, a patient in two splits."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    for entry in entries:
        seen[entry.slide_id] = seen.get(entry.slide_id, 0) + 1
        unsafe = unsafe_id(entry.slide_id)
        if unsafe and entry.slide_id:
            problems.append(f"slide_id {entry.slide_id!r} {unsafe}; ids name output files")
    problems += [f"slide_id {s!r} appears {n} times" for s, n in seen.items() if n > 1 and s]
    if labels is not None:
        allowed = set(labels)
        for entry in entries:
            if entry.label is not None and entry.label not in allowed:
                problems.append(
                    f"{entry.slide_id}: unknown label {entry.label!r} "
                    f"(expected one of {', '.join(sorted(allowed))}; a training config maps "
                    "labels to classes with data.classes, data.label_map or data.one_vs_rest)"
                )
    splits: dict[str, set[str]] = {}
    for entry in entries:
        if entry.split:
            splits.setdefault(entry.patient_id, set()).add(entry.split)
    for patient, found in sorted(splits.items()):
        if len(found) > 1:
            problems.append(f"patient {patient!r} is in several splits: {', '.join(sorted(found))}")
    return problems


def read_manifest(path: str | Path, labels: Iterable[str] | None = None) -> list[SlideEntry]:
    """Read and validate a manifest; raise ``ManifestError`` listing every problem."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ManifestError(path, [f"cannot read the file ({err})"]) from None
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ManifestError(
            path, [f"missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}"]
        )
    problems: list[str] = []
    unknown = [c for c in columns if c not in KNOWN]
    if unknown:
        log.warning(
            "%s: ignoring column(s) %s (known: %s)", path, ", ".join(unknown), ", ".join(KNOWN)
        )
    rows = [{(k or "").strip(): (v or "") for k, v in row.items()} for row in rows]
    entries = [_parse_row(row, i + 2, path.parent, problems) for i, row in enumerate(rows)]
    if not entries:
        problems.append("no slides listed")
    problems += validate_entries(entries, labels)
    if problems:
        raise ManifestError(path, problems)
    return entries


def entries_from_paths(paths: Sequence[str | Path], mpp: float | None = None) -> list[SlideEntry]:
    """Entries for slides given on the command line (id = file name without extension)."""
    entries = []
    for raw in paths:
        path = Path(raw)
        slide_id = path.name[: -len(path.suffix)] if path.suffix else path.name
        entries.append(SlideEntry(slide_id=slide_id, path=path, patient_id=slide_id, mpp=mpp))
    problems = validate_entries(entries)
    if problems:
        raise ManifestError("command line", problems)
    return entries


SLIDE_SUFFIXES = frozenset(
    {".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide"}
    | {".dcm", ".png", ".jpg", ".jpeg"}
)


def discover_slides(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; a folder stands for the slide files directly inside it."""
    out = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES)
        else:
            out.append(path)
    return out


def slide_entries(
    slides: Sequence[str | Path] = (),
    manifest: str | Path | None = None,
    mpp: float | None = None,
) -> list[SlideEntry]:
    """Entries from slide files/folders or from a manifest (exactly one); ``mpp`` applies to
    slides without their own."""
    if bool(manifest) == bool(slides):
        raise UsageError("give slide files or --manifest CSV (exactly one of the two)")
    if manifest:
        entries = read_manifest(manifest)
        if mpp is None:
            return entries
        return [e if e.mpp else dataclasses.replace(e, mpp=mpp) for e in entries]
    return entries_from_paths(discover_slides(slides), mpp=mpp)


def held_out(entries: list[SlideEntry], split: str | None) -> list[SlideEntry]:
    """Labelled entries of ``split`` (all labelled ones when the manifest has no splits)."""
    labelled = [e for e in entries if e.label]
    if split and any(e.split for e in labelled):
        return [e for e in labelled if e.split == split]
    return labelled
