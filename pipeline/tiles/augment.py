"""Tile transforms (albumentations 2.0.8): flips, rotations, H&E stain jitter, colour, blur,
optional Macenko stain normalisation, then per-channel normalisation to a CHW tensor."""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import numpy as np
from albumentations.pytorch import ToTensorV2


@dataclass
class AugmentConfig:
    flips: bool = True
    rot90: bool = True
    hed_jitter: float = 0.05
    """Std of the multiplicative/additive perturbation of haematoxylin, eosin and DAB."""
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    blur: float = 0.1
    """Probability of a light Gaussian blur."""
    stain_normalisation: str = "none"
    """``none`` or ``macenko`` (reference from the training tiles)."""


# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB) in optical density
RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32
)
RGB_FROM_HED /= np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)


def _to_od(image: np.ndarray) -> np.ndarray:
    return -np.log((image.astype(np.float32) + 1.0) / 256.0)


def _from_od(od: np.ndarray) -> np.ndarray:
    return np.clip(256.0 * np.exp(-od) - 1.0, 0, 255).astype(np.uint8)


class HEDJitter(A.ImageOnlyTransform):
    """Perturb stain concentrations: h' = h·α + β per stain, α ~ N(1, σ), β ~ N(0, σ)."""

    def __init__(self, sigma: float = 0.05, p: float = 0.5):
        super().__init__(p=p)
        self.sigma = sigma

    def get_params_dependent_on_data(self, params, data):
        rng = self.random_generator
        return {"alpha": rng.normal(1, self.sigma, 3), "beta": rng.normal(0, self.sigma, 3)}

    def apply(self, img, alpha=None, beta=None, **params):
        hed = _to_od(img).reshape(-1, 3) @ HED_FROM_RGB
        hed = hed * alpha.astype(np.float32) + beta.astype(np.float32)
        return _from_od((hed @ RGB_FROM_HED).reshape(img.shape))


class Macenko:
    """Macenko et al. (2009) stain normalisation to a reference estimated from tiles.

    ``fit`` finds the two stain vectors as the extreme angles of the optical-density plane of
    tissue pixels and the 99th-percentile concentrations; ``__call__`` maps a tile onto the
    reference. Parameters are plain lists so they travel in checkpoints.
    """

    def __init__(
        self,
        stains: list | None = None,
        max_conc: list | None = None,
        beta: float = 0.15,
        alpha: float = 1.0,
    ):
        self.stains = None if stains is None else np.asarray(stains, np.float32)
        self.max_conc = None if max_conc is None else np.asarray(max_conc, np.float32)
        self.beta, self.alpha = beta, alpha

    def _estimate(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        od = _to_od(image).reshape(-1, 3)
        od = od[(od > self.beta).all(axis=1)]
        if len(od) < 50:
            return None
        _, vectors = np.linalg.eigh(np.cov(od.T))
        plane = vectors[:, 1:3]
        proj = od @ plane
        angles = np.arctan2(proj[:, 1], proj[:, 0])
        lo, hi = np.percentile(angles, (self.alpha, 100 - self.alpha))
        v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
        v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
        stains = np.array([v1, v2] if v1[0] > v2[0] else [v2, v1], np.float32)  # H first
        stains *= np.sign(stains.sum(axis=1, keepdims=True))
        conc = np.linalg.lstsq(stains.T, od.T, rcond=None)[0]
        return stains, np.percentile(conc, 99, axis=1).astype(np.float32)

    def fit(self, tiles: list[np.ndarray]) -> Macenko:
        estimate = self._estimate(np.concatenate([t.reshape(-1, 3) for t in tiles])[None])
        if estimate is None:
            raise ValueError("not enough stained pixels to fit Macenko normalisation")
        self.stains, self.max_conc = estimate
        return self

    def __call__(self, image: np.ndarray) -> np.ndarray:
        estimate = self._estimate(image)
        if estimate is None or self.stains is None:
            return image
        stains, max_conc = estimate
        od = _to_od(image).reshape(-1, 3)
        conc = np.linalg.lstsq(stains.T, od.T, rcond=None)[0]
        conc *= (self.max_conc / np.maximum(max_conc, 1e-6))[:, None]
        return _from_od((conc.T @ self.stains).reshape(image.shape))

    def state(self) -> dict:
        return {"stains": self.stains.tolist(), "max_conc": self.max_conc.tolist()}


class _Normalise(A.ImageOnlyTransform):
    def __init__(self, normaliser: Macenko):
        super().__init__(p=1.0)
        self.normaliser = normaliser

    def apply(self, img, **params):
        return self.normaliser(img)


def build_transform(
    config: AugmentConfig,
    mean: list[float],
    std: list[float],
    train: bool,
    macenko: dict | None = None,
    seed: int | None = None,
) -> A.Compose:
    """The training (augmenting) or evaluation transform.

    albumentations keeps its own random state: ``seed`` makes augmentation reproducible in
    one process, and ``pipeline.tiles.dataset.worker_init`` gives each DataLoader worker its
    own seed.
    """
    steps: list = []
    if macenko:
        steps.append(_Normalise(Macenko(**macenko)))
    if train:
        if config.flips:
            steps += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
        if config.rot90:
            steps.append(A.RandomRotate90(p=0.5))
        if config.hed_jitter > 0:
            steps.append(HEDJitter(config.hed_jitter, p=0.8))
        if config.brightness or config.contrast or config.saturation:
            steps.append(
                A.ColorJitter(
                    brightness=config.brightness,
                    contrast=config.contrast,
                    saturation=config.saturation,
                    hue=0.0,
                    p=0.8,
                )
            )
        if config.blur > 0:
            steps.append(A.GaussianBlur(blur_limit=(3, 5), p=config.blur))
    steps += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps, seed=seed)
