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
        ink: np.ndarray | None,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """RGB uint8 from concentration maps (each H x W)."""
        od = h[..., None] * self.h + e[..., None] * self.e + blood[..., None] * self.blood
        if ink is not None:
            od += ink
        rgb = self.glass * np.exp(-od)
        rgb += rng.normal(0, self.noise, rgb.shape[:2])[..., None]
        return np.clip(rgb, 0, 255).astype(np.uint8)
