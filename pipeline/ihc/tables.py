"""IHC tables: long form (``slide_id, marker, result[, percent, intensity, clone, hscore]``)
or wide form (``slide_id`` + a column per marker), read into one panel per slide. Cells are
read in the same report language as panels (``pipeline.ihc.report``); every problem of a
table is reported at once, naming its line. A panel given as ``@report.txt`` is read from
the report file."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from pathlib import Path

from pipeline.ihc.knowledge import KnowledgeBase, load_knowledge
from pipeline.ihc.report import (
    IHCError,
    Reading,
    normalise_text,
    read_result,
    split_fragments,
    tokens,
)
from pipeline.ihc.results import MarkerResult, Panel, from_reading


def resolve_name(name: str, kb: KnowledgeBase, panel: Panel, where: str) -> str | None:
    """The marker key for a name; a noted or unknown name is recorded on ``panel``."""
    key = kb.resolve_marker(name)
    if key is None:
        noted = kb.resolve_noted(name)
        if noted is not None:
            panel.noted.append(f"{noted} ({where}): {kb.noted[noted]}")
            return None
        panel.unknown.append(name)
        panel.warnings.append(
            f"{where}: unknown marker {name!r} ignored "
            f"(not in {kb.path.name}; add it or an alias there)"
        )
    return key


def interpret(
    marker: str,
    value: str,
    kb: KnowledgeBase,
    where: str,
    percent: str = "",
    hscore: str = "",
) -> MarkerResult:
    """Normalise one table cell's result (raises ``IHCError`` with ``where`` when it cannot
    be read); the same report language as panels, plus percent / H-score columns."""
    raw = normalise_text(value or "").strip()
    loss = kb.markers[marker].loss_marker

    def number(text: str, name: str, hi: float) -> float | None:
        text = (text or "").strip().rstrip("%")
        if not text:
            return None
        try:
            v = float(text)
        except ValueError:
            raise IHCError(f"{where}: {name} {text!r} for {marker} is not a number") from None
        if not 0 <= v <= hi:
            raise IHCError(f"{where}: {name} {v:g} for {marker} is outside 0-{hi:g}")
        return v

    pct, hs = number(percent, "percent", 100), number(hscore, "H-score", 300)
    if re.fullmatch(r"\d+(\.\d+)?", raw):  # a bare number is a percentage
        raw, pct = "", number(raw, "percent", 100)
    if not raw and pct is None and hs is None:
        return MarkerResult(marker, "not_performed", raw, where=where)
    reading = Reading("")
    if raw:
        try:
            words = [w for fragment in split_fragments(raw) for w in tokens(fragment)]
            reading = read_result(words, loss, where)  # the whole cell: "positive, but weak"
        except IHCError:
            choices = "lost/retained" if loss else "positive/negative/focal/equivocal/not done"
            raise IHCError(
                f"{where}: result {raw!r} for {marker} is not one of {choices} or a percentage"
            ) from None
    reading.percent = reading.percent if reading.percent is not None else pct
    reading.hscore = reading.hscore if reading.hscore is not None else hs
    if reading.state == "not_performed":
        return MarkerResult(marker, "not_performed", raw, where=where)
    return from_reading(marker, reading, kb, where, raw)


def read_ihc_csv(path: str | Path, kb: KnowledgeBase | None = None) -> dict[str, Panel]:
    """Panels per slide from a long (slide_id, marker, result[, percent, intensity, clone,
    hscore]) or wide (slide_id + one column per marker) CSV. All errors are raised together."""
    kb = kb or load_knowledge()
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            raw = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise IHCError(f"{path}: cannot read the IHC table ({err})") from None
    extra = [i + 2 for i, r in enumerate(raw) if None in r]
    if extra:
        lines = ", ".join(map(str, extra[:10]))
        raise IHCError(
            f"{path}: line(s) {lines} have more cells than the header ({len(columns)}); "
            "quote values that contain commas"
        )
    rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in raw]
    if "slide_id" not in columns:
        raise IHCError(f"{path}: needs a slide_id column; found {', '.join(columns) or 'none'}")
    panels: dict[str, Panel] = {}
    errors: list[str] = []
    long_form = "marker" in columns
    if long_form and not {"result", "percent", "hscore"} & set(columns):
        raise IHCError(
            f"{path}: a long-form IHC table (it has a marker column) needs a result column "
            "(or percent / hscore); found " + ", ".join(columns)
        )

    def add(slide_id: str, marker_name: str, value: str, where: str, **numbers: str) -> None:
        panel = panels.setdefault(slide_id, Panel())
        numbers_text = " ".join(f"{k} {v}" for k, v in numbers.items() if v)
        panel.raw += ("; " if panel.raw else "") + f"{marker_name}: {value} {numbers_text}".strip()
        key = resolve_name(marker_name, kb, panel, where)
        if key is None:
            return
        try:
            panel.add(interpret(key, value, kb, where, **numbers))
        except IHCError as err:
            errors.append(str(err))

    for line, row in enumerate(rows, start=2):
        slide_id = row.get("slide_id", "")
        where = f"{path.name} line {line}"
        if not slide_id:
            errors.append(f"{where}: empty slide_id")
            continue
        if long_form:
            if not row.get("marker"):
                errors.append(f"{where}: empty marker")
                continue
            add(
                slide_id,
                row["marker"],
                row.get("result", ""),
                where,
                percent=row.get("percent", ""),
                hscore=row.get("hscore", ""),
            )
        else:
            for column in columns:
                if column != "slide_id" and row.get(column, "") != "":
                    add(slide_id, column, row[column], f"{where} column {column!r}")
    if errors:
        listing = "\n".join(f"  - {e}" for e in errors)
        raise IHCError(f"{path}: {len(errors)} problem(s) in the IHC table:\n{listing}")
    return panels


def panel_from_pairs(pairs: Iterable[tuple[str, str]], kb: KnowledgeBase | None = None) -> Panel:
    """A panel from (marker name, result) pairs, as a notebook might hold them."""
    kb = kb or load_knowledge()
    panel = Panel()
    for name, value in pairs:
        where = f"pair ({name!r}, {value!r})"
        key = resolve_name(name, kb, panel, where)
        if key is not None:
            panel.add(interpret(key, value, kb, where))
    return panel


def panel_text(value: str) -> str:
    """A panel as given on the command line: the text itself, or ``@path`` for a report file
    (UTF-8; the report's IHC section as written)."""
    if not value.startswith("@"):
        return value
    path = Path(value[1:])
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise IHCError(
            f"{path}: cannot read the panel file ({exc.__class__.__name__}); give a UTF-8 text "
            "file with the report's IHC results, or the results themselves"
        ) from None
