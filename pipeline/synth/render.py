"""Render level-0 pixels of a synthetic slide, one region at a time, without seams.

Everything is a deterministic function of slide coordinates: cells come from 64 µm blocks
seeded by (slide seed, block position), textures are periodic noise fields sampled by
position, and the coarse layout maps are interpolated bilinearly. So any region renders
the same whichever tiles are asked for, in whatever order or process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .layout import MAP_UM, Layout
from .morphology import Morphology
from .stain import INKS, Stain

BLOCK_UM = 64.0
MARGIN_UM = 48.0
TEXTURE_PX = 512


def _interp_matrix(start_px: float, n: int, mpp: float, size: int) -> tuple[np.ndarray, int]:
    """Bilinear interpolation weights from map cells to ``n`` pixels along one axis.

    Returns (weights of shape (n, k), first map index) for the k map cells involved.
    """
    pos = (start_px + np.arange(n) + 0.5) * mpp / MAP_UM - 0.5
    pos = np.clip(pos, 0, size - 1)
    i0 = np.floor(pos).astype(int)
    first = int(i0.min())
    last = min(size - 1, int(i0.max()) + 1)
    weights = np.zeros((n, last - first + 1), np.float32)
    frac = (pos - i0).astype(np.float32)
    weights[np.arange(n), i0 - first] += 1 - frac
    hi = np.minimum(i0 + 1, size - 1) - first
    weights[np.arange(n), hi] += frac
    return weights, first


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


class SlideRenderer:
    """Renders any region of one synthetic slide."""

    def __init__(self, layout: Layout, morph: Morphology, stain: Stain, mpp: float, seed: int):
        self.layout, self.m, self.stain, self.mpp, self.seed = layout, morph, stain, mpp, seed
        rng = np.random.default_rng([seed, 7])
        px = lambda um: max(0.5, um / mpp)  # noqa: E731
        self.textures = {
            "coarse": self._texture(rng, px(12.0)),
            "fine": self._texture(rng, px(1.2)),
            "grain": self._texture(rng, px(2.5)),
            "white": self._texture(rng, 0),
        }
        self._blocks: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self._max_blocks = 4 * int(layout.width_um / BLOCK_UM + 2)  # a few rows of blocks

    @staticmethod
    def _texture(rng: np.random.Generator, sigma: float) -> np.ndarray:
        noise = rng.normal(size=(TEXTURE_PX, TEXTURE_PX))
        if sigma:
            noise = ndimage.gaussian_filter(noise, sigma, mode="wrap")
        return ((noise - noise.mean()) / (noise.std() + 1e-9)).astype(np.float32)

    def _tex(self, name: str, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The periodic texture at level-0 pixels [x, x+w) x [y, y+h)."""
        tex = self.textures[name]
        x0, y0 = x % TEXTURE_PX, y % TEXTURE_PX
        if x0 + w <= TEXTURE_PX and y0 + h <= TEXTURE_PX:
            return tex[y0 : y0 + h, x0 : x0 + w]
        rows = np.arange(y, y + h) % TEXTURE_PX
        cols = np.arange(x, x + w) % TEXTURE_PX
        return tex[np.ix_(rows, cols)]

    # -- cells ------------------------------------------------------------------------------
    def _sample_map(self, name: str, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        grid = getattr(self.layout, name)
        i = np.minimum((y_um / MAP_UM).astype(int), grid.shape[0] - 1)  # positions are >= 0
        j = np.minimum((x_um / MAP_UM).astype(int), grid.shape[1] - 1)
        return grid[i, j]

    def _block_cells(self, bx: int, by: int) -> dict[str, np.ndarray]:
        """Cells of block (bx, by), cached: neighbouring tiles share their margin blocks."""
        key = (bx, by)
        cells = self._blocks.get(key)
        if cells is None:
            cells = self._blocks[key] = self._make_block_cells(bx, by)
            if len(self._blocks) > self._max_blocks:
                self._blocks.pop(next(iter(self._blocks)))
        return cells

    def _make_block_cells(self, bx: int, by: int) -> dict[str, np.ndarray]:
        """Cells whose centres fall in block (bx, by), in µm, independent of any tile."""
        lay = self.layout
        s = int(BLOCK_UM / MAP_UM)
        if not lay.tissue[by * s : (by + 1) * s + 1, bx * s : (bx + 1) * s + 1].any():
            empty = np.zeros(0)
            return {k: empty for k in ("x", "y", "a", "b", "theta", "amp", "kind", "inc", "vac")}
        m, rng = self.m, np.random.default_rng([self.seed, 11, bx, by])
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
            keep = self._sample_map("tissue", x, y) > rng.random(n)
            return x[keep], y[keep]

        def regions(x, y):
            st, ne, ha = (self._sample_map(k, x, y) for k in ("stroma", "necrosis", "haemorrhage"))
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
        cell = self._sample_map("cellularity", x, y)
        keep = rng.random(len(x)) < cell / 1.4
        x, y = x[keep], y[keep]
        st, ne, ha = regions(x, y)
        tumour = ~(st | ne | ha)
        x, y = x[tumour], y[tumour]
        n = len(x)
        scale = np.exp(rng.normal(0, m.size_cv, n))
        a = m.nucleus_a * scale
        b = m.nucleus_b * scale * np.exp(rng.normal(0, m.size_cv / 3, n))
        coh = self._sample_map("coherence", x, y)
        jitter = np.radians(m.jitter_deg) + (1 - coh) * np.pi
        theta = self._sample_map("angle", x, y) + rng.uniform(-1, 1, n) * jitter
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
        coh = self._sample_map("coherence", fx, fy)
        ftheta = self._sample_map("angle", fx, fy) + rng.uniform(-1, 1, nf) * (
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
        wave = np.pi * self._sample_map("angle", cx, cy) * 0.2
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

    def _cells(self, x: int, y: int, w: int, h: int) -> Cells:
        mpp = self.mpp
        x0, y0 = x * mpp - MARGIN_UM, y * mpp - MARGIN_UM
        x1, y1 = (x + w) * mpp + MARGIN_UM, (y + h) * mpp + MARGIN_UM
        blocks = [
            self._block_cells(bx, by)
            for by in range(int(y0 // BLOCK_UM), int(y1 // BLOCK_UM) + 1)
            for bx in range(int(x0 // BLOCK_UM), int(x1 // BLOCK_UM) + 1)
            if bx >= 0 and by >= 0
        ]
        cat = (
            {
                k: np.concatenate([b[k] for b in blocks]) if blocks else np.zeros(0)
                for k in blocks[0]
            }
            if blocks
            else {}
        )
        if not cat or not len(cat["x"]):
            z = np.zeros(0)
            return Cells(z, z, z, z, z, z, z.astype(int), z.astype(bool), z.astype(bool))
        reach = np.maximum(cat["a"], cat["b"])
        inside = (
            (cat["x"] + reach > x * mpp)
            & (cat["x"] - reach < (x + w) * mpp)
            & (cat["y"] + reach > y * mpp)
            & (cat["y"] - reach < (y + h) * mpp)
        )
        sel = {k: v[inside] for k, v in cat.items()}
        return Cells(
            x=sel["x"] / mpp - x,
            y=sel["y"] / mpp - y,
            a=np.maximum(sel["a"] / mpp, 0.6),
            b=np.maximum(sel["b"] / mpp, 0.6),
            theta=sel["theta"],
            amp=sel["amp"],
            kind=sel["kind"].astype(int),
            inclusion=sel["inc"].astype(bool),
            vacuole=sel["vac"].astype(bool),
        )

    # -- stamping ---------------------------------------------------------------------------
    @staticmethod
    def _stamp(target, cx, cy, a, b, theta, amp, p=2.0, rings=0.0) -> None:
        h, w = target.shape
        c, s = math.cos(theta), math.sin(theta)
        rx = int(abs(a * c) + abs(b * s)) + 2  # bounding box of the rotated rectangle
        ry = int(abs(a * s) + abs(b * c)) + 2
        x0, x1 = max(int(cx) - rx, 0), min(int(cx) + rx + 1, w)
        y0, y1 = max(int(cy) - ry, 0), min(int(cy) + ry + 1, h)
        if x0 >= x1 or y0 >= y1:
            return
        dx = np.arange(x0, x1, dtype=np.float32) + 0.5 - cx
        dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
        u = np.abs(dx * c + dy * s) / a
        v = np.abs(-dx * s + dy * c) / b
        q = u * u + v * v if p == 2.0 else u**p + v**p
        value = (1.0 - q) * min(a, b)  # soft edge about one pixel wide
        np.maximum(value, 0.0, out=value)
        np.minimum(value, 1.0, out=value)
        if rings:
            value = value * (0.55 + 0.45 * np.cos(2 * np.pi * np.sqrt(q) * rings))
        target[y0:y1, x0:x1] += amp * value

    # -- region -----------------------------------------------------------------------------
    def render(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of the level-0 region whose top-left pixel is (x, y)."""
        lay, m = self.layout, self.m
        wy, fy = _interp_matrix(y, h, self.mpp, lay.tissue.shape[0])
        wx, fx = _interp_matrix(x, w, self.mpp, lay.tissue.shape[1])
        ny, nx = wy.shape[1], wx.shape[1]

        def up(grid: np.ndarray) -> np.ndarray:
            return wy @ grid[fy : fy + ny, fx : fx + nx] @ wx.T

        maps = {k: up(v) for k, v in lay.maps.items()}
        tissue = maps["tissue"]
        ink = self._ink(maps["ink"]) + self._bubbles(x, y, w, h)
        if tissue.max() <= 0.001:
            empty = np.zeros((h, w), np.float32)
            return self.stain.to_rgb(empty, empty, empty, ink, self._tex("white", x, y, w, h))
        coarse, fine, grain = (self._tex(n, x, y, w, h) for n in ("coarse", "fine", "grain"))
        stroma, necrosis, haem = maps["stroma"], maps["necrosis"], maps["haemorrhage"]
        tumour = np.clip(1 - stroma - necrosis - haem, 0, 1)
        e = (
            tumour * m.e_level * (0.9 + 0.12 * coarse)
            + stroma * 0.75 * (0.9 + 0.1 * coarse)
            + necrosis * 0.9 * (0.85 + 0.2 * grain)
            + haem * 0.25
        )
        hx = 0.04 + 0.06 * necrosis * (1 + grain)
        blood = haem * 1.1 * np.clip(0.75 + 0.35 * grain, 0.2, None)
        nuclei = np.zeros((h, w), np.float32)
        cells = self._cells(x, y, w, h)
        blunt = m.blunt
        for i in range(len(cells.x)):
            cx, cy, a, b, th, amp, kind = (
                cells.x[i],
                cells.y[i],
                cells.a[i],
                cells.b[i],
                cells.theta[i],
                cells.amp[i],
                cells.kind[i],
            )
            if kind == 1:
                self._stamp(e, cx, cy, a, b, th, amp)
            elif kind == 2:  # mitosis: a dark, ragged metaphase plate
                self._stamp(nuclei, cx, cy, a * 0.45, b * 0.9, th + np.pi / 2, 2.4)
                self._stamp(nuclei, cx + b * 0.4, cy, a * 0.25, b * 0.6, th, 1.2)
            else:
                self._stamp(nuclei, cx, cy, a, b, th, amp, p=blunt if kind == 0 else 2.0)
                if cells.inclusion[i]:
                    self._stamp(nuclei, cx, cy, b * 0.45, b * 0.45, 0.0, -amp * 0.85)
                if cells.vacuole[i]:
                    d = a + 1.5 / self.mpp
                    self._stamp(
                        e,
                        cx + d * np.cos(th),
                        cy + d * np.sin(th),
                        1.8 / self.mpp,
                        1.8 / self.mpp,
                        0.0,
                        -0.5,
                    )
        nuclei = np.clip(nuclei, 0, None) * (0.8 + 0.25 * fine)
        hx = hx + nuclei
        e = np.clip(e, 0, None)
        self._structures(hx, e, blood, x, y, w, h)
        # crisp, ragged section edges: steepen the coarse mask and perturb it at fine scale
        tissue = np.clip((tissue - 0.5 + 0.12 * coarse) * 4 + 0.5, 0, 1)
        fold = 1 + 0.9 * maps["fold"]
        hx, e, blood = hx * tissue * fold, e * tissue * fold, blood * tissue
        return self.stain.to_rgb(hx, e, blood, ink, self._tex("white", x, y, w, h))

    def _structures(self, hx, e, blood, x, y, w, h) -> None:
        """Vessels (lumina and walls) and psammoma bodies, exact at full resolution."""
        lay, mpp = self.layout, self.mpp
        px = (x + np.arange(w) + 0.5) * mpp
        py = ((y + np.arange(h) + 0.5) * mpp)[:, None]
        for x0, y0, x1, y1, r in lay.vessels:
            lo_x, hi_x = min(x0, x1) - r - 6, max(x0, x1) + r + 6
            lo_y, hi_y = min(y0, y1) - r - 6, max(y0, y1) + r + 6
            if hi_x < px[0] or lo_x > px[-1] or hi_y < py[0, 0] or lo_y > py[-1, 0]:
                continue
            vx, vy = x1 - x0, y1 - y0
            length2 = vx * vx + vy * vy
            t = 0.0 if length2 == 0 else np.clip(((px - x0) * vx + (py - y0) * vy) / length2, 0, 1)
            d = np.hypot(px - (x0 + t * vx), py - (y0 + t * vy))
            lumen = np.clip(r - d, 0, 1)
            wall = np.clip(1 - np.abs(d - r - 2.0) / 2.5, 0, 1)
            for arr in (hx, e):
                arr *= 1 - lumen
            blood += lumen * 0.15
            e += wall * 0.45
            hx += wall * 0.25
        for cx, cy, r in lay.psammoma:
            if cx + r < px[0] or cx - r > px[-1] or cy + r < py[0, 0] or cy - r > py[-1, 0]:
                continue
            q = np.hypot(px - cx, py - cy) / r
            body = np.clip((1 - q) * r / mpp, 0, 1)
            rings = body * (0.6 + 0.4 * np.cos(2 * np.pi * q * 4))
            hx *= 1 - body
            e *= 1 - body
            hx += 1.3 * rings
            e += 0.35 * body

    def _ink(self, coverage: np.ndarray) -> np.ndarray | float:
        if coverage.max() <= 0.001:
            return 0.0
        return coverage[..., None] * (INKS[self.layout.ink_colour] * 0.8).astype(np.float32)

    def _bubbles(self, x, y, w, h) -> np.ndarray | float:
        out = 0.0
        mpp = self.mpp
        px = (x + np.arange(w) + 0.5) * mpp
        py = ((y + np.arange(h) + 0.5) * mpp)[:, None]
        for cx, cy, r in self.layout.bubbles:
            if (
                cx + r + 10 < px[0]
                or cx - r - 10 > px[-1]
                or cy + r + 10 < py[0, 0]
                or cy - r - 10 > py[-1, 0]
            ):
                continue
            ring = np.clip(1 - np.abs(np.hypot(px - cx, py - cy) - r) / 4.0, 0, 1)
            out = out + ring[..., None] * np.array([0.45, 0.45, 0.42], np.float32)
        return out
