"""``ModelMeta``: what a model file says about its model, typed, read and written here only.

The fields are stored flat as the model file's ``hyper_parameters`` (format version 1), so
files written before this class existed load unchanged; keys this version does not know are
kept in ``extra`` and written back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pipeline.core.classes import ClassScheme

REQUIRED = (
    "kind",
    "classes",
    "target_mpp",
    "tile_px",
    "mean",
    "std",
    "backbone",
    "aggregator",
    "temperature",
    "package_version",
)
KINDS = ("tile", "mil")


@dataclass
class ModelMeta:
    kind: str
    """``tile`` (tile classifier) or ``mil`` (frozen encoder + attention MIL)."""
    classes: list[str]
    target_mpp: float
    tile_px: int
    mean: list[float]
    std: list[float]
    backbone: str
    aggregator: str
    temperature: float
    package_version: str
    min_tissue: float = 0.5
    macenko: dict | None = None
    """Macenko reference stain state, or None when tiles are not stain-normalised."""
    pretrained: bool = False
    weights_path: str | None = None
    weights_partial: bool = False
    dropout: float = 0.0
    head_hidden: int | None = None
    """Tile models: width of a hidden ReLU layer in the head (an MLP probe); None: linear."""
    train_class_priors: list[float] | None = None
    class_weights: list[float] | None = None
    label_smoothing: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    manifest_sha256: str | None = None
    seed: int | None = None
    val_slide_metrics: dict | None = None
    encoder_source: str | None = None
    """MIL: where the frozen encoder's weights came from."""
    feature_dim: int | None = None
    attention_dim: int = 128
    max_bag: int | None = None
    label_map: dict | None = None
    """Manifest label → class for labels not named like a class (see ``ClassScheme``)."""
    rest_class: str | None = None
    """One-vs-rest: the class of every label but the positive one."""
    positive_class: str | None = None
    class_balance: list[float] | None = None
    """The class balance the sampler trained at (None in older files: they balanced too)."""
    calibration: dict | None = None
    """How the temperature was fitted (on slides, on tiles, or not) and ECE before/after."""
    conformal_scores: list[float] | None = None
    """Nonconformity (1 − p(true class)) of calibration slides, for prediction sets."""
    ood: dict | None = None
    """Out-of-distribution detector settings (its tensors are in the state dict)."""
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict) -> ModelMeta:
        """From stored hyper-parameters; raises ``ValueError`` naming what is missing or wrong."""
        missing = [k for k in REQUIRED if k not in values]
        if missing:
            raise ValueError(f"model metadata lacks {', '.join(missing)}")
        if values["kind"] not in KINDS:
            raise ValueError(f"unknown model kind {values['kind']!r} (known: {', '.join(KINDS)})")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        meta = cls(**{k: v for k, v in values.items() if k in known})
        meta.extra = {k: v for k, v in values.items() if k not in known}
        meta.classes = [str(c) for c in meta.classes]
        problems = [
            message
            for ok, message in (
                (len(meta.classes) >= 2, "needs two or more classes"),
                (isinstance(meta.tile_px, int) and meta.tile_px >= 16, "tile_px must be >= 16"),
                (meta.target_mpp > 0, "target_mpp must be > 0"),
                (meta.temperature > 0, "temperature must be > 0"),
                (len(meta.mean) == 3 and len(meta.std) == 3, "mean and std need 3 values"),
                (all(v > 0 for v in meta.std), "std values must be > 0"),
            )
            if not ok
        ]
        if problems:
            raise ValueError("invalid model metadata: " + "; ".join(problems))
        return meta

    def to_dict(self) -> dict:
        """Plain values only (the model file loads with ``weights_only=True``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**out, **self.extra}

    def scheme(self) -> ClassScheme:
        return ClassScheme(self.classes, self.label_map or {}, self.rest_class, self.positive_class)

    def balance(self) -> dict[str, float]:
        """Class → the share the model was trained at (uniform when not recorded)."""
        values = self.class_balance or [1.0] * len(self.classes)
        total = sum(values)
        return {c: v / total for c, v in zip(self.classes, values, strict=True)}

    @property
    def pools_tiles(self) -> bool:
        """True when the model pools a slide's tiles itself (attention MIL)."""
        return self.kind == "mil"
