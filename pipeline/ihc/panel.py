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

import re
from dataclasses import dataclass, field
from itertools import pairwise

from pipeline.ihc.knowledge import KnowledgeBase, load_knowledge
from pipeline.ihc.report import (
    IHCError,
    Reading,
    is_result_word,
    read_result,
    split_clauses,
    split_fragments,
    tokens,
)
from pipeline.ihc.vocabulary import COMPARTMENTS, NOT_PERFORMED, QUALIFIERS, STOP_WORDS

STATES = ("positive", "negative", "focal", "equivocal", "not_performed")


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
    qualifiers: tuple[str, ...] = ()
    """Extent, intensity and compartment words as written (recorded, not scored)."""


@dataclass
class Panel:
    """A slide's IHC results plus what could not be used (reported, never dropped)."""

    results: dict[str, MarkerResult] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    noted: list[str] = field(default_factory=list)
    """Markers read and recorded that the likelihood table does not hold (Ki-67...)."""
    raw: str = ""

    @property
    def counts(self) -> tuple[int, int]:
        """(markers used, markers given): given counts every marker read, noted, not
        performed or unknown."""
        used = len(self.performed)
        return used, len(self.results) + len(self.noted) + len(self.unknown)

    def usage(self) -> str:
        used, given = self.counts
        return f"{used} of {given} markers used"

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


def parse_panel(text: str, kb: KnowledgeBase | None = None) -> Panel:
    """Parse a panel as reports write it (see ``pipeline.ihc.report``): ``"desmin+
    h-caldesmon+ SMA- STAT6 focal"``, ``"Desmin: positive (diffuse); SMA (-); PR 80%"``,
    ``"positive for desmin and h-caldesmon, negative for EMA"``."""
    kb = kb or load_knowledge()
    panel = Panel(raw=text)
    state = _State()
    for clause in split_clauses(text):  # a result never crosses a ";" or a sentence end
        for fragment in split_fragments(clause):
            _read_fragment(fragment, kb, panel, state)
        for kind, key, where in state.waiting:
            if kind == "kb":
                raise IHCError(
                    f"{where}: no result for {kb.markers[key].display!r}; write e.g. "
                    f"'{kb.markers[key].display}+' or '{kb.markers[key].display} negative'"
                )
        state.waiting.clear()
        state.carry = None
    return panel


def _match(toks: list[str], i: int, kb: KnowledgeBase) -> tuple[str, str, int] | None:
    """The longest marker name starting at token ``i``: (kb | noted, key, tokens used)."""
    if is_result_word(toks[i], loss=True) or not re.sub(r"\W", "", toks[i]):
        return None  # a marker name never starts with a sign or a result word
    for n in range(min(6, len(toks) - i), 0, -1):
        name = " ".join(toks[i : i + n]).rstrip(":")
        if any(is_result_word(t, loss=True) for t in toks[i + 1 : i + n]):
            continue  # "SMA -", "H3K27me3 loss": the later words are the result
        if (key := kb.resolve_marker(name)) is not None:
            return "kb", key, n
        if (noted := kb.resolve_noted(name)) is not None:
            return "noted", noted, n
    return None


EXPRESSING = frozenset(["expressing", "expresses", "express", "expressed"])
"""A verb that, before markers, says they are positive ("tumour cells expressing CD20")."""


@dataclass
class _State:
    """What one fragment leaves to the next."""

    carry: Reading | None = None
    """"positive for A, B and C": one result for several markers."""
    waiting: list = field(default_factory=list)
    """Markers whose result comes later ("desmin and SMA positive")."""
    last: tuple | None = None
    """(key, words, fragment) of the last marker read, for a continuation."""


def _read_fragment(fragment: str, kb: KnowledgeBase, panel: Panel, state: _State) -> None:
    carry, waiting = state.carry, state.waiting
    toks = tokens(fragment)
    if any(t.lower() == "neither" for t in toks):  # "neither desmin nor SMA positive"
        raise IHCError(
            f"panel fragment {fragment!r}: 'neither ... nor' is not read (a sign after it would "
            "flip); write each result, e.g. 'desmin negative, SMA negative'"
        )
    items: list[list] = []  # [kind, key, words]
    lead: list[str] = []
    i = 0
    while i < len(toks):
        found = _match(toks, i, kb)
        if found is not None and not (items and is_result_word(toks[i]) and found[2] == 1):
            items.append([found[0], found[1], []])
            i += found[2]
            continue
        word = toks[i]
        if items and _starts_unknown(word, items[-1][2]):  # "desmin+ FOO7 positive"
            items.append(["unknown", word, []])
        else:
            (items[-1][2] if items else lead).append(word)
        i += 1
    where = f"panel fragment {fragment!r}"
    lead_words = [w for w in lead if w.lower().strip(":") not in STOP_WORDS]
    if lead and lead[-1].lower() in ("for", "to"):  # "positive for ...", "reactive to ..."
        state.carry = carry = read_result(lead[:-1], False, where)
    elif lead and lead[-1].endswith(":") and items and all(is_result_word(w) for w in lead):
        state.carry = carry = read_result(lead, False, where)  # "Negative: EMA, PR"
    elif lead and lead[-1].lower() in EXPRESSING:  # "lymphoma (not) expressing CD20, ..."
        negated = len(lead) > 1 and lead[-2].lower() in ("not", "no", "without")
        state.carry = carry = read_result(["negative" if negated else "positive"], False, where)
    elif lead_words and not items and lead_words[0].lower() == "clone":
        return  # "desmin (+), clone D33": the antibody clone, recorded with the fragment
    elif lead_words and not items and waiting and all(is_result_word(w) for w in lead_words):
        reading = read_result(lead_words, False, where)  # "CD31 membranous staining, diffuse"
        for w_kind, w_key, _ in waiting:
            _add(w_kind, w_key, reading, fragment, kb, panel)
        waiting.clear()
        return
    elif lead_words and not items and state.last and all(is_result_word(w) for w in lead_words):
        key, words, first = state.last  # "EMA negative, focally positive": one result
        panel.results.pop(key, None)
        joined = f"panel fragment {first + ', ' + fragment!r}"
        reading = read_result([*words, *lead_words], kb.markers[key].loss_marker, joined)
        _add("kb", key, reading, f"{first}, {fragment}", kb, panel)
        return
    elif lead_words and items and all(_result_or_compartment(w) for w in lead_words):
        if any(not re.search(r"[a-z]", w.lower()) for w in lead_words):
            raise IHCError(f"{where}: result {' '.join(lead_words)!r} has no marker before it")
        items[0][2][:0] = lead_words  # "rare GFAP positive areas", "strong desmin staining"
    elif lead_words and not items:
        panel.unknown.append(fragment)
        panel.warnings.append(f"{where}: could not read it (no known marker); it was not used")
        if waiting and any(is_result_word(w) for w in lead_words):  # "..., nestin positive"
            reading = read_result(lead_words[1:] or lead_words, False, where)
            for w_kind, w_key, _ in waiting:
                _add(w_kind, w_key, reading, fragment, kb, panel)
            waiting.clear()
        return
    _negate_after_not(items)
    for kind, key, words in items:
        if kind == "unknown":
            text = " ".join([key, *words])
            panel.unknown.append(text)
            panel.warnings.append(
                f"{where}: unknown marker in {text!r} ignored (not in {kb.path.name}; "
                "add it or an alias there)"
            )
            continue
        if all(_filler(w) for w in words):
            if carry is not None:
                _add(kind, key, carry, fragment, kb, panel)
            else:
                waiting.append((kind, key, where))
            continue
        said = " ".join(words).lower()
        if (
            not any(is_result_word(w, loss=True) for w in words)
            and not re.search(r"\d\s*%|h-?score|allred|\bh\s*[:=]", said)
            and not any(phrase in said for phrase in NOT_PERFORMED if " " in phrase)
        ):
            unread = [w for w in words if not _filler(w) and w.lower() not in QUALIFIERS]
            if unread and kind == "kb":  # never borrow the next marker's result past them
                raise IHCError(f"{where}: no result (could not read: {' '.join(unread)})")
            waiting.append((kind, key, where))  # "CD31 membranous staining, diffuse"
            continue
        try:
            reading = read_result(words, kind == "kb" and kb.markers[key].loss_marker, where)
        except IHCError:
            if kind == "noted":
                panel.noted.append(f"{key} ({where}): result not read")
                continue
            raise
        for w_kind, w_key, _ in waiting:  # "desmin and SMA positive"
            _add(w_kind, w_key, reading, fragment, kb, panel)
        waiting.clear()
        _add(kind, key, reading, fragment, kb, panel)
        state.carry = carry = None
        state.last = (key, words, fragment) if kind == "kb" else None


def _filler(word: str) -> bool:
    """A word that says nothing about the result: a filler word, or a parenthetical
    without a result in it ("EBV-encoded RNA (EBER)", a clone)."""
    if word.lower().strip(":") in STOP_WORDS:
        return True
    inner = word[1:-1].split() if word.startswith("(") and word.endswith(")") else None
    return inner is not None and not any(is_result_word(w, loss=True) for w in inner)


def _result_or_compartment(word: str) -> bool:
    """A lead word that belongs to the result of the marker after it ("diffuse loss of
    nuclear INI1 expression", "strong desmin staining")."""
    return is_result_word(word, loss=True) or word.lower() in COMPARTMENTS


def _negate_after_not(items: list[list]) -> None:
    """In "A and B but not (to / for) C" the "not" belongs to C, which is negative, while B
    keeps the shared result ("immunoreactive to HMB-45 and S-100 but not to EMA")."""
    for this, after in pairwise(items):
        tail = [w.lower() for w in this[2][-2:]]
        cut = 2 if tail in (["not", "to"], ["not", "for"]) else 1 if tail[-1:] == ["not"] else 0
        if cut and not any(is_result_word(w, loss=True) for w in after[2]):
            del this[2][-cut:]
            after[2][:0] = ["negative"]


def _starts_unknown(word: str, previous: list[str]) -> bool:
    """A word after a complete result that is no result, qualifier or filler word: the
    name of a marker the knowledge base does not know."""
    if not any(is_result_word(w, loss=True) for w in previous) or word.startswith("("):
        return False
    if previous[-1].lower() == "clone" or (
        re.search(r"\d", word) and not re.search(r"[a-z]", word.lower())
    ):
        return False  # a clone name, or a number that belongs to the result
    t = word.lower().strip(":,.")
    return not (is_result_word(word, loss=True) or t in STOP_WORDS or t in QUALIFIERS)


def _add(kind: str, key: str, reading: Reading, fragment: str, kb, panel: Panel) -> None:
    where = f"panel fragment {fragment!r}"
    if kind == "noted":
        panel.noted.append(f"{key} {reading.state or 'read'} ({where}): {kb.noted[key]}")
        return
    panel.add(from_reading(key, reading, kb, where, fragment))


def from_reading(key: str, reading: Reading, kb, where: str, raw: str) -> MarkerResult:
    """A marker's result from what its words say (numbers decide when given)."""
    loss = kb.markers[key].loss_marker
    state = reading.state
    numeric = _state_from_numbers(reading.percent, reading.hscore, kb)
    if reading.allred is not None:
        numeric = (
            "negative" if reading.allred <= 2 else "focal" if reading.allred <= 4 else "positive"
        )
    if numeric is not None and not reading.loss_words:
        if state == "negative" and numeric != "negative":
            raise IHCError(f"{where}: 'negative' with {raw!r} numbers that say {numeric}")
        if state in ("", "positive", "focal"):
            state = numeric
    if loss and not reading.loss_words and state in ("positive", "negative"):
        state = "negative" if state == "positive" else "positive"  # stain present = retained
    if loss and reading.percent is not None and not reading.loss_words and not reading.state:
        state = "positive" if reading.percent < kb.scoring.focal_percent else "negative"
    return MarkerResult(
        key, state, raw, reading.percent, reading.hscore, where, tuple(reading.qualifiers)
    )
