"""What a slide's image model says, as evidence for the differential: one probability model.

* The image model's calibrated slide probabilities ``q(c)`` over its classes were learnt at
  the class balance ``β(c)`` its sampler drew (recorded in the model file; both trainers
  balance classes, so β is uniform). ``q(c) / β(c)`` is the image likelihood of class c up to
  a constant: the model's own base rates are divided out once, and only once.
* The prior over the model's classes is the user's: a named prior of the knowledge base
  (summed over each class's entities), by default β itself, i.e. neutral. Without IHC the
  call is then the calibrated image call: ``P(c | image) ∝ q(c) / β(c) × π(c)`` = ``q(c)``.
* With an IHC panel the knowledge base refines within and across classes: an entity's prior
  is its class's prior share times its share of the class under the knowledge base's prior;
  entities the model has no class for keep their knowledge-base prior, and their image
  likelihood is *unknown*, not zero: the image's average likelihood ``Σ π(c) q(c)/β(c)``, so
  image evidence alone never raises them above the classes it favours, nor rules them out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.errors import UsageError
from pipeline.ihc.knowledge import KnowledgeBase

SUM_TOLERANCE = 0.02


@dataclass(frozen=True)
class ImageEvidence:
    """Calibrated slide probabilities over an image model's classes, and what they cover."""

    probs: dict[str, float]
    """Over every class of the model, summing to 1."""
    class_of: dict[str, str | None]
    """Entity of the knowledge base → the model class that covers it (None: none does)."""
    balance: dict[str, float]
    """The class balance the model was trained at."""

    @property
    def classes(self) -> list[str]:
        return list(self.probs)

    @classmethod
    def build(
        cls,
        probs: dict[str, float],
        classes: list[str],
        class_of: dict[str, str | None],
        balance: dict[str, float] | None = None,
        where: str = "image probabilities",
    ) -> ImageEvidence:
        """Checked evidence: every named class known, probabilities summing to 1 (a class
        left out is then 0), no class without an entity of the knowledge base."""
        unknown = [c for c in probs if c not in classes]
        if unknown:
            raise UsageError(
                f"{where}: class(es) {', '.join(unknown)} unknown; expected {', '.join(classes)}"
            )
        if any(not 0 <= p <= 1 for p in probs.values()):
            raise UsageError(f"{where}: probabilities must be in [0, 1]")
        total = sum(probs.values())
        if abs(total - 1) > SUM_TOLERANCE:
            raise UsageError(
                f"{where}: probabilities sum to {total:.2f}, not 1; give every class "
                f"({', '.join(classes)}), e.g. {classes[0]}=0.9,{classes[1]}=0.1"
            )
        empty = [c for c in classes if c not in class_of.values()]
        if empty:
            raise UsageError(
                f"{where}: class(es) {', '.join(empty)} cover no entity of the knowledge base"
            )
        full = {c: float(probs.get(c, 0.0)) / total for c in classes}
        beta = balance or dict.fromkeys(classes, 1.0 / len(classes))
        return cls(full, dict(class_of), {c: float(beta[c]) for c in classes})

    def neutral(self) -> ImageEvidence:
        """The same model saying nothing (q = β): the IHC-only view over its classes."""
        return ImageEvidence(dict(self.balance), self.class_of, self.balance)

    def likelihood(self, floor: float = 0.0) -> dict[str, float]:
        """``q(c) / β(c)`` per class, with q floored at ``floor`` and renormalised."""
        q = np.maximum(np.array([self.probs[c] for c in self.classes]), floor)
        q = q / q.sum()
        return {c: float(v / self.balance[c]) for c, v in zip(self.classes, q, strict=True)}

    def class_prior(self, kb: KnowledgeBase, prior: str | None) -> dict[str, float]:
        """The prior over the model's classes: the named prior summed per class (its share
        of entities the model covers), or the training balance (neutral) without a name."""
        if prior is None:
            return dict(self.balance)
        weights = dict(zip(kb.entities, kb.prior(prior), strict=True))
        mass = dict.fromkeys(self.classes, 0.0)
        for entity, c in self.class_of.items():
            if c is not None:
                mass[c] += weights[entity]
        total = sum(mass.values())
        if total <= 0:
            raise UsageError(f"prior {prior!r} gives no weight to any class of the image model")
        return {c: v / total for c, v in mass.items()}

    def posterior(self, class_prior: dict[str, float]) -> dict[str, float]:
        """The image-only call's distribution over the model's classes."""
        lik = self.likelihood()
        post = {c: lik[c] * class_prior[c] for c in self.classes}
        total = sum(post.values())
        return {c: v / total for c, v in post.items()}


def entity_prior_and_likelihood(
    kb: KnowledgeBase, image: ImageEvidence, prior: str | None, floor: float
) -> tuple[np.ndarray, np.ndarray]:
    """(prior, image likelihood) over the knowledge base's entities, per the module notes."""
    base = kb.prior(prior)
    class_prior = image.class_prior(kb, prior)
    lik = image.likelihood(floor)
    of = [image.class_of.get(e) for e in kb.entities]
    inside = np.array([c is not None for c in of])
    outside_mass = float(base[~inside].sum())
    out_prior = np.zeros(len(kb.entities))
    for c in image.classes:
        members = np.array([k == c for k in of])
        share = base[members]
        share = share / share.sum() if share.sum() > 0 else np.full(len(share), 1 / len(share))
        out_prior[members] = (1 - outside_mass) * class_prior[c] * share
    out_prior[~inside] = base[~inside]
    unknown = sum(class_prior[c] * lik[c] for c in image.classes)
    likelihood = np.array([lik[c] if c is not None else unknown for c in of])
    return out_prior / out_prior.sum(), likelihood


def kb_class_of(kb: KnowledgeBase, classes: list[str], label_class) -> dict[str, str | None]:
    """Entity → model class: the class named like the entity, or like its knowledge-base
    image class, through ``label_class`` (a model's label → class map, without any
    catch-all rest class, which says nothing about entities it never saw)."""
    out = {}
    for entity in kb.entities:
        found = None
        for key in (entity, kb.image_class_of[entity]):
            if key is not None and label_class(key) in classes:
                found = label_class(key)
                break
        out[entity] = found
    return out
