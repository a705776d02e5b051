"""Backbone registry: name → (feature extractor, feature dimension, input statistics).

* ``small_cnn``: four conv blocks, ~0.1 M parameters, fast enough for CPU demos;
* torchvision: ``resnet18/34/50``, ``efficientnet_b0``, ``convnext_tiny``,
  ``mobilenet_v3_small/large``, random or ImageNet weights. ImageNet weights come from the
  local torch hub cache only (never downloaded at run time); a missing file is an error
  saying where to put it;
* ``timm:<name>`` (when timm is installed), including Hugging Face hub names such as
  ``timm:hf-hub:MahmoodLab/UNI``, loaded offline from the HF cache or ``weights_path``.

``weights_path`` loads local weights from anywhere (``models.weights``: a file, a timm / HF
folder or ``package:NAME``), mapped by name, then by order and shape.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pipeline.core.errors import UsageError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class SmallCNN(nn.Module):
    """A compact CNN for CPU demos and tests (~0.1 M parameters, ~35 MMAC at 96 px):
    a stride-2 stem, then conv-BN-ReLU-pool blocks, global average pooling."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        channels = widths[0]
        for w in widths[1:]:
            layers += [
                nn.Conv2d(channels, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _torchvision(name: str, head: str) -> Callable[[bool], tuple[nn.Module, int]]:
    def build(pretrained: bool) -> tuple[nn.Module, int]:
        import torchvision

        weights = None
        if pretrained:
            weights = torchvision.models.get_model_weights(name).DEFAULT
            _require_cached(weights.url, name)
        model = torchvision.models.get_model(name, weights=weights)
        layer = _get(model, head)
        dim = (
            layer.in_features if isinstance(layer, nn.Linear) else _first_linear(layer).in_features
        )
        _set(model, head, nn.Identity())
        return model, dim

    return build


def _get(model: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


def _set(model: nn.Module, dotted: str, value: nn.Module) -> None:
    *parents, last = dotted.split(".")
    parent = _get(model, ".".join(parents)) if parents else model
    if last.isdigit():
        parent[int(last)] = value
    else:
        setattr(parent, last, value)


def _first_linear(module: nn.Module) -> nn.Linear:
    return next(m for m in module.modules() if isinstance(m, nn.Linear))


def _require_cached(url: str, name: str) -> None:
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not path.exists():
        raise UsageError(
            f"ImageNet weights for {name} are not in the local cache ({path}). fascicle never "
            f"downloads at run time: fetch {url} to that path (or set TORCH_HOME), or set "
            "model.pretrained: false, or give model.weights_path"
        )


TORCHVISION = {
    "resnet18": "fc",
    "resnet34": "fc",
    "resnet50": "fc",
    "efficientnet_b0": "classifier",
    "convnext_tiny": "classifier.2",
    "mobilenet_v3_small": "classifier",
    "mobilenet_v3_large": "classifier",
}


def _timm(name: str, pretrained: bool) -> tuple[nn.Module, int]:
    try:
        import timm
    except ImportError:
        raise UsageError(f"backbone timm:{name} needs timm: pip install 'fascicle[timm]'") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub name must come from the local cache
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except Exception as err:  # timm/hub raise many types for a missing model or file
        raise UsageError(
            f"cannot load timm model {name!r} offline ({type(err).__name__}: {err}). Put the "
            "weights in the Hugging Face cache (huggingface-cli download on a connected "
            "machine, then copy ~/.cache/huggingface) or give model.weights_path"
        ) from None
    return model, int(model.num_features)


def build_backbone(
    name: str,
    pretrained: bool = False,
    weights_path: str | None = None,
    weights_partial: bool = False,
) -> tuple[nn.Module, int, list[float] | None, list[float] | None]:
    """(module producing (B, D) features, D, mean, std) — mean/std None when not pretrained.
    ``weights_path``: any source ``models.weights`` reads (file, folder, ``package:``)."""
    if name == "small_cnn":
        model, dim = SmallCNN(), SmallCNN().out_dim
    elif name in TORCHVISION:
        model, dim = _torchvision(name, TORCHVISION[name])(pretrained)
    elif name.startswith("timm:"):
        model, dim = _timm(name.removeprefix("timm:"), pretrained)
    else:
        known = ", ".join(["small_cnn", *TORCHVISION, "timm:<name>"])
        raise UsageError(f"unknown backbone {name!r}; choose from {known}")
    if weights_path:
        import logging

        from .weights import load_weights

        _, report = load_weights(model, weights_path, partial=weights_partial)
        logging.getLogger(__name__).info("%s", report)
    stats = (IMAGENET_MEAN, IMAGENET_STD) if (pretrained or weights_path) else (None, None)
    return model, dim, *stats
