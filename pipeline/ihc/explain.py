"""``fascicle ihc --explain``: a marker's or an entity's numbers in the knowledge base, each
with its kind (DATA / ESTIMATE) and source."""

from __future__ import annotations

from pipeline.core.errors import UsageError
from pipeline.ihc.knowledge import KnowledgeBase, source_kind


def explain(kb: KnowledgeBase, name: str) -> str:
    """The knowledge base's row for an entity, or column for a marker, with every number's
    kind (DATA / ESTIMATE) and source (``fascicle ihc --explain``)."""
    marker = kb.resolve_marker(name)
    entity = name if name in kb.entities else None
    if marker is None and entity is None:
        found = {k for k, v in kb.entity_names.items() if name.lower() in v.lower()}
        entity = next(iter(found)) if len(found) == 1 else None
    if marker is None and entity is None:
        raise UsageError(
            f"{name!r} is no marker or entity of {kb.path.name}; entities: {', '.join(kb.entities)}"
        )
    pairs = [(e, marker) for e in kb.entities] if marker else [(entity, m) for m in kb.markers]
    title = kb.markers[marker].display if marker else kb.entity_names[entity]
    lines = [f"{title}: P(positive | entity), kind, source ({kb.path.name})"]
    for e, m in pairs:
        source = kb.sources.get((e, m), "")
        label = e if marker else kb.markers[m].display
        lines.append(f"  {label:<28}{kb.p(e, m):6.3f}  {source_kind(source):<8} {source}")
    kinds = [source_kind(kb.sources.get(p, "")) for p in pairs]
    for v in kb.variants:
        if marker:
            rows = [marker] if marker in v.p else []
        else:
            rows = list(v.p) if v.entity == entity else []
        if rows:
            lines.append(f"  variant {v.name} ({v.entity}, share {v.share:g}):")
        for m in rows:
            label = v.entity if marker else kb.markers[m].display
            kinds.append(source_kind(v.sources[m]))
            lines.append(f"    {label:<26}{v.p[m]:6.3f}  {kinds[-1]:<8} {v.sources[m]}")
    lines.append(f"{kinds.count('ESTIMATE')} of {len(kinds)} numbers here are estimates")
    return "\n".join(lines)
