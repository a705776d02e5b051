"""The cells of a synthetic slide: objects in 64 µm blocks, each block a deterministic
function of (slide seed, block position), so any region's cells are the same whichever
tiles are rendered, in whatever order or process."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.synth.layout import MAP_UM, Layout
from pipeline.synth.morphology import Morphology

BLOCK_UM = 64.0


@dataclass
class Cells:
    """Objects to stamp, all in level-0 pixel units relative to the region origin."""

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    amp: np.ndarray
    kind: np.ndarray
    """0 nucleus, 1 fibre (eosin), 2 mitosis, 3 giant lobe, 4 debris, 5 ghost nucleus."""
    inclusion: np.ndarray
    vacuole: np.ndarray


def sample_map(layout: Layout, name: str, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
    """The layout map ``name`` at positions in µm (nearest map cell)."""
    grid = getattr(layout, name)
    i = np.minimum((y_um / MAP_UM).astype(int), grid.shape[0] - 1)  # positions are >= 0
    j = np.minimum((x_um / MAP_UM).astype(int), grid.shape[1] - 1)
    return grid[i, j]


def block_cells(
    layout: Layout, morph: Morphology, seed: int, bx: int, by: int
) -> dict[str, np.ndarray]:
    """Cells whose centres fall in block (bx, by), in µm, independent of any tile."""
    lay = layout
    s = int(BLOCK_UM / MAP_UM)
    if not lay.tissue[by * s : (by + 1) * s + 1, bx * s : (bx + 1) * s + 1].any():
        empty = np.zeros(0)
        return {k: empty for k in ("x", "y", "a", "b", "theta", "amp", "kind", "inc", "vac")}
    m, rng = morph, np.random.default_rng([seed, 11, bx, by])
    area = BLOCK_UM**2
    out: dict[str, list] = {
        k: [] for k in ("x", "y", "a", "b", "theta", "amp", "kind", "inc", "vac")
    }

    def add(n, x, y, a, b, theta, amp, kind, inc=None, vac=None):
        out["x"].append(x)
        out["y"].append(y)
        out["a"].append(a)
        out["b"].append(b)
        out["theta"].append(theta)
        out["amp"].append(amp)
        out["kind"].append(np.broadcast_to(np.asarray(kind), (n,)).copy())
        out["inc"].append(inc if inc is not None else np.zeros(n, bool))
        out["vac"].append(vac if vac is not None else np.zeros(n, bool))

    def positions(density: float):
        n = rng.poisson(density * area)
        x = (bx + rng.random(n)) * BLOCK_UM
        y = (by + rng.random(n)) * BLOCK_UM
        keep = sample_map(layout, "tissue", x, y) > rng.random(n)
        return x[keep], y[keep]

    def regions(x, y):
        st, ne, ha = (sample_map(layout, k, x, y) for k in ("stroma", "necrosis", "haemorrhage"))
        u = rng.random(len(x))
        return st > u, (ne > u) & ~(st > u), (ha > u) & ~(st > u) & ~(ne > u)

    def placed(density: float, region: str):
        """Positions in ``region`` (tumour, stroma or necrosis) at ``density`` per µm²."""
        x, y = positions(density)
        st, ne, ha = regions(x, y)
        keep = {"tumour": ~(st | ne | ha), "stroma": st, "necrosis": ne}[region]
        return x[keep], y[keep]

    # tumour nuclei (thinned where stroma, necrosis or haemorrhage take over)
    x, y = positions(m.density * 1.4)
    cell = sample_map(layout, "cellularity", x, y)
    keep = rng.random(len(x)) < cell / 1.4
    x, y = x[keep], y[keep]
    st, ne, ha = regions(x, y)
    tumour = ~(st | ne | ha)
    x, y = x[tumour], y[tumour]
    n = len(x)
    scale = np.exp(rng.normal(0, m.size_cv, n))
    a = m.nucleus_a * scale
    b = m.nucleus_b * scale * np.exp(rng.normal(0, m.size_cv / 3, n))
    coh = sample_map(layout, "coherence", x, y)
    jitter = np.radians(m.jitter_deg) + (1 - coh) * np.pi
    theta = sample_map(layout, "angle", x, y) + rng.uniform(-1, 1, n) * jitter
    amp = m.h_amp * np.exp(rng.normal(0, m.h_cv, n))
    special = rng.random(n)
    kind = np.where(special < m.mitosis, 2, 0)
    add(
        n,
        x,
        y,
        a,
        b,
        theta,
        amp,
        kind,
        rng.random(n) < m.pseudo_inclusion,
        rng.random(n) < m.vacuole,
    )
    # bizarre giant nuclei: two or three overlapping large lobes
    giants = np.flatnonzero(rng.random(n) < m.giant)
    for i in giants:
        k = rng.integers(2, 4)
        add(
            k,
            x[i] + rng.normal(0, 5, k),
            y[i] + rng.normal(0, 5, k),
            rng.uniform(8, 16, k),
            rng.uniform(5, 9, k),
            rng.uniform(0, np.pi, k),
            np.full(k, 1.3 * m.h_amp),
            3,
        )
    # fibres: eosinophilic cytoplasm (tumour) and collagen (stroma)
    fx, fy = placed(m.fibre_density, "tumour")
    nf = len(fx)
    coh = sample_map(layout, "coherence", fx, fy)
    ftheta = sample_map(layout, "angle", fx, fy) + rng.uniform(-1, 1, nf) * (
        np.radians(m.jitter_deg) + (1 - coh) * np.pi
    )
    add(
        nf,
        fx,
        fy,
        m.fibre_len * rng.uniform(0.6, 1.4, nf),
        m.fibre_width * rng.uniform(0.7, 1.3, nf),
        ftheta,
        m.fibre_amp * rng.uniform(0.5, 1.5, nf),
        1,
    )
    cx, cy = placed(0.003, "stroma")
    nc = len(cx)
    wave = np.pi * sample_map(layout, "angle", cx, cy) * 0.2
    add(
        nc,
        cx,
        cy,
        rng.uniform(20, 45, nc),
        rng.uniform(1.5, 3.0, nc),
        wave + rng.normal(0, 0.25, nc),
        rng.uniform(0.25, 0.45, nc),
        1,
    )
    sx, sy = placed(0.0005, "stroma")
    ns = len(sx)
    add(
        ns,
        sx,
        sy,
        rng.uniform(5, 8, ns),
        rng.uniform(0.9, 1.3, ns),
        rng.normal(0, 0.3, ns),
        np.full(ns, 0.9),
        0,
    )
    # necrosis: nuclear dust and ghost nuclei
    dx, dy = placed(0.006, "necrosis")
    nd = len(dx)
    add(
        nd,
        dx,
        dy,
        rng.uniform(0.6, 1.4, nd),
        rng.uniform(0.6, 1.4, nd),
        np.zeros(nd),
        rng.uniform(1.0, 1.8, nd),
        4,
    )
    gx, gy = placed(0.0015, "necrosis")
    ng = len(gx)
    add(
        ng,
        gx,
        gy,
        rng.uniform(3, 6, ng),
        rng.uniform(2.5, 4, ng),
        rng.uniform(0, np.pi, ng),
        np.full(ng, 0.25),
        5,
    )
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}
