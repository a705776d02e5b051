"""Reading IHC results as pathology reports write them.

A panel is split into clauses at ``;``, ``|``, newlines and sentence ends, and clauses into
fragments at ``,`` and the words ``and``, ``but``, ``whereas``, ``while`` (never inside
parentheses, nor in ``AE1/AE3``); a marker waiting for its result ("desmin and SMA positive")
finds it within its clause, never in a result written before a later marker ("but not by
CD34"). A result hyphenated to its marker ("S-100-positive") is read as written; "(+)" is
positive, or weak where the panel grades with "++" / "+++". A result about other cells
("CD34 highlighted the vessels only", "(vessels positive)") is the tumour's negative, or an
error when it is about them alone ("CD34 positive in vessels"). A molecular finding named
("SS18 rearrangement", "MDM2 amplification") is present unless its phrase says otherwise,
and a result read "by FISH" or in molecular words is flagged for the molecular test. In
each fragment the longest marker
name or alias at a word boundary starts a result, which runs to the next marker name:
``Desmin: positive (diffuse)``, ``SMA (-)``, ``SMA focal weak``, ``strongly positive``,
``PR (80%)``, ``PR H-score 200``, ``ER Allred 7/8``, ``Ki-67 20-30%``, ``H3K27me3 partial
loss``, ``STAT6 - nuclear +`` (a dash before a result is punctuation, never a sign). Clone
names and other parentheticals without a result are skipped; so is the method ("EBER positive
by in situ hybridization"). For loss markers (H3K27me3, INI1) "loss of INI1", "not lost" and
"mosaic" read as written; "loss" of any other marker is refused. ``not done`` / ``pending`` are
recorded, not used. A marker whose result cannot be read, or reads both ways (``negative,
focally positive``), is an error naming the fragment; markers the knowledge base only notes
(Ki-67, CD56...) are recorded and counted as given but not used.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from pipeline.core.errors import UsageError
from pipeline.ihc.vocabulary import (
    ADVERBS,
    COMPARTMENTS,
    CONTEXT,
    EQUIVOCAL,
    FOCAL,
    GRADED_WEAK,
    LOSS,
    METHODS,
    MOLECULAR,
    NEGATIVE,
    NEGATIVE_PHRASES,
    NOT_PERFORMED,
    NOT_THEN,
    POSITIVE,
    STOP_WORDS,
    TUMOUR,
)

_SIGN = r"\+\+\+|\+\+|\+/-|\+|-|−|–|±"
_SPLIT_SIGN = re.compile(rf"(?<=[A-Za-z0-9\)])({_SIGN})(?=$|[\s,;.)])")
_PAREN_SIGN = re.compile(r"(?<=\w)\((?=[+\-−–±])")
_PERCENT = re.compile(r"^[<>≥≤~]?(\d+(?:\.\d+)?)(?:\s*-\s*(\d+(?:\.\d+)?))?%$")
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")
_HYPHEN_RESULT = re.compile(
    r"(?<!non)(?<=[\w)])-(positive|negative|immunoreactive|immunopositive|immunonegative|"
    r"reactive|expressing|staining|stained|focally|diffusely|strongly|weakly|patchy|restricted)\b",
    re.I,
)
"""A result hyphenated to its marker: "S-100-positive cells", "CD34-negative"."""
_JOIN = re.compile(r"(?:^|\s+)and\s+|\s+(?=(?:but|whereas|while)\s)", re.I)
"""Words that join fragments: "positive for SMA but negative for desmin" is two. A fragment
keeps its "but" / "whereas" / "while", which ends the result carried so far."""


class IHCError(UsageError):
    """Malformed IHC input; the message names the row, token or fragment and what is wrong."""


@dataclass
class Reading:
    """What one result phrase says."""

    state: str
    """positive, negative, focal, equivocal or not_performed (stain language; a loss
    marker's reading is turned round by the caller)."""
    percent: float | None = None
    hscore: float | None = None
    allred: float | None = None
    qualifiers: list[str] = field(default_factory=list)
    loss_words: bool = False
    """The phrase spoke of loss / retention (already in the loss marker's terms)."""
    molecular: bool = False
    """The phrase named a molecular finding or method ("fusion", "by FISH")."""
    method: bool = False
    """... a molecular method ("by FISH"), which holds for every marker the result is for."""


def normalise_text(text: str) -> str:
    """Unicode as reports carry it, in the forms the reader knows: compatibility forms
    (fullwidth "＋", "％") folded; hyphens and a dash inside a name ("S‑100", "Ki–67") are
    "-"; a figure dash or minus sign is the minus "−"; a slash after a sign separates two
    results ("CK7+/CK20-")."""
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"[\u2010\u2011]", "-", text)
    text = re.sub(r"(?<=\w)[\u2012\u2013](?=\w)", "-", text)
    text = re.sub(r"[\u2012\ufe63\uff0d]", "−", text)
    return re.sub(r"([+\-−–]|\([+\-−–]\))\s*/\s*(?=[A-Za-z])", r"\1, ", text)  # "CK7+/CK20-"


def split_clauses(text: str) -> list[str]:
    """Clauses at ``;``, ``|``, newlines and sentence ends outside parentheses: a marker
    waiting for its result ("desmin and SMA positive") finds it within its clause only."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")" and depth > 0
        end = ch == "." and (i + 1 == len(text) or text[i + 1] == " ")
        if depth == 0 and (ch in ";|\n" or end):
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return [c for c in out if c.strip()]


def split_fragments(text: str) -> list[str]:
    """Fragments at separators outside parentheses."""
    return [fragment for part in split_parts(text) for fragment in part]


def split_parts(text: str) -> list[list[str]]:
    """Fragments at separators outside parentheses, by comma part: "positive for SMA and
    desmin, EMA and S100 negative" is [[SMA, desmin], [EMA, S100 negative]]."""
    text = _PAREN_SIGN.sub(" (", _SPLIT_SIGN.sub(r" \1", _HYPHEN_RESULT.sub(r" \1", text)))
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")" and depth > 0
        cut = depth == 0 and (
            ch in ";,|\n" or (ch == "." and (i + 1 == len(text) or text[i + 1] == " "))
        )
        if cut:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    parts = []
    for part in out:
        split = [p.strip() for p in _JOIN.split(part.strip())]
        for j, piece in enumerate(split):  # "weakly and focally positive for X": one phrase
            words = [w for w in piece.split() if w.lower() not in STOP_WORDS]
            if j + 1 < len(split) and words and all(t.lower() in ADVERBS for t in words):
                split[j + 1] = f"{piece} {split[j + 1]}"
                split[j] = ""
        parts.append([p.strip() for p in split if p.strip()])
    return [part for part in parts if part]


def tokens(fragment: str) -> list[str]:
    """Words of a fragment; parentheses stay attached to what they enclose."""
    return re.findall(r"\([^()]*\)|[^\s()]+", fragment)


def _clean(token: str) -> str:
    return token.lower().strip().rstrip(":").strip()


def is_result_word(token: str, loss: bool = False) -> bool:
    """True for a word or sign that says a result (with ``loss``: loss words too)."""
    t = _clean(token)
    if t.startswith("(") and t.endswith(")") and t not in ("(+)", "(-)", "(+/-)"):
        return any(is_result_word(w, loss) for w in t[1:-1].split())  # "EMA (focal)"
    if loss and any(t in words.split() for words_ in LOSS.values() for words in words_):
        return True
    return (
        t in POSITIVE
        or t in NEGATIVE
        or t in FOCAL
        or t in EQUIVOCAL
        or t in NOT_PERFORMED
        or t in MOLECULAR
        or bool(_PERCENT.match(t.strip("()")))
        or t in ("not", "no", "h-score", "hscore", "allred", GRADED_WEAK)
    )


def read_result(words: list[str], loss_marker: bool, where: str, graded: bool = False) -> Reading:
    """The result a marker's words say; ``IHCError`` when they say nothing, or both. With
    ``graded`` (the panel grades with "++" / "+++"), "(+)" is weak."""
    phrase = " ".join(_clean(w) for w in words)
    phrase = re.sub(r"\s+", " ", phrase).strip(" :")
    dash = re.fullmatch(r"[-–−]\s+(.+)", phrase)
    if dash and any(is_result_word(w) for w in dash.group(1).split()):
        phrase = dash.group(1)  # "STAT6 - nuclear +": the dash is punctuation
    for np_phrase in NOT_PERFORMED:
        if phrase == np_phrase or phrase.startswith(np_phrase + " "):
            return Reading("not_performed", qualifiers=[phrase])
    reading = Reading("")
    for aside in re.findall(r"\([^()]*\)", phrase):  # "(vessels positive)": a control
        if CONTEXT & set(re.findall(r"[a-z]+", aside)):
            reading.qualifiers.append(aside)
            phrase = phrase.replace(aside, " ")
    found: set[str] = set()
    rest = re.sub(rf"\bnot (?:{'|'.join(NOT_THEN)})\b", "negative", phrase)
    if rest == "not" and not loss_marker:  # "desmin positive, not SMA"
        rest = "negative"
    if loss_marker:
        phrases = sorted(((w, s) for s, ws in LOSS.items() for w in ws), key=lambda x: -len(x[0]))
        for words_, state in phrases:  # longest first: "partial loss", "not lost" before "loss"
            if re.search(rf"\b{re.escape(words_)}\b", rest):
                found.add(state)
                reading.loss_words = True
                rest = re.sub(rf"\b{re.escape(words_)}\b", " ", rest)
    elif re.search(r"\b(?:loss|lost)\b", rest):  # "diffuse loss of desmin": never positive
        raise IHCError(
            f"{where}: 'loss' of a marker that is read as stained or not; write e.g. "
            "'negative' (only loss markers such as H3K27me3 and INI1 are read as lost)"
        )
    for neg in NEGATIVE_PHRASES:
        if neg in rest:
            found.add("negative")
            rest = rest.replace(neg, " ")
    if CONTEXT & set(rest.split()) and not TUMOUR & set(rest.split()):
        said = [w for w in rest.split() if w in POSITIVE or w in FOCAL]
        if said and "only" not in rest.split():  # "CD34 positive in vessels"
            raise IHCError(
                f"{where}: the result is about other cells ({rest.strip()!r}); write the "
                "tumour cells' result, e.g. 'CD34 negative (vessels positive)'"
            )
        reading.qualifiers.append(rest.strip())  # "highlighted the vessels only", "CD3
        found.add("negative")  # highlighted background T cells": the tumour is not stained
        rest = ""
    rest = _numbers(rest, reading, where)
    unread, molecular = [], False
    for raw in rest.split():
        t = raw.strip("()").strip(",.") if raw not in ("(+)", "(-)", "(+/-)") else raw
        if not t:
            continue
        if t == GRADED_WEAK:
            found.add("focal" if graded else "positive")
            reading.qualifiers += ["weak"] if graded else []
        elif reading.loss_words and t in ADVERBS:  # "diffuse loss", "diffusely retained"
            reading.qualifiers.append(t)
        elif t in POSITIVE or raw in POSITIVE:
            found.add("positive")
            reading.qualifiers += [t] if t.isalpha() and t not in ("positive", "pos") else []
        elif t in NEGATIVE or raw in NEGATIVE:
            found.add("negative")
        elif t in FOCAL or raw in FOCAL:
            found.add("focal")
            reading.qualifiers.append(t)
        elif t in EQUIVOCAL or raw in EQUIVOCAL:
            found.add("equivocal")
        elif t in COMPARTMENTS:
            reading.qualifiers.append(t)
        elif t in MOLECULAR:  # "SS18 rearrangement": present unless the phrase says not
            molecular = True
            reading.qualifiers.append(t)
        elif t not in STOP_WORDS:
            unread.append(raw)
    if molecular and not found:
        found.add("positive")
    reading.method = bool(METHODS & set(re.findall(r"[a-z-]+", phrase)))
    reading.molecular = molecular or reading.method
    numbers = (
        reading.percent is not None or reading.hscore is not None or reading.allred is not None
    )
    if "negative" in found and found & {"positive", "focal"}:
        raise IHCError(f"{where}: reads both ways ({' '.join(words)!r}); write one result")
    if "not" in unread and found & {"positive", "focal"}:  # "not diffusely positive"
        raise IHCError(f"{where}: 'not' before {' '.join(words)!r}; write one result")
    if not found and not numbers:
        detail = f" (could not read: {' '.join(unread)})" if unread else ""
        raise IHCError(f"{where}: no result{detail}")
    if "equivocal" in found:
        reading.state = "equivocal"
    elif "focal" in found:
        reading.state = "focal"
    elif "positive" in found:
        reading.state = "positive"
    elif "negative" in found:
        reading.state = "negative"
    if unread:
        reading.qualifiers.append("unread: " + " ".join(unread))
    return reading


def _numbers(rest: str, reading: Reading, where: str) -> str:
    """Take percentages, H-scores and Allred scores out of ``rest`` into ``reading``."""

    def number(text: str, hi: float, name: str) -> float:
        value = float(text)
        if not 0 <= value <= hi:
            raise IHCError(f"{where}: {name} {value:g} is outside 0-{hi:g}")
        return value

    m = re.search(r"\b(?:h-?\s?score\s*[:=]?|h\s*[:=])\s*(\d+(?:\.\d+)?)", rest)
    if m:
        reading.hscore = number(m.group(1), 300, "H-score")
        rest = rest[: m.start()] + " " + rest[m.end() :]
    m = re.search(r"\ballred(?: score)?\s*[:=]?\s*(\d)(?:\s*/\s*8)?", rest)
    if m:
        reading.allred = number(m.group(1), 8, "Allred score")
        rest = rest[: m.start()] + " " + rest[m.end() :]
    m = re.search(r"\(?\b(\d+)\s*/\s*(\d+)\b\)?", rest)  # "(10/10)": a share of cells or fields
    if m and int(m.group(2)) not in (0, 8) and int(m.group(1)) <= int(m.group(2)):  # n/8: Allred
        reading.percent = 100 * int(m.group(1)) / int(m.group(2))
        rest = rest[: m.start()] + " " + rest[m.end() :]
    m = re.search(r"[<>≥≤~]?\(?(\d+(?:\.\d+)?)(?:\s*-\s*(\d+(?:\.\d+)?))?\s*%\)?", rest)
    if m:
        low = number(m.group(1), 100, "percentage")
        high = number(m.group(2), 100, "percentage") if m.group(2) else low
        reading.percent = (low + high) / 2
        rest = rest[: m.start()] + " " + rest[m.end() :]
    return rest
