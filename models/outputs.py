"""What every fascicle model gives the pipeline, whatever its kind.

``forward_tiles(images)`` maps a batch of normalised tiles to named tensors (``features``
always; ``probs`` when the model scores tiles) and ``forward_slide(outputs)`` maps one slide's
stacked tile outputs (only the keys named in ``slide_inputs``) to a ``SlideOutput``. The
pipeline runs every model through these two calls and never branches on the model kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


@dataclass
class SlideOutput:
    tile_probs: np.ndarray
    """(N, K) per-tile class probabilities (for MIL: the slide's, repeated)."""
    slide_probs: np.ndarray | None = None
    """(K,) when the model pools tiles itself; None: aggregate ``tile_probs``."""
    attention: np.ndarray | None = None
    """(N,) attention weights, for models that have them."""
    ood: np.ndarray | None = None
    """(N,) out-of-distribution scores, for models with a fitted detector."""


class SlideModel(Protocol):
    classes: list[str]
    slide_inputs: tuple[str, ...]

    def forward_tiles(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def forward_slide(self, outputs: dict[str, np.ndarray]) -> SlideOutput: ...
