"""The IHC knowledge base (``configs/ihc/knowledge.yaml``): loaded once and validated.

It holds the diagnostic entities, the markers (aliases, compartment), P(positive | entity)
with sources, correlated marker groups, named priors and the mapping from entities to the
image model's classes. Validation rejects probabilities outside [0, 1], unknown markers or
entities anywhere, entities missing a likelihood, and image classes no entity maps to.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import yaml

from pipeline.core.errors import UsageError
from pipeline.core.resources import builtin_config

DEFAULT_PATH = builtin_config("ihc/knowledge.yaml")


def normalise_name(name: str) -> str:
    """Case-, space- and punctuation-insensitive key for marker names and aliases
    ("cluster of differentiation 34" is CD34)."""
    name = unicodedata.normalize("NFKC", name).strip().lower()
    name = re.sub(r"cluster\s+of\s+differentiation\s*", "cd", name)
    return re.sub(r"[\s\-_./()\u2010-\u2015\u2212]+", "", name)


@dataclass(frozen=True)
class Marker:
    key: str
    display: str
    compartment: str
    aliases: tuple[str, ...] = ()
    loss_marker: bool = False
    molecular: str | None = None
    """The molecular test this stain stands in for (SS18-SSX → SS18 rearrangement): a
    result written in molecular words ("SS18-SSX fusion by RT-PCR") is read as that test."""

    @property
    def is_molecular(self) -> bool:
        return self.compartment == "molecular"


@dataclass(frozen=True)
class Prior:
    name: str
    description: str
    weights: dict[str, float]


@dataclass(frozen=True)
class Scoring:
    """How focal, equivocal, percentage and H-score results are read."""

    focal_weight: float = 0.75
    equivocal: str = "uninformative"
    positive_percent: float = 25.0
    focal_percent: float = 5.0
    positive_hscore: float = 100.0
    focal_hscore: float = 10.0


@dataclass(frozen=True)
class Variant:
    """A subtype whose stains differ from its entity's as a whole (epithelioid MPNST loses
    INI1 and is diffusely S100-positive): the entity's likelihood is the mixture of its own
    row and its variants' rows, weighted by the variants' shares."""

    entity: str
    key: str
    name: str
    share: float
    p: dict[str, float]
    """P(positive | variant) for the markers that differ; the others are the entity's."""
    sources: dict[str, str]


@dataclass
class KnowledgeBase:
    """Entities x markers probabilities plus the metadata that interprets them."""

    path: Path
    entities: list[str]
    entity_names: dict[str, str]
    image_class_of: dict[str, str | None]
    image_classes: list[str]
    markers: dict[str, Marker]
    p_positive: np.ndarray
    """(n_entities, n_markers) P(positive | entity), unclipped, as in the file."""
    sources: dict[tuple[str, str], str]
    groups: dict[str, list[str]]
    redundancy: dict[str, float]
    scoring: Scoring
    priors: dict[str, Prior]
    default_prior: str
    clip: tuple[float, float]
    molecular_clip: tuple[float, float]
    extra: dict = field(default_factory=dict)
    variants: list[Variant] = field(default_factory=list)
    noted: dict[str, str] = field(default_factory=dict)
    """Markers reports carry that the likelihood table does not hold yet: display → why they
    are read and recorded but not used."""
    _alias_index: dict[str, str] = field(default_factory=dict, repr=False)
    _noted_index: dict[str, str] = field(default_factory=dict, repr=False)
    _marker_pos: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._marker_pos = {m: i for i, m in enumerate(self.markers)}

    @cached_property
    def entity_words(self) -> frozenset[str]:
        """Words of the entities' names ("synovial", "sarcoma"): a diagnosis written after a
        result ("GFAP-negative synovial sarcoma"), never the name of an unknown marker."""
        words = re.findall(r"[a-z][a-z0-9-]{2,}", " ".join(self.entity_names.values()).lower())
        return frozenset(words) - set(self._alias_index) - set(self._noted_index)

    @property
    def marker_keys(self) -> list[str]:
        return list(self.markers)

    def marker_index(self, key: str) -> int:
        return self._marker_pos[key]

    def group_of(self, marker: str) -> str | None:
        """The correlated group a marker belongs to, if any."""
        return next((g for g, members in self.groups.items() if marker in members), None)

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per marker, the assay error floor and ceiling: ``probability_clip`` for stains,
        ``molecular_clip`` for molecular tests (a FISH or sequencing result errs less)."""
        molecular = np.array([m.is_molecular for m in self.markers.values()])
        low = np.where(molecular, self.molecular_clip[0], self.clip[0])
        return low, np.where(molecular, self.molecular_clip[1], self.clip[1])

    def clipped(self) -> np.ndarray:
        """P(positive | entity) clipped to the assay error floor and ceiling."""
        return np.clip(self.p_positive, *self._bounds())

    def components(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str | None]]:
        """The mixture's rows (clipped): each entity's own row, then its variants'; the
        entity index each row belongs to; each row's log share within its entity; and each
        row's variant key (None for an entity's own row)."""
        base, (low, high) = self.clipped(), self._bounds()
        rows, owner, share, keys = [], [], [], []
        for i, entity in enumerate(self.entities):
            mine = [v for v in self.variants if v.entity == entity]
            rows.append(base[i])
            owner.append(i)
            share.append(1.0 - sum(v.share for v in mine))
            keys.append(None)
            for v in mine:
                row = base[i].copy()
                for marker, p in v.p.items():
                    j = self.marker_index(marker)
                    row[j] = np.clip(p, low[j], high[j])
                rows.append(row)
                owner.append(i)
                share.append(v.share)
                keys.append(v.key)
        return np.array(rows), np.array(owner), np.log(share), keys

    def entity_index(self, entity: str) -> int:
        return self.entities.index(entity)

    def p(self, entity: str, marker: str) -> float:
        """P(marker positive | entity), clipped to the assay error floor."""
        j = self.marker_index(marker)
        low, high = self.molecular_clip if self.markers[marker].is_molecular else self.clip
        return float(np.clip(self.p_positive[self.entity_index(entity), j], low, high))

    def resolve_noted(self, name: str) -> str | None:
        """Display name of a noted (read, not used) marker for a name or alias."""
        return _lookup(self._noted_index, name)

    def resolve_marker(self, name: str) -> str | None:
        """Canonical marker key for a name or alias (``hCaldesmon`` → ``h_caldesmon``)."""
        return _lookup(self._alias_index, name)

    def prior(self, name: str | None = None) -> np.ndarray:
        """Normalised prior over ``entities`` for a named prior."""
        name = name or self.default_prior
        if name not in self.priors:
            raise UsageError(f"unknown prior {name!r}; known: {', '.join(self.priors)}")
        weights = self.priors[name].weights
        floor = float(self.extra.get("prior_floor", {}).get(name, 0.0))
        values = np.array([weights.get(e, floor) for e in self.entities], float)
        return values / values.sum()


def _lookup(index: dict[str, str], name: str) -> str | None:
    """A name's entry in an alias index, singular or plural ("cytokeratins")."""
    key = normalise_name(name)
    found = index.get(key)
    if found is None and len(key) > 3 and key.endswith("s"):
        found = index.get(key[:-1])
    return found


def source_kind(source: str) -> str:
    """DATA when the knowledge base cites published counts, else ESTIMATE."""
    text = source.strip().upper()
    return "DATA" if text.startswith(("DATA", "CONFLICTING DATA")) else "ESTIMATE"


def _fail(path: Path, problems: list[str]) -> None:
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise UsageError(f"{path}: invalid IHC knowledge base:\n{listing}")


def load_knowledge(path: str | Path | None = None) -> KnowledgeBase:
    """Load and validate a knowledge base (default: ``configs/ihc/knowledge.yaml``)."""
    return _load(Path(path) if path else DEFAULT_PATH)


@lru_cache(maxsize=8)
def _load(path: Path) -> KnowledgeBase:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"{path}: cannot read the IHC knowledge base ({err})") from None
    problems: list[str] = []
    entities = list(doc.get("entities") or {})
    markers_doc = doc.get("markers") or {}
    image_classes = list(doc.get("image_classes") or [])
    markers = {
        key: Marker(
            key=key,
            display=str(m.get("display", key)),
            compartment=str(m.get("compartment", "")),
            aliases=tuple(m.get("aliases") or ()),
            loss_marker=bool(m.get("loss_marker", False)),
            molecular=m.get("molecular"),
        )
        for key, m in markers_doc.items()
    }
    alias_index: dict[str, str] = {}
    for key, marker in markers.items():
        for name in (key, marker.display, *marker.aliases):
            norm = normalise_name(name)
            if alias_index.setdefault(norm, key) != key:
                problems.append(f"alias {name!r} names both {alias_index[norm]} and {key}")
    noted, noted_index = {}, {}
    for display, item in (doc.get("noted_markers") or {}).items():
        noted[display] = str((item or {}).get("why", "not in the likelihood table"))
        for name in (display, *((item or {}).get("aliases") or ())):
            norm = normalise_name(name)
            if norm in alias_index:
                problems.append(f"noted marker {name!r} is also marker {alias_index[norm]}")
            noted_index[norm] = display
    image_class_of = {}
    for e, meta in (doc.get("entities") or {}).items():
        cls = (meta or {}).get("image_class")
        if cls is not None and cls not in image_classes:
            problems.append(f"entity {e}: image_class {cls!r} is not in image_classes")
        image_class_of[e] = cls
    for cls in image_classes:
        if cls not in image_class_of.values():
            problems.append(f"image class {cls!r} has no entity mapped to it")
    table = doc.get("likelihoods") or {}
    p = np.full((len(entities), len(markers)), np.nan)
    sources: dict[tuple[str, str], str] = {}
    for e in table:
        if e not in entities:
            problems.append(f"likelihoods: unknown entity {e!r}")
    for i, e in enumerate(entities):
        for m, cell in (table.get(e) or {}).items():
            if m not in markers:
                problems.append(f"likelihoods[{e}]: unknown marker {m!r}")
                continue
            value = cell.get("p") if isinstance(cell, dict) else cell
            if not isinstance(value, int | float) or not 0 <= value <= 1:
                problems.append(f"likelihoods[{e}][{m}]: p={value!r} is not a probability")
                continue
            p[i, list(markers).index(m)] = value
            sources[(e, m)] = str(cell.get("source", "")) if isinstance(cell, dict) else ""
        missing = [m for j, m in enumerate(markers) if np.isnan(p[i, j])]
        if missing:
            problems.append(f"entity {e} has no probability for {', '.join(missing)}")
    groups = {g: list((v or {}).get("markers", [])) for g, v in (doc.get("groups") or {}).items()}
    redundancy = {
        g: float((v or {}).get("redundancy", 0.0)) for g, v in (doc.get("groups") or {}).items()
    }
    seen_in: dict[str, str] = {}
    for g, members in groups.items():
        problems += [f"group {g}: unknown marker {m!r}" for m in members if m not in markers]
        if not 0 <= redundancy[g] < 1:
            problems.append(f"group {g}: redundancy {redundancy[g]} must be in [0, 1)")
        for m in members:
            if m in seen_in:
                problems.append(f"marker {m} is in groups {seen_in[m]} and {g}; keep it in one")
            seen_in[m] = g
    try:
        scoring = Scoring(**(doc.get("scoring") or {}))
    except TypeError as err:
        problems.append(f"scoring: {err}")
        scoring = Scoring()
    if scoring.equivocal not in ("uninformative", "focal"):
        problems.append(
            f"scoring.equivocal must be uninformative or focal, not {scoring.equivocal!r}"
        )
    if not 0.5 <= scoring.focal_weight <= 1:
        problems.append(f"scoring.focal_weight {scoring.focal_weight} must be in [0.5, 1]")
    priors: dict[str, Prior] = {}
    floors: dict[str, float] = {}
    for name, spec in (doc.get("priors") or {}).items():
        weights = {k: float(v) for k, v in (spec.get("weights") or {}).items()}
        problems += [f"prior {name}: unknown entity {k!r}" for k in weights if k not in entities]
        problems += [f"prior {name}: negative weight for {k}" for k, v in weights.items() if v < 0]
        floors[name] = float(spec.get("floor_weight", 0.0))
        if sum(weights.values()) + floors[name] <= 0:
            problems.append(f"prior {name}: weights sum to zero")
        priors[name] = Prior(name, str(spec.get("description", "")), weights)
    variants = _variants(doc.get("variants") or {}, entities, markers, problems)
    default_prior = str(doc.get("default_prior", ""))
    if default_prior not in priors:
        problems.append(f"default_prior {default_prior!r} is not a defined prior")
    clip = tuple(doc.get("probability_clip", (0.01, 0.99)))
    molecular_clip = tuple(doc.get("molecular_clip", clip))
    for name, bounds in (("probability_clip", clip), ("molecular_clip", molecular_clip)):
        if not (len(bounds) == 2 and 0 <= bounds[0] < bounds[1] <= 1):
            problems.append(f"{name} {bounds!r} must be [low, high] within [0, 1]")
    for m in (m for m in markers.values() if m.molecular):
        if m.molecular not in markers or not markers[m.molecular].is_molecular:
            problems.append(f"marker {m.key}: molecular {m.molecular!r} is no molecular marker")
    _fail(path, problems)
    return KnowledgeBase(
        path=path,
        entities=entities,
        entity_names={e: str((doc["entities"][e] or {}).get("name", e)) for e in entities},
        image_class_of=image_class_of,
        image_classes=image_classes,
        markers=markers,
        p_positive=p,
        sources=sources,
        groups=groups,
        redundancy=redundancy,
        scoring=scoring,
        priors=priors,
        default_prior=default_prior,
        clip=(float(clip[0]), float(clip[1])),
        molecular_clip=(float(molecular_clip[0]), float(molecular_clip[1])),
        extra={"prior_floor": floors},
        variants=variants,
        noted=noted,
        _alias_index=alias_index,
        _noted_index=noted_index,
    )


def _variants(doc: dict, entities: list[str], markers: dict, problems: list[str]) -> list[Variant]:
    """The ``variants:`` section, validated: known entities and markers, shares that leave
    the entity's own row a share."""
    out = []
    for entity, spec in doc.items():
        if entity not in entities:
            problems.append(f"variants: unknown entity {entity!r}")
            continue
        for key, v in (spec or {}).items():
            share, cells = v.get("share"), v.get("p") or {}
            if not isinstance(share, int | float) or not 0 < share < 1:
                problems.append(f"variants[{entity}][{key}]: share {share!r} must be in (0, 1)")
                continue
            p, sources = {}, {}
            for m, cell in cells.items():
                value = cell.get("p") if isinstance(cell, dict) else cell
                if m not in markers or not isinstance(value, int | float) or not 0 <= value <= 1:
                    problems.append(f"variants[{entity}][{key}]: bad marker or p {m!r}={value!r}")
                    continue
                p[m] = float(value)
                sources[m] = str(cell.get("source", "")) if isinstance(cell, dict) else ""
            out.append(Variant(entity, key, str(v.get("name", key)), float(share), p, sources))
        if sum(v.share for v in out if v.entity == entity) >= 1:
            problems.append(f"variants[{entity}]: shares sum to 1 or more")
    return out
