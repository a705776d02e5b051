"""Experiment configuration: YAML files into typed dataclasses, with dotted overrides.

Relative paths in a config are relative to the working directory, as on the command line.

``fascicle train --config configs/demo.yaml --trainer.max_epochs=3 --data.batch_size=16``.
An unknown key, in a file or an override, is an error naming the key and the known ones.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.core.classes import ClassScheme
from pipeline.core.errors import UsageError
from pipeline.core.resources import config_path
from pipeline.tiles.augment import AugmentConfig

CLASSES = ["leiomyosarcoma", "meningioma", "other_sarcoma"]


@dataclass
class DataConfig:
    manifest: str = ""
    tiles: str | None = None
    """A tile dataset instead of slides (``model.kind: probe``): a CSV with
    ``path,label,patient_id[,split,mpp]`` or a folder ``<label>/<patient>/<tile>``."""
    tile_mpp: float | None = None
    """µm/px of tiles whose CSV row gives none (needed to resample them to target_mpp)."""
    tiles_dir: str | None = None
    """Coordinates from an earlier ``fascicle tile`` with the same parameters; by default
    slides are tiled into ``<run>/tiles`` (resumable)."""
    classes: list[str] = field(default_factory=lambda: list(CLASSES))
    """The model's classes, named like manifest labels (or see label_map / one_vs_rest)."""
    one_vs_rest: str | None = None
    """A binary model: this label against every other (classes become [it, not_it])."""
    label_map: dict[str, str] | None = None
    """Manifest label → class, to fold several labels into one class."""
    positive_class: str | None = None
    """Binary models: the class whose AUROC and sensitivity are reported (default: first)."""
    target_mpp: float = 0.5
    tile_px: int = 224
    min_tissue: float = 0.5
    tiles_per_slide: int = 64
    """Training tiles drawn per slide and epoch (fresh each epoch), then class-balanced."""
    eval_tiles_per_slide: int = 128
    batch_size: int = 64
    num_workers: int = 2
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    tiling_workers: int = 2
    backend: str = "auto"


@dataclass
class ModelConfig:
    kind: str = "tile"
    """``tile`` (tile classifier, end to end), ``mil`` (attention MIL on frozen features) or
    ``probe`` (a linear probe on frozen features of a tile dataset)."""
    backbone: str = "small_cnn"
    pretrained: bool = False
    """ImageNet weights for torchvision backbones, from the local torch cache (never fetched)."""
    weights_path: str | None = None
    """Local weights for the backbone (e.g. a pathology foundation model): a file, a timm /
    Hugging Face folder or ``package:NAME[/file]``; keys mapped by name, then order and shape."""
    weights_partial: bool = False
    """Accept weights that leave some backbone tensors as initialised (refused by default)."""
    dropout: float = 0.1
    aggregator: str = "mean"
    features_dir: str | None = None
    """MIL: ``fascicle embed`` output; default ``<run>/features``."""
    encoder: str = "resnet18"
    """MIL and probe: the frozen encoder (its weights: ``pretrained`` or ``weights_path``)."""
    attention_dim: int = 128
    max_bag: int = 512
    probe: str = "linear"
    """``model.kind: probe``: ``linear`` (logistic regression) or ``mlp`` (one hidden layer)."""
    probe_hidden: int = 256
    ood_quantile: float = 0.95
    """Tiles scoring above this quantile of validation tiles are out of distribution."""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    class_weights: bool = False
    """Weight the loss by inverse class frequency (the sampler already balances classes)."""


@dataclass
class TrainerConfig:
    max_epochs: int = 10
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    deterministic: bool = False
    log_every_n_steps: int = 10
    limit_train_batches: float | int = 1.0
    limit_val_batches: float | int = 1.0
    monitor: str = "val/slide_balanced_accuracy"
    """The validation metric that picks the best epoch (any logged ``val/...``: slide_auroc_macro,
    loss, ...); ties go to the epoch with the lower validation loss."""
    monitor_mode: str | None = None
    """``max`` or ``min``; default: min for losses, max otherwise."""
    early_stopping_patience: int | None = None
    """Stop after this many validation epochs without a better selection score."""


@dataclass
class RunConfig:
    out: str = "runs/experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def scheme(self) -> ClassScheme:
        d = self.data
        return ClassScheme.build(d.classes, d.one_vs_rest, d.label_map, d.positive_class)

    def features_dir(self) -> Path:
        """Where ``fascicle embed`` writes and MIL training reads tile features."""
        m = self.model
        return Path(m.features_dir) if m.features_dir else Path(self.out) / "features"


def _build(cls: type, values: dict, where: str, source: str):
    if not isinstance(values, dict):
        raise UsageError(f"{source}: {where or 'the top level'} must be a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise UsageError(
            f"{source}: unknown config key {key!r}; known keys here: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, path, source)
        else:
            kwargs[name] = _coerce(hint, value, path, source)
    return cls(**kwargs)


def _coerce(hint, value, path: str, source: str):
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value  # float | int: 1 means one batch, 1.0 all of them (as in Lightning)
    for t in allowed:
        origin = typing.get_origin(t) or t
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin in (bool, str, list, dict) and isinstance(value, origin):
            return value
    raise UsageError(f"{source}: {path}={value!r} should be {hint}")


PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
STAIN_NORMALISATIONS = ("none", "macenko")
TILE_AGGREGATORS = ("mean", "top_k", "quantile", "vote")


def config_problems(c: RunConfig) -> list[str]:
    """Every value out of its range or set, each naming its key and what is allowed."""
    d, m, o, t, a = c.data, c.model, c.optim, c.trainer, c.augment
    checks = [
        (d.target_mpp > 0, "data.target_mpp must be > 0 (µm per pixel)"),
        (d.tile_px >= 16, "data.tile_px must be at least 16"),
        (0 <= d.min_tissue <= 1, "data.min_tissue must be between 0 and 1"),
        (d.tiles_per_slide >= 1, "data.tiles_per_slide must be at least 1"),
        (d.eval_tiles_per_slide >= 1, "data.eval_tiles_per_slide must be at least 1"),
        (d.batch_size >= 1, "data.batch_size must be at least 1"),
        (d.num_workers >= 0, "data.num_workers must be 0 or more"),
        (d.tiling_workers >= 1, "data.tiling_workers must be at least 1"),
        (0 <= d.val_fraction < 1, "data.val_fraction must be in [0, 1)"),
        (0 <= d.test_fraction < 1, "data.test_fraction must be in [0, 1)"),
        (d.backend in ("auto", "openslide", "tifffile"), "data.backend: auto|openslide|tifffile"),
        (all(isinstance(x, str) for x in d.classes), "data.classes must be names (strings)"),
        (
            a.stain_normalisation in STAIN_NORMALISATIONS,
            f"augment.stain_normalisation must be one of {', '.join(STAIN_NORMALISATIONS)}",
        ),
        (m.kind in ("tile", "mil", "probe"), "model.kind must be tile, mil or probe"),
        (m.kind != "probe" or bool(d.tiles), "model.kind probe needs data.tiles (a tile set)"),
        (m.probe in ("linear", "mlp") and m.probe_hidden >= 1, "model.probe: linear or mlp"),
        (
            not d.tiles or m.kind in ("probe", "tile"),
            "data.tiles (a tile dataset) trains model.kind probe or tile; MIL reads slides",
        ),
        (d.tile_mpp is None or d.tile_mpp > 0, "data.tile_mpp must be > 0 (µm per pixel)"),
        (
            not (d.tiles and d.manifest),
            "set data.manifest (slides) or data.tiles (a tile dataset), not both "
            "(--data.manifest='' clears a built-in config's manifest)",
        ),
        (
            m.kind == "mil" or m.aggregator in TILE_AGGREGATORS,
            f"model.aggregator must be one of {', '.join(TILE_AGGREGATORS)}",
        ),
        (0 <= m.dropout < 1, "model.dropout must be in [0, 1)"),
        (0 < m.ood_quantile < 1, "model.ood_quantile must be between 0 and 1"),
        (m.max_bag >= 1 and m.attention_dim >= 1, "model.max_bag and attention_dim must be >= 1"),
        (o.lr > 0, "optim.lr must be > 0"),
        (o.weight_decay >= 0 and o.warmup_epochs >= 0, "optim.weight_decay and warmup_epochs >= 0"),
        (0 <= o.label_smoothing < 1, "optim.label_smoothing must be in [0, 1)"),
        (t.max_epochs >= 1, "trainer.max_epochs must be at least 1"),
        (
            str(t.precision) in PRECISIONS,
            f"trainer.precision must be one of {', '.join(PRECISIONS)}",
        ),
        (
            t.num_nodes >= 1 and t.log_every_n_steps >= 1,
            "trainer.num_nodes, log_every_n_steps >= 1",
        ),
        (_batches_ok(t.limit_train_batches), "trainer.limit_train_batches: a count >= 1 or (0, 1]"),
        (_batches_ok(t.limit_val_batches), "trainer.limit_val_batches: a count >= 1 or (0, 1]"),
        (t.monitor.startswith("val/"), "trainer.monitor must be a val/ metric, e.g. val/loss"),
        (t.monitor_mode in (None, "min", "max"), "trainer.monitor_mode must be min or max"),
        (
            t.early_stopping_patience is None or t.early_stopping_patience >= 1,
            "trainer.early_stopping_patience must be at least 1",
        ),
    ]
    return [f"{message}" for ok, message in checks if not ok]


def _batches_ok(value: float | int) -> bool:
    return value >= 1 if isinstance(value, int) else 0 < value <= 1


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (a file, or a built-in by name: ``demo``, ``default``, ``mil``) and
    apply ``key.sub=value`` overrides (values parsed as YAML)."""
    doc: dict = {}
    path = config_path(path) if path else None
    source = str(path) if path else "defaults"
    if path:
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UsageError(f"{path}: cannot read the config ({err})") from None
    for item in overrides:
        key, sep, raw = item.removeprefix("--").partition("=")
        if not sep or not key:
            raise UsageError(f"override {item!r} must look like --section.key=value")
        node = doc
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None
    config = _build(RunConfig, doc, "", source)
    problems = config_problems(config)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise UsageError(f"{source}: {len(problems)} invalid value(s):\n{listing}")
    config.scheme()  # a bad class scheme fails here, naming the key
    if not config.data.manifest and not config.data.tiles:
        raise UsageError(
            f"{source}: data.manifest (a CSV of labelled slides) or data.tiles (a tile CSV or "
            "folder, with model.kind: probe) is required"
        )
    return config
