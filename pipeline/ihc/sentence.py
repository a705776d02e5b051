"""The shapes of report sentences that reach past one marker and its result: list bullets,
the report's conclusion ("consistent with ..."), suspended hyphens ("desmin-, SMA- and
h-caldesmon-positive"), markers joined by a slash ("desmin/SMA"), "neither A nor B", "A and
B but not C", filler words and parentheticals, and the start of an unknown marker's name.
``pipeline.ihc.panel`` reads fragments with them."""

from __future__ import annotations

import re
from itertools import pairwise

from pipeline.ihc.knowledge import KnowledgeBase
from pipeline.ihc.report import IHCError, is_result_word, tokens
from pipeline.ihc.vocabulary import COMPARTMENTS, CONTEXT, QUALIFIERS, STOP_WORDS

EXPRESSING = frozenset(["expressing", "expresses", "express", "expressed"])
"""A verb that, before markers, says they are positive ("tumour cells expressing CD20")."""


def split_slashes(toks: list[str], kb: KnowledgeBase) -> list[str]:
    """ "desmin/SMA positive", "ER/PR:", "AE1/AE3/CAM5.2": several markers where the whole
    is none; each name is the longest run of slash-joined parts that is one (``AE1/AE3``,
    ``Melan-A/MART-1``, ``CK8/18`` stay whole). Left whole when a part is no marker."""

    def known(name: str) -> bool:
        name = name.rstrip(":")
        return bool(kb.resolve_marker(name) or kb.resolve_noted(name))

    out = []
    for tok in toks:
        parts, names = tok.split("/"), []
        while parts and not known(tok):
            n = next((n for n in range(len(parts), 0, -1) if known("/".join(parts[:n]))), 0)
            if not n:
                break
            names.append("/".join(parts[:n]))
            parts = parts[n:]
        out += names if names and not parts else [tok]
    return out


def neither_nor(toks: list[str], fragment: str) -> list[str]:
    """ "neither desmin nor SMA was expressed" / "expressed neither desmin nor SMA": every
    marker negative. Anything else after it ("neither ... nor ... negative") could flip, and
    is refused."""
    low = [t.lower() for t in toks]
    start = low.index("neither")
    said = [t for t in low[start + 1 :] if is_result_word(t, loss=True)]
    verb = {t for t in low[:start] if t not in STOP_WORDS}
    if (said in (["positive"], ["expressed"], ["immunoreactive"]) and not verb) or (
        not said and start > 0 and verb <= EXPRESSING
    ):
        rest = [t for t in toks[start + 1 :] if t.lower() != "nor" and t.lower() not in said]
        return [*rest, "negative"]
    raise IHCError(
        f"panel fragment {fragment!r}: 'neither ... nor' is read only as 'neither A nor B "
        "(was) expressed / positive'; write each result, e.g. 'desmin negative, SMA negative'"
    )


def is_filler(word: str) -> bool:
    """A word that says nothing about the result: a filler word, or a parenthetical
    without a result in it ("EBV-encoded RNA (EBER)", a clone) or about other cells
    ("(vessels positive)", an internal control)."""
    if word.lower().strip(":") in STOP_WORDS:
        return True
    inner = word[1:-1].split() if word.startswith("(") and word.endswith(")") else None
    if inner is not None and CONTEXT & {w.lower().strip(",.") for w in inner}:
        return True
    return inner is not None and not any(is_result_word(w, loss=True) for w in inner)


def result_or_compartment(word: str) -> bool:
    """A lead word that belongs to the result of the marker after it ("diffuse loss of
    nuclear INI1 expression", "strong desmin staining")."""
    return is_result_word(word, loss=True) or word.lower() in COMPARTMENTS


def negate_after_not(items: list[list]) -> None:
    """In "A and B but not (to / for) C" the "not" belongs to C, which is negative, while B
    keeps the shared result ("immunoreactive to HMB-45 and S-100 but not to EMA")."""
    for this, after in pairwise(items):
        tail = [w.lower() for w in this[2][-2:]]
        cut = 2 if tail in (["not", "to"], ["not", "for"]) else 1 if tail[-1:] == ["not"] else 0
        if cut and not any(is_result_word(w, loss=True) for w in after[2]):
            del this[2][-cut:]
            after[2][:0] = ["negative"]


def starts_unknown(word: str, previous: list[str]) -> bool:
    """A word after a complete result that is no result, qualifier or filler word: the
    name of a marker the knowledge base does not know."""
    if not any(is_result_word(w, loss=True) for w in previous) or word.startswith("("):
        return False
    if previous[-1].lower() == "clone" or (
        re.search(r"\d", word) and not re.search(r"[a-z]", word.lower())
    ):
        return False  # a clone name, or a number that belongs to the result
    t = word.lower().strip(":,.")
    return not (is_result_word(word, loss=True) or t in STOP_WORDS | QUALIFIERS | CONTEXT)


_SUSPENDED_END = re.compile(
    r"(?:,\s*|\s+)(?:and|or)\s+[^\s,;]+-(?:positive|negative|immunoreactive|immunopositive|"
    r"immunonegative|reactive|expressing|stained)\b",
    re.I,
)


def suspended_hyphens(clause: str) -> str:
    """ "desmin-, SMA- and h-caldesmon-positive": the hyphens before the last marker stand
    for its "-positive" (suspended hyphenation), so they are dropped and the markers wait
    for that result; read as signs they would flip it. A hyphen after a space or "+/-" is a
    sign and stays."""
    out, start = [], 0
    for end in _SUSPENDED_END.finditer(clause):
        items = clause[start : end.start()].split(",")
        for k in range(len(items) - 1, -1, -1):
            if not re.search(r"[\w)]-\s*$", items[k]) or re.search(r"\+/-\s*$", items[k]):
                break
            items[k] = re.sub(r"-(\s*)$", r"\1", items[k])
        out.append(",".join(items))
        start = end.start()
    return "".join([*out, clause[start:]])


BULLET = re.compile(r"^[ \t]*(?:[-–•*·]|\(?\d{1,2}[.)])[ \t]+(?=\w)", re.M)
"""A list's bullet or number at the start of a line ("- desmin: +", "1. SMA negative")."""


_CONCLUSION = re.compile(
    r"\b(?:consistent with|compatible with|in keeping with|suggestive of|diagnostic of|"
    r"indicative of|confirming|supporting|favou?ring)\b.*$",
    re.I | re.S,
)


def split_conclusion(clause: str, kb: KnowledgeBase) -> tuple[str, str | None]:
    """ "..., consistent with synovial sarcoma": (the clause without the report's conclusion,
    the conclusion), which is no result. The conclusion runs to the clause's end, or to the
    next comma when a marker follows ("SMA positive supporting smooth muscle differentiation,
    and desmin positive"); a conclusion that names a marker is kept and read."""
    found = _CONCLUSION.search(clause)
    if found is None:
        return clause, None
    for tail in (found.group(0), found.group(0).split(",")[0]):
        words = tokens(tail)
        names = (" ".join(words[i : i + n]) for i in range(len(words)) for n in range(1, 5))
        if not any(kb.resolve_marker(name) or kb.resolve_noted(name) for name in names):
            return clause[: found.start()] + clause[found.start() + len(tail) :], tail.strip()
    return clause, None


def join_leading_results(pieces: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """ "There was diffuse, strong expression of SSTR2A": a fragment of result words alone
    joins the next (and its comma part) when that one starts with a result too."""
    out: list[tuple[int, str]] = []
    for part, fragment in pieces:
        words = [w for w in tokens(out[-1][1]) if w.lower() not in STOP_WORDS] if out else []
        first = [w for w in tokens(fragment) if w.lower() not in STOP_WORDS][:1]
        if words and first and all(is_result_word(w) for w in [*words, *first]):
            out[-1] = (part, f"{out[-1][1]} {fragment}")
        else:
            out.append((part, fragment))
    return out


def match_marker(toks: list[str], i: int, kb: KnowledgeBase) -> tuple[str, str, int] | None:
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


def nested_result(word: str, kb: KnowledgeBase) -> bool:
    """A parenthetical that holds a marker and a result of its own: "(CD138+)"."""
    if not (word.startswith("(") and word.endswith(")")):
        return False
    toks = tokens(word[1:-1])
    return any(is_result_word(t) for t in toks) and any(
        match_marker(toks, j, kb) for j in range(len(toks))
    )
