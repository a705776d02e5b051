"""The slide call, made in one place for ``fascicle predict``, ``evaluate`` and ``ihc``.

Slide image probabilities (already aggregated and calibrated) are fused with the slide's IHC
panel into a differential over the knowledge base's entities; the leading image class is the
call unless a rule in ``configs/calls.yaml`` makes it indeterminate, and every rule that
fires is reported as a reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from pipeline.core.errors import UsageError
from pipeline.core.resources import builtin_config
from pipeline.ihc.differential import Differential, Suggestion, fuse, next_stains, summarise
from pipeline.ihc.image import ImageEvidence
from pipeline.ihc.knowledge import KnowledgeBase
from pipeline.ihc.results import Panel
from pipeline.tiles.aggregate import AGGREGATORS

SLIDE_AGGREGATIONS = ("model", *(a for a in AGGREGATORS if a != "attention"))


@dataclass(frozen=True)
class CallConfig:
    """The settings of ``configs/calls.yaml``; every key is used."""

    aggregation: str = "model"
    """``model``: the aggregator the model was trained with; or force mean, top_k, quantile or
    vote for tile models (MIL models pool tiles themselves)."""
    top_k_fraction: float = 0.2
    quantile: float = 0.75
    min_probability: float = 0.7
    min_tiles: int = 20
    min_agreement: float = 0.3
    image_prob_floor: float = 0.05
    max_ood_fraction: float = 0.25
    """More tiles unlike the training data than this share: indeterminate."""
    min_panel_fit: float = 0.01
    """The leading entity must explain the panel better than this share of its own
    simulated panels, else "no entity in the knowledge base explains this panel"."""
    min_evidence_ratio: float = 3.0
    """The evidence (IHC and image, not the prior) must favour the leading entity by at least
    this likelihood ratio over every rival of another class that the prior puts lower and that
    keeps ``min_rival_share`` of the posterior, else "the prior decides between them"."""
    min_rival_share: float = 0.02

    @classmethod
    def load(cls, path: str | Path | None = None) -> CallConfig:
        path = Path(path) if path else builtin_config("calls.yaml")
        try:
            doc = yaml.safe_load(path.read_text()) or {}
            config = cls(**doc)
        except (OSError, yaml.YAMLError) as err:
            raise UsageError(f"{path}: cannot read call settings ({err})") from None
        except TypeError as err:
            raise UsageError(f"{path}: {err}; known keys: {', '.join(asdict(cls()))}") from None
        if config.aggregation not in SLIDE_AGGREGATIONS:
            raise UsageError(
                f"{path}: aggregation must be one of {', '.join(SLIDE_AGGREGATIONS)}, "
                f"not {config.aggregation!r}"
            )
        return config

    def aggregator_for(self, model_aggregator: str) -> str:
        """The tile aggregator to use with a model trained with ``model_aggregator``."""
        return model_aggregator if self.aggregation == "model" else self.aggregation


@dataclass
class Call:
    """The slide's call: a class (or an entity outside the image model), or indeterminate."""

    label: str
    entity: str
    probability: float
    indeterminate: bool
    reasons: list[str] = field(default_factory=list)
    outside_scope: bool = False
    entity_probability: float | None = None
    entity_note: str = ""
    """Why the entity is not settled within its class (empty when it is)."""

    @property
    def text(self) -> str:
        return "indeterminate" if self.indeterminate else self.label

    def doc(self) -> dict:
        """The call as ``result.json`` and ``fascicle ihc --json`` write it."""
        return {
            "label": self.text,
            "leading": self.label,
            "entity": self.entity,
            "probability": round(self.probability, 6),
            "indeterminate": self.indeterminate,
            "reasons": self.reasons,
            "outside_image_scope": self.outside_scope,
            "entity_probability": None
            if self.entity_probability is None
            else round(self.entity_probability, 6),
            "entity_settled": not self.entity_note,
            "entity_note": self.entity_note,
        }


def agreement(image_probs: dict[str, float], diff_ihc_only: Differential) -> float:
    """Bhattacharyya coefficient between image-only and IHC-only class distributions."""
    classes = diff_ihc_only.classes
    ihc = diff_ihc_only.class_posterior()
    a = np.array([image_probs.get(c, 0.0) for c in classes], float)
    b = np.array([ihc[c] for c in classes], float)
    if a.sum() <= 0 or b.sum() <= 0:
        return 0.0
    return float(np.sqrt((a / a.sum()) * (b / b.sum())).sum())


def _common_reasons(
    label: str, probability: float, config: CallConfig, n_tiles: int | None
) -> list[str]:
    reasons = []
    if probability < config.min_probability:
        reasons.append(
            f"leading class {label} has probability {probability:.2f} < {config.min_probability}"
        )
    if n_tiles is not None and n_tiles < config.min_tiles:
        reasons.append(f"only {n_tiles} tissue tiles (< {config.min_tiles})")
    return reasons


def decide(
    diff: Differential,
    config: CallConfig,
    n_tiles: int | None = None,
    image_probs: dict[str, float] | None = None,
    ihc_only: Differential | None = None,
    reasons: list[str] = (),  # type: ignore[assignment]
) -> Call:
    """Call the slide from the fused differential; indeterminate with reasons when unsure
    (``reasons``: ones found before, such as tissue unlike the training data)."""
    classes = diff.class_posterior()
    label, probability = max(classes.items(), key=lambda kv: kv[1])
    members = [i for i, e in enumerate(diff.entities) if (diff.class_of(e) or e) == label]
    entity = diff.entities[max(members, key=lambda i: diff.posterior[i])]
    evidence = dict(diff.evidence_ranking(len(diff.entities)))  # no prior, best first
    reasons = [*_common_reasons(label, probability, config, n_tiles), *reasons]
    reasons += _evidence_reasons(
        diff, entity, config, image_probs is not None, next(iter(evidence))
    )
    if image_probs is not None and ihc_only is not None and ihc_only.terms:
        bc = agreement(image_probs, ihc_only)
        if bc < config.min_agreement:
            img_top = max(image_probs, key=image_probs.get)
            ihc_top = max(diff.classes, key=ihc_only.class_posterior().get)
            reasons.append(
                f"image and IHC conflict (agreement {bc:.2f} < {config.min_agreement}): "
                f"image favours {img_top}, IHC favours {ihc_top}"
            )
    share = {diff.entities[i]: float(diff.posterior[i]) for i in members}
    return Call(
        label=label,
        entity=entity,
        probability=probability,
        indeterminate=bool(reasons),
        reasons=reasons,
        outside_scope=diff.class_of(entity) is None,
        entity_probability=share[entity],
        entity_note=_entity_note(share, {e: evidence[e] for e in share}, label, config),
    )


def _entity_note(
    share: dict[str, float], evidence: dict[str, float], label: str, config: CallConfig
) -> str:
    """Why the leading entity is not settled within its class (empty when it is): its share
    of the class is under ``min_probability``, or the evidence alone (no prior) does not put
    it there, so the prior chose it. The class is one call; its entities (meningioma grades,
    sarcoma types) the image cannot tell apart and the IHC may not."""
    if len(share) < 2:
        return ""
    ranked = sorted(share.items(), key=lambda kv: -kv[1])
    leader = ranked[0][0]
    within = share[leader] / max(sum(share.values()), 1e-12)
    by_evidence = evidence[leader] / max(sum(evidence.values()), 1e-12)
    if min(within, by_evidence) >= config.min_probability:
        return ""
    listing = ", ".join(f"{e} {p:.2f}" for e, p in ranked[:3])
    why = (
        f"{within:.0%} of the class"
        if within < config.min_probability
        else f"{by_evidence:.0%} of the class by the evidence alone: the prior chose it"
    )
    return (
        f"entity not settled within {label}: {listing} ({why}, under "
        f"{config.min_probability:.0%}); order the suggested stains"
    )


def _evidence_reasons(
    diff: Differential, entity: str, config: CallConfig, has_image: bool, best: str
) -> list[str]:
    """No evidence, a panel nothing explains, or a leader the prior alone chose (``best``:
    the entity the evidence alone puts first)."""
    from pipeline.ihc.fit import panel_fit

    if not diff.terms and not has_image:
        given = diff.panel.counts[1]
        return [
            f"no marker of the panel ({given} given) is in the knowledge base's likelihood "
            "table: the differential is the prior alone"
        ]
    reasons = []
    fit = panel_fit(diff, entity)
    if fit < config.min_panel_fit:
        reasons.append(
            f"no entity in the knowledge base explains this panel (the leading entity, "
            f"{diff.kb.entity_names[entity]}, fits it worse than {1 - fit:.1%} of its own "
            "simulated panels)"
        )
    if (diff.class_of(best) or best) != (diff.class_of(entity) or entity):
        reasons.append(
            f"prior-driven: the evidence favours {diff.kb.entity_names[best]}; the prior puts "
            f"{diff.kb.entity_names[entity]} first"
        )
    elif rival := _close_rival(diff, entity, config):
        name, ratio = rival
        reasons.append(
            f"prior-driven: the evidence favours {diff.kb.entity_names[entity]} over {name} "
            f"only {ratio:.1f}-fold (< {config.min_evidence_ratio:g}); the prior decides "
            "between them"
        )
    return reasons


def _close_rival(diff: Differential, entity: str, config: CallConfig) -> tuple[str, float] | None:
    """The likeliest entity of another class that keeps ``min_rival_share`` of the posterior,
    that the prior puts below ``entity`` and that the evidence separates from it less than
    ``min_evidence_ratio``-fold: the prior, not the evidence, decides between the two."""
    i = diff.entities.index(entity)
    evidence = diff.evidence_loglik
    home = diff.class_of(entity) or entity
    rivals = [
        j
        for j, e in enumerate(diff.entities)
        if (diff.class_of(e) or e) != home
        and diff.posterior[j] >= config.min_rival_share
        and diff.prior[j] < diff.prior[i]
    ]
    close = [j for j in rivals if evidence[i] - evidence[j] < np.log(config.min_evidence_ratio)]
    if not close:
        return None
    j = max(close, key=lambda k: diff.posterior[k])
    return diff.kb.entity_names[diff.entities[j]], float(np.exp(evidence[i] - evidence[j]))


def decide_image(
    posterior: dict[str, float],
    config: CallConfig,
    n_tiles: int | None = None,
    reasons: list[str] = (),  # type: ignore[assignment]
) -> Call:
    """The calibrated image call (no IHC): the leading class of the image posterior."""
    label, probability = max(posterior.items(), key=lambda kv: kv[1])
    reasons = [*_common_reasons(label, probability, config, n_tiles), *reasons]
    return Call(label, label, probability, bool(reasons), reasons)


@dataclass
class SlideCall:
    """A call with what it rests on: the image posterior, and with IHC the fused
    differential and the stains to order next."""

    call: Call
    image_posterior: dict[str, float] | None = None
    differential: Differential | None = None
    next_stains: list[Suggestion] = field(default_factory=list)

    @property
    def has_ihc(self) -> bool:
        return self.differential is not None

    def call_doc(self) -> dict:
        return self.call.doc()

    def summary(self, top: int = 5) -> dict:
        """JSON-ready: with IHC, ranked entities, class posteriors, evidence, next stains and
        the call; without, the call and the image posterior."""
        if self.differential is None:
            return {"call": self.call_doc(), "class_probabilities": self.image_posterior}
        return summarise(self.differential, self.next_stains, self.call, top=top)


def make_call(
    kb: KnowledgeBase,
    config: CallConfig,
    panel: Panel | None,
    image: ImageEvidence | None,
    prior: str | None = None,
    n_tiles: int | None = None,
    reasons: list[str] = (),  # type: ignore[assignment]
    top: int = 5,
) -> SlideCall:
    """The call from image evidence and/or an IHC panel, by the rules of ``config``.

    Without a panel it is the calibrated image call under the user's class prior (default:
    neutral); with one, the fused differential over the knowledge base's entities."""
    has_ihc = panel is not None and panel.counts[1] > 0
    posterior = image.posterior(image.class_prior(kb, prior)) if image is not None else None
    if not has_ihc:
        if posterior is None:
            raise UsageError("nothing to call: give image probabilities or an IHC panel")
        return SlideCall(decide_image(posterior, config, n_tiles, reasons), posterior)
    if panel.unknown:  # an unread fragment may hold the decisive result (a missed alias)
        shown = "; ".join(repr(f) for f in panel.unknown[:3])
        more = f" and {len(panel.unknown) - 3} more" if len(panel.unknown) > 3 else ""
        reasons = [
            *reasons,
            f"{len(panel.unknown)} IHC panel fragment(s) could not be read ({shown}{more}); "
            "a call needs the whole panel read: correct or remove them",
        ]
    options = {"prior": prior, "kb": kb, "image_floor": config.image_prob_floor}
    diff = fuse(panel, image, **options)
    ihc_only = fuse(panel, image.neutral(), **options) if image is not None else None
    seen = image.posterior(image.balance) if image is not None else None  # the image alone:
    call = decide(diff, config, n_tiles, seen, ihc_only, reasons)  # the prior is in ihc_only
    return SlideCall(call, posterior, diff, next_stains(diff, top=top))


def parse_image_probs(text: str) -> dict[str, float]:
    """``class=p,class=p`` (as ``fascicle ihc --image-probs`` takes them)."""
    probs = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            probs[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--image-probs: {item!r} is not class=probability") from None
        if not sep or not 0 <= probs[name.strip()] <= 1:
            raise UsageError(f"--image-probs: {item!r} is not class=probability in [0, 1]")
    return probs


def ihc_summary(
    panel: str | None = None,
    ihc: str | Path | None = None,
    slide: str | None = None,
    image_probs: dict[str, float] | None = None,
    prior: str | None = None,
    knowledge: str | Path | None = None,
    calls: str | Path | None = None,
    top: int = 5,
) -> dict:
    """``fascicle ihc``: the call and differential of a ``panel`` (text), or of ``slide``'s rows
    in the IHC CSV ``ihc``, with image probabilities if given; JSON-ready."""
    from pipeline.ihc.knowledge import load_knowledge
    from pipeline.ihc.panel import parse_panel
    from pipeline.ihc.tables import read_ihc_csv

    kb = load_knowledge(knowledge)
    config = CallConfig.load(calls)
    if panel is not None:
        parsed = parse_panel(panel, kb)
    else:
        panels = read_ihc_csv(ihc, kb)
        if slide not in panels:
            known = ", ".join(sorted(panels)[:10])
            raise UsageError(f"{ihc}: no rows for slide {slide!r} (slides: {known}...)")
        parsed = panels[slide]
    image, prior = None, prior or kb.default_prior  # no model: the knowledge base's prior
    if image_probs is not None:
        classes = list(kb.image_classes)
        image = ImageEvidence.build(
            image_probs, classes, dict(kb.image_class_of), None, "--image-probs"
        )
    return make_call(kb, config, parsed, image, prior, top=top).summary(top=top)
