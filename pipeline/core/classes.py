"""Class schemes: which manifest labels a model's classes stand for.

Three, four or any number of classes named like the labels; a label map that folds several
labels into one class; or one-vs-rest, where every label but the positive one belongs to
``not_<positive>``. Binary schemes name their positive class (for AUROC and sensitivity).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.core.errors import UsageError


@dataclass(frozen=True)
class ClassScheme:
    classes: list[str]
    label_map: dict[str, str] = field(default_factory=dict)
    """Manifest label → class, for labels not named like a class."""
    rest: str | None = None
    """The class of every other label (one-vs-rest), or None: other labels are errors."""
    positive: str | None = None

    @classmethod
    def build(
        cls,
        classes: list[str],
        one_vs_rest: str | None = None,
        label_map: dict[str, str] | None = None,
        positive: str | None = None,
        where: str = "data",
    ) -> ClassScheme:
        if one_vs_rest:
            rest = f"not_{one_vs_rest}"
            return cls([one_vs_rest, rest], dict(label_map or {}), rest, one_vs_rest)
        classes = [str(c) for c in classes]
        problems = []
        if len(classes) < 2 or len(set(classes)) != len(classes):
            problems.append(f"{where}.classes needs two or more distinct classes, got {classes}")
        wrong = {k: v for k, v in (label_map or {}).items() if v not in classes}
        if wrong:
            problems.append(f"{where}.label_map maps to unknown class(es) {sorted(wrong.values())}")
        if positive is not None and positive not in classes:
            problems.append(f"{where}.positive_class {positive!r} is not one of {classes}")
        if problems:
            raise UsageError("; ".join(problems))
        if positive is None and len(classes) == 2:
            positive = classes[0]
        return cls(classes, dict(label_map or {}), None, positive)

    def class_of(self, label: str, rest: bool = True) -> str | None:
        """The class of a manifest label; None when the scheme has none for it."""
        if label in self.classes:
            return label
        if label in self.label_map:
            return self.label_map[label]
        return self.rest if rest else None

    def index_of(self, label: str | None) -> int:
        """The class index of a label, -1 for none."""
        found = self.class_of(label) if label is not None else None
        return self.classes.index(found) if found is not None else -1

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive) if self.positive else 0

    def describe_labels(self) -> str:
        """How labels map, for messages."""
        parts = [f"{k} -> {v}" for k, v in self.label_map.items()]
        if self.rest:
            parts.append(f"any other label -> {self.rest}")
        return f"classes {', '.join(self.classes)}" + (f" ({'; '.join(parts)})" if parts else "")
