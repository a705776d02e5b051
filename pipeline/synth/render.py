"""Render level-0 pixels of a synthetic slide, one region at a time, without seams.

Everything is a deterministic function of slide coordinates: cells come from 64 µm blocks
seeded by (slide seed, block position), textures are periodic noise fields sampled by
position, and the coarse layout maps are interpolated bilinearly. So any region renders
the same whichever tiles are asked for, in whatever order or process.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from pipeline.synth.cells import BLOCK_UM, Cells, block_cells
from pipeline.synth.layout import MAP_UM, Layout
from pipeline.synth.morphology import Morphology
from pipeline.synth.stain import INKS, Stain

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
    def _block_cells(self, bx: int, by: int) -> dict[str, np.ndarray]:
        """Cells of block (bx, by), cached: neighbouring tiles share their margin blocks."""
        key = (bx, by)
        cells = self._blocks.get(key)
        if cells is None:
            cells = self._blocks[key] = block_cells(self.layout, self.m, self.seed, bx, by)
            if len(self._blocks) > self._max_blocks:
                self._blocks.pop(next(iter(self._blocks)))
        return cells

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
