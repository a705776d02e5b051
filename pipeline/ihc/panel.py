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
from dataclasses import dataclass, field, replace

from pipeline.ihc.knowledge import KnowledgeBase, load_knowledge
from pipeline.ihc.report import (
    IHCError,
    Reading,
    is_result_word,
    normalise_text,
    read_result,
    split_clauses,
    split_fragments,
    split_parts,
    tokens,
)
from pipeline.ihc.results import Panel, from_reading
from pipeline.ihc.sentence import (
    BULLET,
    EXPRESSING,
    is_filler,
    join_leading_results,
    match_marker,
    negate_after_not,
    neither_nor,
    nested_result,
    result_or_compartment,
    split_conclusion,
    split_slashes,
    starts_unknown,
    suspended_hyphens,
)
from pipeline.ihc.vocabulary import (
    CONTEXT,
    MOLECULAR,
    NEGATING,
    NOT_PERFORMED,
    QUALIFIERS,
)


def parse_panel(text: str, kb: KnowledgeBase | None = None) -> Panel:
    """Parse a panel as reports write it (see ``pipeline.ihc.report``): ``"desmin+
    h-caldesmon+ SMA- STAT6 focal"``, ``"Desmin: positive (diffuse); SMA (-); PR 80%"``,
    ``"positive for desmin and h-caldesmon, negative for EMA"``."""
    kb = kb or load_knowledge()
    panel = Panel(raw=text)
    state = _State(graded=bool(re.search(r"\+\+", text)))
    text = BULLET.sub("", normalise_text(text))
    for clause in split_clauses(text):  # a result never crosses a ";" or a sentence end
        clause, conclusion = split_conclusion(clause, kb)
        if conclusion:
            panel.warnings.append(
                f"not read as a result: the report's conclusion {conclusion!r} (the "
                "differential uses the stains alone)"
            )
        parts = split_parts(suspended_hyphens(clause))
        pieces = [(n, fragment) for n, part in enumerate(parts) for fragment in part]
        for part, fragment in join_leading_results(pieces):
            if part != state.part:
                state.part, state.tentative = part, []
            _read_fragment(fragment, kb, panel, state)
        for kind, key, own in state.waiting:
            if key in state.named:  # "SS18 rearrangement" and nothing after it: present
                _add(kind, key, Reading("positive", molecular=True), own, kb, panel)
            elif kind == "kb":
                raise IHCError(
                    f"panel fragment {own!r}: no result for {kb.markers[key].display!r}; write "
                    f"e.g. '{kb.markers[key].display}+' or '{kb.markers[key].display} negative'"
                )
            else:
                panel.noted.append(f"{key} (panel fragment {own!r}): result not read")
        state.waiting.clear()
        state.named.clear()
        state.carry, state.part, state.carry_part, state.tentative = None, -1, -1, []
    return panel


@dataclass
class _State:
    """What one fragment leaves to the next."""

    carry: Reading | None = None
    """"positive for A, B and C": one result for several markers."""
    waiting: list = field(default_factory=list)
    """Markers whose result comes later ("desmin and SMA positive")."""
    last: tuple | None = None
    """(key, words, fragment) of the last marker read, for a continuation."""
    graded: bool = False
    """The panel grades with "++" / "+++", so "(+)" is weak."""
    part: int = -1
    """The comma part of the clause being read; ``carry_part`` the one whose lead set the
    carried result."""
    carry_part: int = -1
    tentative: list = field(default_factory=list)
    """Markers of this part that took a result carried from an earlier part: a result of
    their own "and"-chain replaces it ("positive for SMA and desmin, EMA and S100 negative":
    EMA is negative)."""
    named: set = field(default_factory=set)
    """Waiting markers named as a molecular finding ("SS18 rearrangement and EWSR1
    rearrangement not detected"): the result that comes is the molecular test's, and with
    none the finding is present."""


def _read_fragment(fragment: str, kb: KnowledgeBase, panel: Panel, state: _State) -> None:
    toks = split_slashes(tokens(fragment), kb)
    if toks and toks[0].lower() in ("but", "whereas", "while"):  # "..., but desmin and
        state.carry = None  # h-caldesmon were negative": no longer "immunoreactive for"
    carry, waiting, carried = state.carry, state.waiting, state.carry
    if any(t.lower() == "neither" for t in toks):  # "neither desmin nor SMA was expressed"
        toks = neither_nor(toks, fragment)
    items: list[list] = []  # [kind, key, words]
    lead: list[str] = []
    i = 0
    nested: list[str] = []
    while i < len(toks):
        found = match_marker(toks, i, kb)
        if found is not None and not (items and is_result_word(toks[i]) and found[2] == 1):
            if not (items and items[-1][:2] == list(found[:2]) and not items[-1][2]):
                items.append([found[0], found[1], []])  # "Ki-67 proliferation index": one
            i += found[2]
            continue
        word = toks[i]
        if nested_result(word, kb):  # "plasma cells (CD138+)": a result of its own
            nested.append(word[1:-1])
        elif (
            items
            and starts_unknown(word, items[-1][2])  # "desmin+ FOO7 positive"
            and word.lower().strip(",.") not in kb.entity_words
        ):
            items.append(["unknown", word, []])
        else:
            (items[-1][2] if items else lead).append(word)
        i += 1
    for inner in nested:
        inner_state = _State(graded=state.graded)
        for piece in split_fragments(inner):
            _read_fragment(piece, kb, panel, inner_state)
        if any(kind == "kb" for kind, _, _ in inner_state.waiting):
            raise IHCError(f"panel fragment {fragment!r}: no result in ({inner})")
    where = f"panel fragment {fragment!r}"
    lead_words = [w for w in lead if not is_filler(w)]
    graded, prefix = state.graded, False
    low = [w.lower() for w in lead_words]
    if items and low and low[0] in NEGATING and set(low[1:]) <= {"of", "expression"}:
        state.carry = carry = read_result(["negative"], False, where)  # "lack of PR"
    elif lead and lead[-1].lower() in ("for", "to", "by", "with"):
        if any(is_result_word(w) for w in lead_words):  # "positive for", "but not with"
            state.carry = carry = read_result(lead_words, False, where, graded)
        elif lead[-2:-1] and lead[-2].lower() == "stained":  # "cells stained with desmin"
            state.carry = carry = read_result(["positive"], False, where, graded)
        # else "staining for STAT6 was absent": the result follows the marker
    elif (
        lead[-1:]
        and lead[-1].endswith(":")
        and items
        and lead_words
        and all(is_result_word(w) for w in lead_words)
    ):
        state.carry = carry = read_result(lead, False, where, graded)  # "Negative: EMA, PR"
    elif lead and lead[-1].lower() in EXPRESSING:  # "lymphoma (not) expressing CD20, ..."
        negated = len(lead) > 1 and lead[-2].lower() in ("not", "no", "without")
        state.carry = carry = read_result(["negative" if negated else "positive"], False, where)
    elif lead_words and not items and lead_words[0].lower() == "clone":
        return  # "desmin (+), clone D33": the antibody clone, recorded with the fragment
    elif lead_words and not items and waiting and all(is_result_word(w) for w in lead_words):
        reading = read_result(lead_words, False, where, graded)  # "CD31 membranous, diffuse"
        _resolve_waiting(waiting, reading, fragment, kb, panel, state.named)
        return
    elif (
        lead_words
        and not items
        and state.last
        and all(result_or_compartment(w) for w in lead_words)
        and any(is_result_word(w) for w in lead_words)
    ):
        key, words, first = state.last  # "EMA negative, focally positive": one result
        panel.results.pop(key, None)
        joined = f"panel fragment {first + ', ' + fragment!r}"
        reading = read_result([*words, *lead_words], kb.markers[key].loss_marker, joined, graded)
        _add("kb", key, reading, f"{first}, {fragment}", kb, panel)
        return
    elif items and low == ["not"]:  # "..., but not STAT6 or CD34": each negative
        state.carry = carry = read_result(["negative"], False, where, graded)
    elif lead_words and items and all(result_or_compartment(w) for w in lead_words):
        if any(not re.search(r"[a-z]", w.lower()) for w in lead_words):
            raise IHCError(f"{where}: result {' '.join(lead_words)!r} has no marker before it")
        items[0][2][:0] = lead_words  # "rare GFAP positive areas", "strong desmin staining"
        prefix = True  # ... is that marker's own, never one waiting before it ("not by CD34")
    elif lead_words and not items and nested:
        return  # "spindle cells (SMA+, desmin-)": the words outside describe the cells
    elif lead_words and not items and CONTEXT & {w.lower() for w in lead_words}:
        panel.warnings.append(f"{where}: about other cells (an internal control), not read")
        return
    elif lead_words and not items:
        panel.unknown.append(fragment)
        panel.warnings.append(f"{where}: could not read it (no known marker); it was not used")
        if waiting and any(is_result_word(w) for w in lead_words):  # "..., nestin positive"
            reading = read_result(lead_words[1:] or lead_words, False, where, graded)
            _resolve_waiting(waiting, reading, fragment, kb, panel, state.named)
        return
    if state.carry is not carried:
        state.carry_part = state.part
    negate_after_not(items)
    for n, (kind, key, words) in enumerate(items):
        if kind == "unknown":
            text = " ".join([key, *words])
            panel.unknown.append(text)
            panel.warnings.append(
                f"{where}: unknown marker in {text!r} ignored (not in {kb.path.name}; "
                "add it or an alias there)"
            )
            continue
        named = any(w.lower() in MOLECULAR for w in words)
        if all(is_filler(w) or w.lower() in MOLECULAR for w in words):
            if carry is not None:  # "negative for SS18 rearrangement"
                shared = replace(carry, molecular=carry.molecular or named)
                _add(kind, key, shared, fragment, kb, panel)
                if kind == "kb" and state.part != state.carry_part:
                    state.tentative.append((kind, key, fragment))
            else:
                waiting.append((kind, key, fragment))
                if named:
                    state.named.add(key)
            continue
        said = " ".join(words).lower()
        if (
            not any(is_result_word(w, loss=True) for w in words)
            and not re.search(r"\d\s*%|h-?score|allred|\bh\s*[:=]", said)
            and not any(phrase in said for phrase in NOT_PERFORMED if " " in phrase)
            and not CONTEXT & set(said.split())  # "CD3 highlighted background T cells"
        ):
            unread = [w for w in words if not is_filler(w) and w.lower() not in QUALIFIERS]
            if unread and kind == "kb":  # never borrow the next marker's result past them
                raise IHCError(f"{where}: no result (could not read: {' '.join(unread)})")
            waiting.append((kind, key, fragment))  # "CD31 membranous staining, diffuse"
            continue
        try:
            loss = kind == "kb" and kb.markers[key].loss_marker
            reading = read_result(words, loss, where, graded)
        except IHCError:
            if kind == "noted":
                panel.noted.append(f"{key} ({where}): result not read")
                continue
            raise
        trailing = not (prefix and n == 0)  # the result follows the marker, as lists share it
        if trailing and not reading.loss_words:  # "..., EMA and S100 negative": EMA's too
            for _, t_key, _ in state.tentative:
                panel.results.pop(t_key, None)
            _resolve_waiting(state.tentative, reading, fragment, kb, panel, state.named)
        if any(w_key == key for _, w_key, _ in waiting):  # "for kappa and lambda showed
            waiting[:] = [w for w in waiting if w[1] != key]  # kappa restriction": kappa's
        elif trailing:  # own result, never lambda's; "desmin and SMA +" shares it
            _resolve_waiting(waiting, reading, fragment, kb, panel, state.named)
        _add(kind, key, reading, fragment, kb, panel)
        if not (len(words) == 1 and words[0].startswith("(")):  # "EMA (focally) and PR":
            state.carry = carry = None  # an aside within the list keeps its carried result
        state.last = (key, words, fragment) if kind == "kb" else None


def _resolve_waiting(
    waiting: list, reading: Reading, fragment: str, kb, panel: Panel, named: set
) -> None:
    """Give the markers waiting for a result ("desmin and SMA positive") this one; each
    records its own fragment and the one its result came from."""
    for kind, key, own in waiting:
        mine = replace(reading, molecular=key in named or reading.method)
        _add(kind, key, mine, fragment if own == fragment else f"{own} … {fragment}", kb, panel)
    waiting.clear()


def _add(kind: str, key: str, reading: Reading, fragment: str, kb, panel: Panel) -> None:
    where = f"panel fragment {fragment!r}"
    if kind == "noted":
        panel.noted.append(f"{key} {reading.state or 'read'} ({where}): {kb.noted[key]}")
        return
    panel.add(from_reading(key, reading, kb, where, fragment))
