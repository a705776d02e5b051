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

An entity with **variants** (``variants:`` in the knowledge base: epithelioid MPNST, whose
INI1 loss and diffuse S100 go together) is a mixture: P(panel | entity) = Σ share ×
P(panel | row), each row a product as above. Markers are independent within a row, not
within the entity, so results that fit a variant's joint profile count as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.ihc.knowledge import KnowledgeBase
from pipeline.ihc.results import MarkerResult


def _state(kb: KnowledgeBase, result: MarkerResult) -> str | None:
    state = result.state
    if state == "equivocal":
        return "focal" if kb.scoring.equivocal == "focal" else None
    return state if state in ("positive", "negative", "focal") else None


def marker_loglik(
    kb: KnowledgeBase, result: MarkerResult, rows: np.ndarray | None = None
) -> np.ndarray | None:
    """log P(result | row) for every entity (or every row of ``rows``, e.g. the mixture's
    components), or None if the result carries no evidence."""
    state = _state(kb, result)
    if state is None:
        return None
    p = (kb.clipped() if rows is None else rows)[:, kb.marker_index(result.marker)]
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


@dataclass
class PanelLikelihood:
    """What a panel says about every entity."""

    terms: list[tuple[MarkerResult, float, np.ndarray]]
    """(result, weight, log P(result | entity)) of each informative result, by marker name.
    For an entity with variants the result's probability is averaged over its variants as
    the whole panel weighs them, so its terms need not sum to ``loglik``."""
    loglik: np.ndarray
    """The weighted log-likelihood of the panel for every entity (exact, variants mixed)."""
    p_positive: np.ndarray
    """(entities, markers) P(positive | entity) with variants weighted as the panel weighs
    them: what the next stain is expected to show."""
    variant: list[str | None]
    """Per entity, the variant that holds at least half of it given the panel, else None."""


def panel_likelihood(kb: KnowledgeBase, results) -> PanelLikelihood:
    """The panel's weighted log-likelihood under every entity, its variants mixed in."""
    rows, owner, log_share, keys = kb.components()
    leads = group_leads(kb)
    terms_c = []
    for result in sorted(results, key=lambda r: r.marker):
        ll = marker_loglik(kb, result, rows)
        if ll is not None:
            terms_c.append((result, marker_weight(kb, result.marker, leads), ll))
    joint = log_share + sum((w * ll for _, w, ll in terms_c), np.zeros(len(rows)))
    n = len(kb.entities)
    loglik = np.array([np.logaddexp.reduce(joint[owner == i]) for i in range(n)])
    resp = np.exp(joint - loglik[owner])  # each row's share of its entity, given the panel
    mix = np.zeros((n, len(rows)))
    mix[owner, np.arange(len(rows))] = resp
    terms = [(r, w, np.log(mix @ np.exp(ll))) for r, w, ll in terms_c]
    variant: list[str | None] = [None] * n
    for k, key in enumerate(keys):
        if key is not None and resp[k] >= 0.5:
            variant[owner[k]] = key
    return PanelLikelihood(terms, loglik, mix @ rows, variant)


def marker_terms(kb: KnowledgeBase, results) -> list[tuple[MarkerResult, float, np.ndarray]]:
    """(result, weight, log P(result | entity)) of each informative result, by marker name."""
    return panel_likelihood(kb, results).terms


def panel_loglik(kb: KnowledgeBase, results) -> np.ndarray:
    """The weighted log-likelihood of a panel's results for every entity."""
    return panel_likelihood(kb, results).loglik
