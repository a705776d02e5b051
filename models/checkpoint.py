"""The exported model file (``model.ckpt``): weights plus everything predict needs.

``{"format": "fascicle-model", "format_version": 1, "hyper_parameters": {...},
"state_dict": {...}}``, saved with ``torch.save`` and loaded with
``torch.load(weights_only=True)``: a model file can never run code. The hyper-parameters are
a ``ModelMeta`` stored flat: classes, target mpp, tile px, normalisation, backbone,
aggregator, calibration temperature, training manifest hash and package version.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import UsageError

from .meta import ModelMeta

FORMAT = "fascicle-model"
FORMAT_VERSION = 1


class ModelError(UsageError):
    """A model file that cannot be used; the message names the file and the problem."""


def save_model(path: str | Path, model: nn.Module, meta: ModelMeta) -> Path:
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hyper_parameters": meta.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_model_file(path: str | Path) -> tuple[ModelMeta, dict]:
    """The metadata and state dict of a model file (no model built), validated."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelError(
            f"{path}: not a fascicle model file, or one that would need to run code to load "
            f"({type(err).__name__}); use the model.ckpt that fascicle train writes"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(
            f"{path}: not a fascicle model file (use the model.ckpt that train writes)"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ModelError(
            f"{path}: made by a newer fascicle (format {payload['format_version']}); upgrade"
        )
    try:
        meta = ModelMeta.from_dict(payload.get("hyper_parameters") or {})
    except (TypeError, ValueError) as err:
        raise ModelError(f"{path}: {err}") from None
    return meta, payload.get("state_dict") or {}


def read_meta(path: str | Path) -> ModelMeta:
    """Just the metadata of a model file."""
    return read_model_file(path)[0]


def build_model(meta: ModelMeta) -> nn.Module:
    """An untrained model of the kind ``meta`` describes (weights not loaded)."""
    if meta.kind == "mil":
        from .mil import MILBundle

        return MILBundle(meta)
    from .tile_net import TileNet

    return TileNet(meta, load_weights=False)


def load_model(path: str | Path) -> tuple[nn.Module, ModelMeta]:
    """Build the model from a model file, in eval mode, with its metadata."""
    meta, state = read_model_file(path)
    model = build_model(meta)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelError(f"{path}: weights do not fit the described model ({err})") from None
    return model.eval(), meta
