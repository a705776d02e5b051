"""Whole-slide layout of a synthetic section, on a coarse grid (8 µm per cell).

Tissue pieces, regions (tumour, stroma, necrosis, haemorrhage), the orientation field of
the tumour's architecture, cellularity, and the artefacts tissue detection must cope with
(pen ink, a fold, an air bubble), plus vessels and psammoma bodies as exact geometry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from pipeline.synth.morphology import Morphology

MAP_UM = 8.0
ARTEFACT_RATES = {"pen": 0.35, "fold": 0.25, "bubble": 0.2}
"""Probability that a slide has each artefact."""


@dataclass
class Layout:
    """Maps on a ``MAP_UM`` grid plus object lists in µm."""

    width_um: float
    height_um: float
    tissue: np.ndarray
    stroma: np.ndarray
    necrosis: np.ndarray
    haemorrhage: np.ndarray
    angle: np.ndarray
    coherence: np.ndarray
    cellularity: np.ndarray
    fold: np.ndarray
    ink: np.ndarray
    ink_colour: str = "blue"
    vessels: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    """Capsules (x0, y0, x1, y1, radius) in µm; a round vessel has x0 == x1, y0 == y1."""
    psammoma: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    """Psammoma bodies (x, y, radius) in µm."""
    bubbles: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))

    @property
    def maps(self) -> dict[str, np.ndarray]:
        names = ("tissue", "stroma", "necrosis", "haemorrhage", "cellularity", "fold", "ink")
        return {n: getattr(self, n) for n in names}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to zero mean, unit standard deviation."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-9)


def _quantile_mask(values: np.ndarray, inside: np.ndarray, fraction: float) -> np.ndarray:
    if fraction <= 0 or not inside.any():
        return np.zeros_like(inside)
    threshold = np.quantile(values[inside], 1 - min(fraction, 0.95))
    return inside & (values > threshold)


def _soft(mask: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    return np.clip(ndimage.gaussian_filter(mask.astype(np.float32), sigma), 0, 1)


def _pieces(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    n = int(rng.integers(1, 4))
    tissue = np.zeros(shape, bool)
    wobble = _smooth_noise(rng, shape, sigma=max(h, w) / 14)
    for i in range(n):
        # pieces side by side along the long axis, each an irregular ellipse
        cx = w * (i + 0.5) / n + rng.normal(0, w * 0.03)
        cy = h * rng.uniform(0.4, 0.6)
        rx = w / n * rng.uniform(0.3, 0.42)
        ry = h * rng.uniform(0.28, 0.4)
        theta = rng.uniform(0, np.pi)
        dx, dy = xx - cx, yy - cy
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        r = (u / rx) ** 2 + (v / ry) ** 2
        tissue |= r + 0.35 * wobble < 1
    return ndimage.binary_opening(tissue, iterations=2)


def _angles(rng: np.random.Generator, m: Morphology, shape, mask) -> tuple[np.ndarray, np.ndarray]:
    """Orientation (radians) and its coherence (1 = ordered) for the architecture."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    pts = np.stack([xx.ravel(), yy.ravel()], 1) * MAP_UM
    coherence = np.ones(shape, np.float32)
    if m.architecture == "fascicles":
        spacing = m.fascicle_um
        n = max(4, int(w * h * MAP_UM**2 / spacing**2))
        seeds = rng.uniform(0, 1, (n, 2)) * (w * MAP_UM, h * MAP_UM)
        if m.wide_angles:
            base = rng.uniform(0, np.pi)
            angles = base + rng.integers(0, 2, n) * np.pi / 2 + rng.normal(0, np.radians(12), n)
        else:
            angles = rng.uniform(0, np.pi, n)
        # elongated cells: stretch space along each seed's angle via a rotated metric
        _, idx = cKDTree(seeds).query(pts)
        angle = angles[idx].reshape(shape)
    elif m.architecture == "storiform":
        spacing = 170.0
        n = max(4, int(w * h * MAP_UM**2 / spacing**2))
        centres = rng.uniform(0, 1, (n, 2)) * (w * MAP_UM, h * MAP_UM)
        _, idx = cKDTree(centres).query(pts)
        d = pts - centres[idx]
        radius = np.hypot(d[:, 0], d[:, 1])
        angle = (np.arctan2(d[:, 1], d[:, 0]) + np.pi / 2 + radius / 90.0).reshape(shape)
    else:  # whorls and patternless: slowly wandering orientation, weakly coherent
        angle = np.pi * _smooth_noise(rng, shape, sigma=12)
        coherence[:] = 0.0 if m.architecture == "patternless" else 0.35
        if m.architecture == "whorls":
            area_mm2 = mask.sum() * (MAP_UM / 1000) ** 2
            n = rng.poisson(m.whorls_per_mm2 * area_mm2)
            inside = np.argwhere(mask)
            for cy, cx in inside[rng.integers(0, len(inside), n)] if len(inside) else []:
                r = rng.uniform(35, 90) / MAP_UM
                dy, dx = yy - cy, xx - cx
                dist = np.hypot(dx, dy)
                within = dist < r
                angle[within] = np.arctan2(dy[within], dx[within]) + np.pi / 2
                coherence[within] = 1.0
    return angle.astype(np.float32), coherence


def _vessels(rng, m: Morphology, mask: np.ndarray, area_mm2: float) -> np.ndarray:
    inside = np.argwhere(mask)
    if not len(inside):
        return np.zeros((0, 5))
    rows = []
    for _ in range(rng.poisson(6 * area_mm2)):  # round vessels, some large (holes)
        cy, cx = (inside[rng.integers(len(inside))] + 0.5) * MAP_UM
        r = rng.uniform(6, 25) if rng.random() < 0.8 else rng.uniform(40, 110)
        rows.append((cx, cy, cx, cy, r))
    for _ in range(rng.poisson(m.staghorn_per_mm2 * area_mm2)):  # branching, dilated
        cy, cx = (inside[rng.integers(len(inside))] + 0.5) * MAP_UM
        for _ in range(rng.integers(2, 5)):
            theta = rng.uniform(0, 2 * np.pi)
            length = rng.uniform(40, 140)
            ex, ey = cx + length * np.cos(theta), cy + length * np.sin(theta)
            rows.append((cx, cy, ex, ey, rng.uniform(6, 16)))
            if rng.random() < 0.5:
                phi = theta + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
                fl = length * rng.uniform(0.3, 0.7)
                rows.append(
                    (ex, ey, ex + fl * np.cos(phi), ey + fl * np.sin(phi), rng.uniform(4, 9))
                )
    return np.array(rows, float).reshape(-1, 5)


def _ink(rng, tissue: np.ndarray) -> np.ndarray:
    """A marker-pen stroke on the glass beside the tissue (coverage 0..1)."""
    h, w = tissue.shape
    glass = ~ndimage.binary_dilation(tissue, iterations=6)
    ink = np.zeros(tissue.shape, np.float32)
    candidates = np.argwhere(glass)
    if not len(candidates):
        return ink
    y, x = candidates[rng.integers(len(candidates))].astype(float)
    heading = rng.uniform(0, 2 * np.pi)
    width = rng.uniform(60, 120) / MAP_UM / 2
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(40):
        if not (0 <= int(y) < h and 0 <= int(x) < w) or not glass[int(y), int(x)]:
            break
        ink = np.maximum(ink, (np.hypot(yy - y, xx - x) < width).astype(np.float32))
        heading += rng.normal(0, 0.15)
        x, y = x + 3 * np.cos(heading), y + 3 * np.sin(heading)
    return np.clip(ndimage.gaussian_filter(ink, 0.7), 0, 1) * (~tissue)


def make_layout(
    rng: np.random.Generator,
    width_um: float,
    height_um: float,
    m: Morphology,
    difficulty: float,
    artefacts: bool | Mapping[str, float] = True,
) -> Layout:
    """Random layout for one slide of ``width_um`` x ``height_um``.

    ``artefacts``: True for the usual rates (``ARTEFACT_RATES``), False for none, or a
    mapping of artefact name to probability.
    """
    rates = ARTEFACT_RATES if artefacts is True else (artefacts or {})
    shape = (max(8, round(height_um / MAP_UM)), max(8, round(width_um / MAP_UM)))
    tissue_mask = _pieces(rng, shape)
    area_mm2 = tissue_mask.sum() * (MAP_UM / 1000) ** 2
    non_tumour = 0.1 + 0.3 * difficulty
    stroma = _quantile_mask(_smooth_noise(rng, shape, 10), tissue_mask, 0.6 * non_tumour)
    rest = tissue_mask & ~stroma
    haem = _quantile_mask(_smooth_noise(rng, shape, 6), rest, 0.2 * non_tumour)
    rest &= ~haem
    necrosis = _quantile_mask(_smooth_noise(rng, shape, 8), rest, m.necrosis)
    if m.architecture == "whorls":  # lobules separated by thin fibrous septa
        lobules = _smooth_noise(rng, shape, 9)
        stroma |= tissue_mask & (np.abs(lobules) < 0.05)
    angle, coherence = _angles(rng, m, shape, tissue_mask & ~stroma)
    cellularity = np.clip(1 + 0.2 * _smooth_noise(rng, shape, 15), 0.6, 1.4).astype(np.float32)
    fold = np.zeros(shape, np.float32)
    ink = np.zeros(shape, np.float32)
    bubbles = np.zeros((0, 3))
    if rng.random() < rates.get("pen", 0.0):
        ink = _ink(rng, tissue_mask)
    if rng.random() < rates.get("fold", 0.0):  # a fold: a band of doubled tissue
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
        theta, c = rng.uniform(0, np.pi), rng.uniform(0.3, 0.7)
        d = (xx - c * shape[1]) * np.cos(theta) + (yy - c * shape[0]) * np.sin(theta)
        fold = (np.abs(d) < rng.uniform(8, 20)).astype(np.float32) * tissue_mask
    if rng.random() < rates.get("bubble", 0.0):
        bubbles = np.array(
            [[rng.uniform(0, width_um), rng.uniform(0, height_um), rng.uniform(150, 450)]]
        )
    inside = np.argwhere(tissue_mask & ~stroma)
    n_psam = rng.poisson(m.psammoma_per_mm2 * area_mm2) if len(inside) else 0
    psammoma = np.array(
        [
            (*((inside[rng.integers(len(inside))][::-1] + 0.5) * MAP_UM), rng.uniform(8, 22))
            for _ in range(n_psam)
        ],
        float,
    ).reshape(-1, 3)
    return Layout(
        width_um=width_um,
        height_um=height_um,
        tissue=_soft(tissue_mask),
        stroma=_soft(stroma),
        necrosis=_soft(necrosis),
        haemorrhage=_soft(haem),
        angle=angle,
        coherence=coherence,
        cellularity=cellularity,
        fold=_soft(fold.astype(bool), 1.5),
        ink=ink,
        ink_colour=str(rng.choice(["blue", "green"])),
        vessels=_vessels(rng, m, tissue_mask, area_mm2),
        psammoma=psammoma,
        bubbles=bubbles,
    )
