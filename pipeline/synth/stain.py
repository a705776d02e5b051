"""Beer-Lambert stain model: optical densities of haematoxylin, eosin, blood and ink."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HAEMATOXYLIN = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.07, 0.99, 0.11])
BLOOD = np.array([0.12, 0.78, 0.62])
INKS = {"blue": np.array([1.85, 1.29, 0.47]), "green": np.array([1.85, 0.6, 1.15])}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@dataclass(frozen=True)
class Stain:
    """One slide's staining: colour vectors (OD per unit concentration) and glass colour."""

    h: np.ndarray
    e: np.ndarray
    blood: np.ndarray
    glass: np.ndarray
    noise: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> Stain:
        """Per-slide variation of hue, intensity, section thickness and background."""

        def jitter(v: np.ndarray, amount: float) -> np.ndarray:
            return _unit(np.clip(_unit(v) + rng.normal(0, amount, 3), 0.02, None))

        thickness = rng.uniform(0.8, 1.2)
        h = jitter(HAEMATOXYLIN, 0.06) * rng.uniform(0.7, 1.3) * thickness
        e = jitter(EOSIN, 0.08) * rng.uniform(0.6, 1.3) * thickness
        glass = np.clip(rng.uniform(232, 250) + rng.normal(0, 3, 3), 200, 255)
        return cls(h=h, e=e, blood=_unit(BLOOD) * thickness, glass=glass, noise=rng.uniform(1.5, 4))

    def to_rgb(
        self,
        h: np.ndarray,
        e: np.ndarray,
        blood: np.ndarray,
        ink: np.ndarray | float,
        noise: np.ndarray,
    ) -> np.ndarray:
        """RGB uint8 from concentration maps (each H x W), ink OD (H x W x 3) and unit noise."""
        out = np.empty((3, *h.shape), np.float32)
        for c in range(3):  # channel-first: plain 2-D arithmetic, no broadcasting over 3
            od = h * np.float32(self.h[c]) + e * np.float32(self.e[c])
            od += blood * np.float32(self.blood[c])
            if not np.isscalar(ink):
                od += ink[..., c]
            np.negative(od, out=od)
            np.exp(od, out=od)
            od *= np.float32(self.glass[c])
            od += noise * np.float32(self.noise)
            out[c] = od
        np.clip(out, 0, 255, out=out)
        return np.ascontiguousarray(out.astype(np.uint8).transpose(1, 2, 0))
