"""Reading IHC results: long or wide CSV, or a compact panel string.

>>> panel = parse_panel("desmin+ h-caldesmon+ SMA- EMA- PR- STAT6 focal")   # doctest: +SKIP

Marker names and aliases are normalised through the knowledge base (``hCaldesmon``,
``Caldesmon`` → ``h_caldesmon``). Results: positive / negative / focal / equivocal /
not performed with their usual synonyms (``+``, ``-``, ``pos``, ``neg``, ``patchy``, ``na``…),
a bare percentage of positive tumour cells, or an H-score. For loss markers (H3K27me3) the
result is lost / retained (a stain reported "negative" means lost). Unknown markers are kept
and reported as warnings; malformed values are errors naming the row or token.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.errors import UsageError
from pipeline.ihc.knowledge import KnowledgeBase, load_knowledge

STATES = ("positive", "negative", "focal", "equivocal", "not_performed")
SYNONYMS = {
    "positive": (
        "positive",
        "pos",
        "+",
        "++",
        "+++",
        "p",
        "yes",
        "diffuse",
        "diffusely positive",
        "strong",
        "reactive",
        "present",
        "expressed",
        "1+",
        "2+",
        "3+",
    ),
    "negative": (
        "negative",
        "neg",
        "-",
        "−",
        "–",
        "n",
        "no",
        "absent",
        "nonreactive",
        "non-reactive",
        "not expressed",
        "0",
    ),
    "focal": (
        "focal",
        "focally positive",
        "patchy",
        "weak",
        "partial",
        "scattered",
        "(+)",
        "multifocal",
        "f",
    ),
    "equivocal": (
        "equivocal",
        "indeterminate",
        "?",
        "±",
        "+/-",
        "inconclusive",
        "unclear",
        "non-diagnostic",
        "nondiagnostic",
        "not evaluable",
        "ne",
    ),
    "not_performed": (
        "not_performed",
        "not performed",
        "na",
        "n/a",
        "nd",
        "not done",
        "pending",
        "np",
        "",
    ),
}
LOSS_SYNONYMS = {
    "positive": ("lost", "loss", "complete loss", "deficient"),
    "negative": ("retained", "intact", "preserved", "expressed"),
    "focal": ("partial loss", "mosaic", "mosaic loss", "partially lost"),
}


def _norm_result(text: str) -> str:
    """Result words compare case- and spacing-insensitively; signs stay as they are."""
    return re.sub(r"[\s_]+", " ", text.strip().lower())


_LOOKUP = {_norm_result(w): s for s, words in SYNONYMS.items() for w in words}
_LOSS_LOOKUP = {_norm_result(w): s for s, words in LOSS_SYNONYMS.items() for w in words}
_SUFFIX = re.compile(r"^(?P<name>.+?)(?P<sign>\+\+\+|\+\+|\(\+\)|\(-\)|\+/-|\+|-|−|–|±)$")
_PERCENT = re.compile(r"^(?P<value>\d+(?:\.\d+)?)\s*%$")
_HSCORE = re.compile(r"^(?:h|hscore|h-score)\s*[=:]?\s*(?P<value>\d+(?:\.\d+)?)$", re.I)


class IHCError(UsageError):
    """Malformed IHC input; the message names the row or token and what is wrong."""


@dataclass(frozen=True)
class MarkerResult:
    """One marker's result, normalised. ``state`` is from the marker's point of view: for a
    loss marker (H3K27me3_loss) ``positive`` means the stain is lost."""

    marker: str
    state: str
    raw: str = ""
    percent: float | None = None
    hscore: float | None = None
    where: str = ""


@dataclass
class Panel:
    """A slide's IHC results plus what could not be used (reported, never dropped)."""

    results: dict[str, MarkerResult] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def performed(self) -> dict[str, MarkerResult]:
        return {k: r for k, r in self.results.items() if r.state != "not_performed"}

    def add(self, result: MarkerResult) -> None:
        previous = self.results.get(result.marker)
        if previous and previous.state != result.state and previous.state != "not_performed":
            raise IHCError(
                f"{result.where}: {result.marker} given twice with different results "
                f"({previous.raw or previous.state} at {previous.where}, "
                f"{result.raw or result.state})"
            )
        self.results[result.marker] = result

    def describe(self) -> str:
        """Compact panel string, e.g. ``desmin+ SMA- STAT6 focal``."""
        signs = {"positive": "+", "negative": "-"}
        parts = []
        for r in self.performed.values():
            parts.append(
                f"{r.marker}{signs[r.state]}" if r.state in signs else f"{r.marker} {r.state}"
            )
        return " ".join(parts)


def _state_from_numbers(
    percent: float | None, hscore: float | None, kb: KnowledgeBase
) -> str | None:
    s = kb.scoring
    if hscore is not None:
        return (
            "positive"
            if hscore >= s.positive_hscore
            else "focal"
            if hscore >= s.focal_hscore
            else "negative"
        )
    if percent is not None:
        return (
            "positive"
            if percent >= s.positive_percent
            else "focal"
            if percent >= s.focal_percent
            else "negative"
        )
    return None


def interpret(
    marker: str,
    value: str,
    kb: KnowledgeBase,
    where: str,
    percent: str = "",
    hscore: str = "",
) -> MarkerResult:
    """Normalise one result (raises ``IHCError`` with ``where`` for a malformed value)."""
    raw = (value or "").strip()
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

    pct = number(percent, "percent", 100)
    hs = number(hscore, "H-score", 300)
    state = None
    key = _norm_result(raw)
    if loss and key in _LOSS_LOOKUP:
        state = _LOSS_LOOKUP[key]
    elif key in _LOOKUP:
        state = _LOOKUP[key]
        if loss and state in ("positive", "negative"):  # stain language: negative stain = lost
            state = "negative" if state == "positive" else "positive"
    elif (m := _PERCENT.match(raw)) or re.fullmatch(r"\d+(\.\d+)?", raw):
        pct = number(m.group("value") if m else raw, "percent", 100)
    elif m := _HSCORE.match(raw):
        hs = number(m.group("value"), "H-score", 300)
    else:
        choices = "lost/retained" if loss else "positive/negative/focal/equivocal/not_performed"
        raise IHCError(
            f"{where}: result {raw!r} for {marker} is not one of {choices} or a percentage"
        )
    if state is None or (state == "not_performed" and (pct is not None or hs is not None)):
        state = _state_from_numbers(pct, hs, kb) or "not_performed"
    if loss and state in ("positive", "negative") and pct is not None and not raw:
        state = "positive" if pct < kb.scoring.focal_percent else "negative"  # % of cells retaining
    return MarkerResult(marker, state, raw, pct, hs, where)


def _resolve(name: str, kb: KnowledgeBase, panel: Panel, where: str) -> str | None:
    key = kb.resolve_marker(name)
    if key is None:
        panel.unknown.append(name)
        panel.warnings.append(
            f"{where}: unknown marker {name!r} ignored "
            f"(not in {kb.path.name}; add it or an alias there)"
        )
    return key


def parse_panel(text: str, kb: KnowledgeBase | None = None) -> Panel:
    """Parse a compact panel: ``"desmin+ h-caldesmon+ SMA- EMA- STAT6 focal, PR 30%"``."""
    kb = kb or load_knowledge()
    panel = Panel()
    for item in re.split(r"[,;\n]+", text):
        pending: list[str] = []
        for token in item.split():
            if _is_result(token):
                if not pending:
                    raise IHCError(f"panel: result {token!r} has no marker before it")
                _emit(" ".join(pending), token, kb, panel)
                pending = []
            elif (m := _SUFFIX.match(token)) and m.group("name") and not _is_result(token):
                name = " ".join([*pending, m.group("name")])
                _emit(name, m.group("sign"), kb, panel)
                pending = []
            else:
                pending.append(token)
        if pending:
            name = " ".join(pending)
            raise IHCError(
                f"panel: no result for {name!r}; write e.g. '{name}+', '{name}-' or '{name} focal'"
            )
    return panel


def _is_result(token: str) -> bool:
    key = _norm_result(token)
    return (
        key in _LOOKUP
        or key in _LOSS_LOOKUP
        or bool(_PERCENT.match(token))
        or bool(_HSCORE.match(token))
    ) and key != ""


def _emit(name: str, value: str, kb: KnowledgeBase, panel: Panel) -> None:
    where = f"panel '{name} {value}'"
    key = _resolve(name, kb, panel, where)
    if key is not None:
        panel.add(interpret(key, value, kb, where))


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
        key = _resolve(marker_name, kb, panel, where)
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
        _emit(name, value, kb, panel)
    return panel
