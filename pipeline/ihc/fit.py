"""Does any entity explain the panel? And is the leader chosen by the evidence or the prior?

``panel_fit``: the share of panels simulated from the knowledge base for an entity, on the
same markers, that it explains no better than the observed one (a Monte-Carlo p-value of the
panel's weighted log-likelihood). A panel the best entity explains worse than nearly all of
its own simulated panels (an Ewing sarcoma panel read against this knowledge base, thirteen
lineage markers all positive) is one no entity here explains.
"""

from __future__ import annotations

import numpy as np

from pipeline.ihc.differential import Differential
from pipeline.ihc.knowledge import KnowledgeBase


def panel_fit(diff: Differential, entity: str, n: int = 4000, seed: int = 0) -> float:
    """Monte-Carlo p-value of the observed panel under ``entity`` (1.0 without markers)."""
    if not diff.terms:
        return 1.0
    kb: KnowledgeBase = diff.kb
    i = diff.entities.index(entity)
    cols = [kb.marker_index(r.marker) for r, _, _ in diff.terms]
    weights = np.array([w for _, w, _ in diff.terms])
    observed = float(sum(w * ll[i] for _, w, ll in diff.terms))
    p = diff.p_positive[i, cols]  # variants weighted as the panel weighs them
    rng = np.random.default_rng(seed)
    positive = rng.random((n, len(cols))) < p
    simulated = (weights * np.where(positive, np.log(p), np.log1p(-p))).sum(1)
    return float((simulated <= observed + 1e-9).mean())
