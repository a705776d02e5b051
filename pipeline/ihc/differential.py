"""Fusing image probabilities with the IHC panel into a ranked differential diagnosis.

posterior(entity) ∝ prior(entity) × image likelihood × IHC likelihood, where

* the prior and the image likelihood come from ``pipeline.ihc.image`` (one probability
  model: q(c) / β(c) over the model's classes, the user's prior over classes, entities the
  model cannot see "unknown" rather than zero). Image probabilities are floored (default
  0.05) in the fusion because no model is ever certain;
* the IHC likelihood (``pipeline.ihc.likelihood``) multiplies P(result | entity) over markers
  (clipped to [0.01, 0.99]; focal is a softened positive), each correlated group's fixed
  lead marker fully and its other markers with a fixed weight, so concordant stains of one
  programme are not double counted and adding a stain never demotes another; an entity with
  variants mixes their rows.

Each marker's contribution for a top entity is its weighted log-likelihood ratio against the
posterior-weighted alternatives; the next stains are the markers not yet performed with the
largest expected reduction in posterior entropy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.ihc.image import ImageEvidence, entity_prior_and_likelihood
from pipeline.ihc.knowledge import KnowledgeBase, load_knowledge, source_kind
from pipeline.ihc.likelihood import panel_likelihood
from pipeline.ihc.results import MarkerResult, Panel

DECISIVE_LLR = float(np.log(10))
"""A marker whose weighted likelihood ratio exceeds 10 (either way) is called decisive."""


@dataclass
class Evidence:
    """One marker's contribution to one entity."""

    marker: str
    display: str
    state: str
    weight: float
    llr: float
    p_result: float
    """P(this result | the entity), clipped."""
    source: str = ""
    """Where P(+ | entity) for this marker comes from (knowledge base)."""

    @property
    def kind(self) -> str:
        """DATA (published counts) or ESTIMATE (knowledge-based)."""
        return source_kind(self.source)

    @property
    def direction(self) -> str:
        return "supports" if self.llr > 0.1 else "against" if self.llr < -0.1 else "neutral"

    @property
    def decisive(self) -> bool:
        return abs(self.llr) >= DECISIVE_LLR


@dataclass
class Suggestion:
    marker: str
    display: str
    entropy_reduction: float
    """Expected reduction of the posterior's entropy, in bits."""
    separates: tuple[str, float, str, float] | None
    """(entity a, P(+|a), entity b, P(+|b)) for the pair it best tells apart."""


@dataclass
class Differential:
    """The fused differential for one case."""

    entities: list[str]
    prior: np.ndarray
    image_likelihood: np.ndarray
    ihc_loglik: np.ndarray
    posterior: np.ndarray
    kb: KnowledgeBase = field(repr=False)
    panel: Panel = field(default_factory=Panel, repr=False)
    terms: list = field(default_factory=list, repr=False)
    p_positive: np.ndarray | None = field(default=None, repr=False)
    """(entities, markers) P(positive | entity), variants weighted as the panel weighs them."""
    variant: list = field(default_factory=list, repr=False)
    """Per entity, the variant the panel points to (``PanelLikelihood.variant``)."""
    inputs: dict = field(default_factory=dict, repr=False)
    """The non-panel arguments of ``fuse`` (image, prior, floor), to re-run it."""

    @property
    def has_image(self) -> bool:
        return self.inputs.get("image") is not None

    @property
    def classes(self) -> list[str]:
        """The classes calls are made over: the image model's, else the knowledge base's."""
        image = self.inputs.get("image")
        return image.classes if image is not None else list(self.kb.image_classes)

    def class_of(self, entity: str) -> str | None:
        """The class an entity belongs to (None: outside the image model's scope)."""
        image = self.inputs.get("image")
        return image.class_of.get(entity) if image is not None else self.kb.image_class_of[entity]

    def ranked(self) -> list[tuple[str, float]]:
        order = np.argsort(-self.posterior, kind="stable")
        return [(self.entities[i], float(self.posterior[i])) for i in order]

    def class_posterior(self) -> dict[str, float]:
        """Posterior summed per image class; entities outside the image model's scope stay
        separate under their own names."""
        out: dict[str, float] = dict.fromkeys(self.classes, 0.0)
        for e, p in zip(self.entities, self.posterior, strict=True):
            key = self.class_of(e) or e
            out[key] = out.get(key, 0.0) + float(p)
        return out

    def evidence(self, entity: str) -> list[Evidence]:
        """Each marker's weighted log-likelihood ratio for ``entity`` against the rest."""
        i = self.entities.index(entity)
        others = np.delete(self.posterior, i)
        others = (
            others / others.sum() if others.sum() > 0 else np.full(len(others), 1 / len(others))
        )
        out = []
        for result, weight, ll in self.terms:
            alt = float(np.log(np.dot(others, np.exp(np.delete(ll, i)))))
            out.append(
                Evidence(
                    marker=result.marker,
                    display=self.kb.markers[result.marker].display,
                    state=result.state,
                    weight=weight,
                    llr=weight * (float(ll[i]) - alt),
                    p_result=float(np.exp(ll[i])),
                    source=self._source(entity, result.marker),
                )
            )
        return sorted(out, key=lambda ev: -abs(ev.llr))

    def _variant(self, entity: str):
        """The knowledge base's variant the panel points to for ``entity``, if any."""
        key = self.variant[self.entities.index(entity)] if self.variant else None
        return next((v for v in self.kb.variants if v.entity == entity and v.key == key), None)

    def _source(self, entity: str, marker: str) -> str:
        """The source of P(+ | entity) for ``marker``: the variant's where the panel points
        to a variant that has its own number."""
        variant = self._variant(entity)
        if variant is not None and marker in variant.sources:
            return variant.sources[marker]
        return self.kb.sources.get((entity, marker), "")

    def variant_name(self, entity: str) -> str | None:
        """The name of the variant the panel points to for ``entity``, if any."""
        variant = self._variant(entity)
        return variant.name if variant is not None else None

    @property
    def evidence_loglik(self) -> np.ndarray:
        """log P(IHC and image | entity): the evidence without the prior."""
        return self.ihc_loglik + np.log(np.maximum(self.image_likelihood, 1e-300))

    def evidence_ranking(self, top: int = 5) -> list[tuple[str, float]]:
        """Entities by the evidence alone (IHC and image likelihoods, no prior), normalised."""
        log_lik = self.evidence_loglik
        lik = np.exp(log_lik - log_lik.max())
        lik = lik / lik.sum()
        order = np.argsort(-lik, kind="stable")[:top]
        return [(self.entities[i], float(lik[i])) for i in order]

    def in_scope(self, entity: str) -> bool:
        return self.class_of(entity) is not None


def fuse(
    panel: Panel | None = None,
    image: ImageEvidence | dict[str, float] | None = None,
    prior: str | None = None,
    kb: KnowledgeBase | None = None,
    image_floor: float = 0.05,
) -> Differential:
    """The posterior over entities from the prior, the image and the IHC panel.

    ``image``: a model's evidence (its class prior defaults to neutral), or probabilities over
    the knowledge base's image classes from no particular model (the prior defaults to the
    knowledge base's default prior, as in ``fascicle ihc``)."""
    kb = kb or load_knowledge()
    panel = panel or Panel()
    if isinstance(image, dict):  # no model: the knowledge base's classes and prior
        image = ImageEvidence.build(image, list(kb.image_classes), dict(kb.image_class_of))
        prior = prior or kb.default_prior
    if image is None:
        pri, img = kb.prior(prior), np.ones(len(kb.entities))
    else:
        pri, img = entity_prior_and_likelihood(kb, image, prior, image_floor)
    lik = panel_likelihood(kb, panel.performed.values())
    ll = lik.loglik
    with np.errstate(divide="ignore"):  # a zero prior rules an entity out
        log_post = np.log(pri) + np.log(img) + ll
    post = np.exp(log_post - log_post.max())
    return Differential(
        entities=list(kb.entities),
        prior=pri,
        image_likelihood=img,
        ihc_loglik=ll,
        posterior=post / post.sum(),
        kb=kb,
        panel=panel,
        terms=lik.terms,
        p_positive=lik.p_positive,
        variant=lik.variant,
        inputs={"image": image, "prior": prior, "image_floor": image_floor},
    )


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def next_stains(diff: Differential, top: int = 5) -> list[Suggestion]:
    """Stains not yet performed, ranked by expected reduction of posterior entropy.

    Each hypothetical result goes through ``fuse`` with the rest of the panel, so a marker
    of an already-sampled lineage group is discounted as it would be if performed; of the
    markers of one correlated group only the most informative is listed (myogenin, not
    myogenin and MyoD1, which tell the same entities apart).
    """
    kb, panel = diff.kb, diff.panel
    p_pos = diff.p_positive
    h0 = _entropy(diff.posterior)
    out = []
    for marker in kb.markers:
        if marker in panel.performed or kb.markers[marker].is_molecular:
            continue  # stains only: a molecular test (EWSR1, DICER1) is read, not suggested
        j = kb.marker_index(marker)
        prob_pos = float(np.dot(diff.posterior, p_pos[:, j]))
        expected = 0.0
        for state, prob in (("positive", prob_pos), ("negative", 1 - prob_pos)):
            trial = Panel(results={**panel.performed, marker: MarkerResult(marker, state)})
            after = fuse(trial, kb=kb, **diff.inputs).posterior
            expected += prob * _entropy(after)
        out.append(
            Suggestion(marker, kb.markers[marker].display, h0 - expected, _separated_pair(diff, j))
        )
    out.sort(key=lambda s: (-s.entropy_reduction, s.marker))
    kept, listed = [], set()  # one stain per correlated group: its second adds little
    for s in out:
        group = kb.group_of(s.marker)
        if group not in listed:
            kept.append(s)
        if group is not None:
            listed.add(group)
    return kept[:top]


def _separated_pair(diff: Differential, j: int) -> tuple[str, float, str, float] | None:
    p = diff.p_positive[:, j]
    candidates = [i for i in np.argsort(-diff.posterior)[:6] if diff.posterior[i] >= 0.005]
    best, pair = 0.0, None
    for a in candidates:
        for b in candidates:
            score = diff.posterior[a] * diff.posterior[b] * (p[a] - p[b])
            if score > best:
                best, pair = score, (diff.entities[a], float(p[a]), diff.entities[b], float(p[b]))
    return pair


def summarise(
    diff: Differential,
    suggestions: list[Suggestion] = (),  # type: ignore[assignment]
    call: object | None = None,
    top: int = 5,
    evidence_for: int = 3,
) -> dict:
    """JSON-ready summary: ranked entities, class posteriors, evidence, next stains, call."""
    kb = diff.kb
    ranked = diff.ranked()
    out: dict = {
        "panel": {r.marker: r.state for r in diff.panel.performed.values()},
        "unknown_markers": list(diff.panel.unknown),
        "noted_markers": list(diff.panel.noted),
        "markers_used": diff.panel.usage(),
        "panel_text": diff.panel.raw,
        "warnings": list(diff.panel.warnings),
        "image_used": diff.has_image,
        "differential": [
            {
                "entity": e,
                "name": kb.entity_names[e],
                "probability": round(p, 6),
                "image_class": diff.class_of(e),
                "outside_image_scope": diff.class_of(e) is None,
                "variant": diff.variant_name(e),
            }
            for e, p in ranked[:top]
        ],
        "class_probabilities": {k: round(v, 6) for k, v in diff.class_posterior().items()},
        "evidence": {
            e: [_evidence_row(ev) for ev in diff.evidence(e)] for e, _ in ranked[:evidence_for]
        },
        "next_stains": [_suggestion_row(s) for s in suggestions],
        "likelihood_ranking": [
            {"entity": e, "name": kb.entity_names[e], "share": round(v, 6)}
            for e, v in diff.evidence_ranking(top)
        ],
    }
    if call is not None:
        out["call"] = call.doc()
    return out


def _evidence_row(ev: Evidence) -> dict:
    return {
        "marker": ev.display,
        "result": ev.state,
        "weight": round(ev.weight, 3),
        "log_lr": round(ev.llr, 3),
        "direction": ev.direction,
        "decisive": ev.decisive,
        "p_result_given_entity": round(ev.p_result, 3),
        "kind": ev.kind,
        "source": ev.source,
    }


def _suggestion_row(s: Suggestion) -> dict:
    row: dict = {
        "marker": s.display,
        "expected_entropy_reduction_bits": round(s.entropy_reduction, 4),
    }
    if s.separates is not None:
        a, pa, b, pb = s.separates
        row["separates"] = {"entity_a": a, "p_positive_a": pa, "entity_b": b, "p_positive_b": pb}
    else:
        row["separates"] = None
    return row


def format_summary(summary: dict) -> str:
    """A plain-text table for people."""
    lines = []
    call = summary.get("call")
    if call:
        status = "INDETERMINATE" if call["indeterminate"] else "call"
        lines.append(
            f"{status}: {call['leading']} ({call['probability']:.2f}), entity {call['entity']}"
        )
        lines += [f"  reason: {r}" for r in call["reasons"]]
        if call.get("entity_note"):
            lines.append(f"  {call['entity_note']}")
        lines.append("")
    if "markers_used" in summary:
        lines.append(f"IHC: {summary['markers_used']}")
        lines += [f"  noted, not used: {n}" for n in summary.get("noted_markers", [])]
        lines += [f"  not read: {u!r}" for u in summary.get("unknown_markers", [])]
        lines.append("")
    lines.append(f"{'rank':<5}{'entity':<42}{'probability':>12}  image class")
    for i, row in enumerate(summary["differential"], 1):
        scope = row["image_class"] or "outside the image model's scope"
        name = row["name"] + (f" ({row['variant']})" if row.get("variant") else "")
        lines.append(f"{i:<5}{name:<42}{row['probability']:>12.3f}  {scope}")
    for entity, items in summary["evidence"].items():
        lines.append(f"\nevidence for {entity} (log likelihood ratio vs the alternatives):")
        for ev in items:
            if ev["direction"] == "neutral":
                continue
            note = " decisive" if ev["decisive"] else ""
            if ev["direction"] == "against" and ev["p_result_given_entity"] < 0.1:
                note += f" (atypical: P={ev['p_result_given_entity']:.2f})"
            weight = "" if ev["weight"] == 1 else f" [weight {ev['weight']:.2f}, correlated]"
            lines.append(
                f"  {ev['direction']:>8} {ev['marker']:<14}{ev['result']:<10}"
                f"{ev['log_lr']:+6.2f}{weight}{note} [{ev['kind']}]"
            )
    if summary.get("likelihood_ranking"):
        ranked = ", ".join(f"{r['name']} {r['share']:.2f}" for r in summary["likelihood_ranking"])
        lines.append(f"\nby the evidence alone (no prior): {ranked}")
    if summary["next_stains"]:
        lines.append("\nsuggested next stains (expected information gain):")
        for s in summary["next_stains"]:
            sep = s["separates"]
            tell = (
                f" separates {sep['entity_a']} ({sep['p_positive_a']:.2f}+)"
                f" from {sep['entity_b']} ({sep['p_positive_b']:.2f}+)"
                if sep
                else ""
            )
            lines.append(
                f"  {s['marker']:<14}{s['expected_entropy_reduction_bits']:.2f} bits{tell}"
            )
    for w in summary["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
