"""The exported model file (``model.ckpt``): weights plus everything predict needs.

``{"format": "fascicle-model", "format_version": 1, "hyper_parameters": {...},
"state_dict": {...}}``, saved with ``torch.save`` and loaded with
``torch.load(weights_only=True)``: a model file can never run code. Hyper-parameters carry
the classes, target mpp, tile px, normalisation, backbone, aggregator, calibration
temperature, training manifest hash and package version.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.atomic import atomic_path
from pipeline.errors import UsageError

FORMAT = "fascicle-model"
FORMAT_VERSION = 1
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


class ModelError(UsageError):
    """A model file that cannot be used; the message names the file and the problem."""


def save_model(path: str | Path, model: nn.Module, hyper_parameters: dict) -> Path:
    missing = [k for k in REQUIRED if k not in hyper_parameters]
    if missing:
        raise ValueError(f"hyper-parameters lack {', '.join(missing)}")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hyper_parameters": hyper_parameters,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_model_file(path: str | Path) -> dict:
    """The validated payload of a model file (no model built)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelError(
            f"{path}: not a fascicle model file or not loadable without running code ({err}); "
            "export one with fascicle train"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(
            f"{path}: not a fascicle model file (use the model.ckpt that train writes)"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ModelError(
            f"{path}: made by a newer fascicle (format {payload['format_version']}); upgrade"
        )
    h = payload.get("hyper_parameters") or {}
    missing = [k for k in REQUIRED if k not in h]
    if missing:
        raise ModelError(f"{path}: model metadata lacks {', '.join(missing)}")
    return payload


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Build the model from a model file, in eval mode, with its hyper-parameters."""
    payload = read_model_file(path)
    h = payload["hyper_parameters"]
    if h["kind"] == "tile":
        from .tile_classifier import TileClassifier

        model: nn.Module = TileClassifier(h, load_weights=False)
    elif h["kind"] == "mil":
        from .mil import MILBundle

        model = MILBundle(h)
    else:
        raise ModelError(f"{path}: unknown model kind {h['kind']!r}")
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise ModelError(f"{path}: weights do not fit the described model ({err})") from None
    return model.eval(), h
