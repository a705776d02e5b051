"""P(IHC panel | entity) with correlated markers counted once, monotone and order-free.

Markers of one lineage programme (smooth muscle: desmin, h-caldesmon, SMA, calponin; ...)
are correlated, so multiplying their likelihoods double counts the programme. Each group
has a fixed **lead** marker, the one whose P(+ | entity) spreads most across the knowledge
base's entities (log-odds range); the lead counts fully and the group's other markers with
the fixed weight 1 − redundancy (``configs/ihc/knowledge.yaml``). Ungrouped markers count
fully. The weights depend on the knowledge base alone, never on which markers a panel
holds, so the log-likelihood is a fixed sum over results: independent of order and
spelling, and adding a result multiplies each entity by P(result | entity)^weight, which
cannot lower an entity under which the result is likelier than under the posterior-weighted
alternatives. (The earlier rule, "the most decisive *observed* marker counts fully", let a
new stain demote an old one and so lower the entity both supported.)
"""

from __future__ import annotations

import numpy as np

from pipeline.ihc.knowledge import KnowledgeBase
from pipeline.ihc.panel import MarkerResult


def _state(kb: KnowledgeBase, result: MarkerResult) -> str | None:
    state = result.state
    if state == "equivocal":
        return "focal" if kb.scoring.equivocal == "focal" else None
    return state if state in ("positive", "negative", "focal") else None


def marker_loglik(kb: KnowledgeBase, result: MarkerResult) -> np.ndarray | None:
    """log P(result | entity) for every entity, or None if the result carries no evidence."""
    state = _state(kb, result)
    if state is None:
        return None
    p = kb.clipped()[:, kb.marker_index(result.marker)]
    if state == "positive":
        return np.log(p)
    if state == "negative":
        return np.log1p(-p)
    w = kb.scoring.focal_weight
    return np.log(w * p + (1 - w) * (1 - p))


def group_leads(kb: KnowledgeBase) -> dict[str, str]:
    """Each group's lead marker: the widest spread of log-odds across entities."""
    logit = np.log(kb.clipped() / (1 - kb.clipped()))
    spread = {m: float(np.ptp(logit[:, kb.marker_index(m)])) for m in kb.markers}
    return {g: max(members, key=lambda m: (spread[m], m)) for g, members in kb.groups.items()}


def marker_weight(kb: KnowledgeBase, marker: str, leads: dict[str, str]) -> float:
    """1 for ungrouped markers and group leads; 1 − redundancy for the others."""
    group = kb.group_of(marker)
    if group is None or leads[group] == marker:
        return 1.0
    return 1.0 - kb.redundancy[group]


def marker_terms(kb: KnowledgeBase, results) -> list[tuple[MarkerResult, float, np.ndarray]]:
    """(result, weight, log P(result | entity)) of each informative result, by marker name."""
    leads = group_leads(kb)
    out = []
    for result in sorted(results, key=lambda r: r.marker):
        ll = marker_loglik(kb, result)
        if ll is not None:
            out.append((result, marker_weight(kb, result.marker, leads), ll))
    return out


def terms_loglik(kb: KnowledgeBase, terms: list[tuple]) -> np.ndarray:
    """The weighted log-likelihood of ``marker_terms`` for every entity."""
    ll = np.zeros(len(kb.entities))
    for _, weight, term in terms:
        ll += weight * term
    return ll


def panel_loglik(kb: KnowledgeBase, results) -> np.ndarray:
    """The weighted log-likelihood of a panel's results for every entity."""
    return terms_loglik(kb, marker_terms(kb, results))
