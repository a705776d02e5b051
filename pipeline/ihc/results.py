"""What reading a panel gives: each marker's normalised result (``MarkerResult``), the panel
with what could not be used (``Panel``), and the rule that turns what a result's words say
into a state (``from_reading``: numbers decide when given; a loss marker's stain turned
round; a stain's result in molecular words goes to its molecular test)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pipeline.ihc.knowledge import KnowledgeBase
from pipeline.ihc.report import IHCError, Reading


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
        return _cut(hscore, s.positive_hscore, s.focal_hscore)
    if percent is not None:
        return _cut(percent, s.positive_percent, s.focal_percent)
    return None


def _cut(value: float, positive: float, focal: float) -> str:
    return "positive" if value >= positive else "focal" if value >= focal else "negative"


def from_reading(key: str, reading: Reading, kb, where: str, raw: str) -> MarkerResult:
    """A marker's result from what its words say (numbers decide when given); a stain's
    result written in molecular words is its molecular test's ("SS18-SSX fusion by
    RT-PCR")."""
    if reading.molecular and kb.markers[key].molecular:
        key = kb.markers[key].molecular
    loss = kb.markers[key].loss_marker
    if reading.loss_words and not loss:  # "SMA and INI1 lost": a lost stain is negative
        turned = {"positive": "negative", "negative": "positive"}
        reading = replace(reading, state=turned.get(reading.state, reading.state), loss_words=False)
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
