"""The model's view of a slide, drawn over the Deep Zoom tiles: per-tile class map, one heat
layer per class probability, MIL attention, the tile grid (PNG tiles with transparency), and
the tissue outline (polylines in level-0 pixels).

Read from a predicted slide's ``tiles.csv``; colours: Okabe-Ito for classes (as the static
heatmap), viridis for probabilities and attention (perceptually uniform, colour-blind safe).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.prediction.outputs import COLOURS, OOD_COLOUR
from pipeline.viewer.pyramid import TILE, SlidePyramid

HEAT_ALPHA = 150


@dataclass
class TileTable:
    """Per-tile predictions of one slide (level-0 boxes)."""

    x: np.ndarray
    y: np.ndarray
    size: np.ndarray
    probs: np.ndarray
    classes: list[str]
    attention: np.ndarray | None = None
    ood: np.ndarray | None = None
    _colours: dict = field(default_factory=dict, repr=False)
    """RGBA per tile by layer, worked out once (every overlay tile of a layer uses them)."""

    @classmethod
    def read(cls, path: Path) -> TileTable:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        classes = [k[5:] for k in (rows[0] if rows else {}) if k.startswith("prob_")]

        def column(name: str, kind=float) -> np.ndarray:
            return np.array([kind(r[name]) for r in rows])

        has = set(rows[0]) if rows else set()
        return cls(
            x=column("x", int),
            y=column("y", int),
            size=column("width", int),
            probs=np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows]).reshape(
                len(rows), len(classes)
            ),
            classes=classes,
            attention=column("attention") if "attention" in has else None,
            ood=column("ood", int).astype(bool) if "ood" in has else None,
        )

    def layers(self) -> list[str]:
        """Overlay names this table can draw."""
        names = ["class", *[f"prob:{c}" for c in self.classes], "grid"]
        return names + (["attention"] if self.attention is not None else [])

    def at(self, x: float, y: float) -> dict | None:
        """The tile under level-0 point ``(x, y)`` (the last one drawn where tiles overlap)."""
        hit = np.flatnonzero(
            (self.x <= x) & (x < self.x + self.size) & (self.y <= y) & (y < self.y + self.size)
        )
        if hit.size == 0:
            return None
        i = int(hit[-1])
        info = {
            "index": i,
            "x": int(self.x[i]),
            "y": int(self.y[i]),
            "size": int(self.size[i]),
            "probabilities": {
                c: float(p) for c, p in zip(self.classes, self.probs[i], strict=True)
            },
        }
        if self.attention is not None:
            info["attention"] = float(self.attention[i])
        if self.ood is not None:
            info["unlike_training_data"] = bool(self.ood[i])
        return info

    def colours(self, layer: str) -> np.ndarray:
        """RGBA per tile for ``layer`` (``class``, ``prob:<class>``, ``attention``)."""
        if layer not in self._colours:
            self._colours[layer] = self._layer_colours(layer)
        return self._colours[layer]

    def _layer_colours(self, layer: str) -> np.ndarray:
        import matplotlib

        n = len(self.x)
        if layer == "class":
            k = len(self.classes)
            top = self.probs.argmax(1)
            conf = (self.probs.max(1) - 1 / k) / (1 - 1 / k)
            rgba = np.array([(*COLOURS[t % len(COLOURS)], 0) for t in top], np.uint8).reshape(n, 4)
            rgba[:, 3] = (60 + 150 * conf).astype(np.uint8)
            if self.ood is not None:
                rgba[self.ood] = (*OOD_COLOUR, 200)
            return rgba
        if layer == "attention":
            a = self.attention
            values = (a - a.min()) / max(float(np.ptp(a)), 1e-12)
        else:
            values = self.probs[:, self.classes.index(layer.split(":", 1)[1])]
        rgba = (matplotlib.colormaps["viridis"](values) * 255).astype(np.uint8).reshape(n, 4)
        rgba[:, 3] = HEAT_ALPHA
        return rgba


def legend(classes: list[str]) -> dict:
    """Colours the page's legend shows: one per class, the out-of-distribution grey and
    the heat ramp's stops."""
    import matplotlib

    def hex_of(rgb) -> str:
        return "#" + "".join(f"{int(v):02x}" for v in rgb[:3])

    ramp = matplotlib.colormaps["viridis"](np.linspace(0, 1, 9)) * 255
    return {
        "colours": {c: hex_of(COLOURS[i % len(COLOURS)]) for i, c in enumerate(classes)},
        "ood_colour": hex_of(OOD_COLOUR),
        "ramp": [hex_of(c) for c in ramp],
    }


def overlay_png(
    table: TileTable, pyramid: SlidePyramid, layer: str, level: int, col: int, row: int
):
    """One 256-px transparent PNG of ``layer`` over Deep Zoom tile ``(level, col, row)``."""
    pyramid.check(level, col, row)
    if layer not in table.layers():
        raise KeyError(layer)
    d = pyramid.downsample(level)
    x0, y0 = col * TILE * d, row * TILE * d
    x1, y1 = x0 + TILE * d, y0 + TILE * d
    hit = np.flatnonzero(
        (table.x < x1) & (table.x + table.size > x0) & (table.y < y1) & (table.y + table.size > y0)
    )
    image = Image.new("RGBA", (TILE, TILE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    rgba = table.colours(layer) if layer != "grid" else None
    for i in hit:
        left, top = (table.x[i] - x0) / d, (table.y[i] - y0) / d
        side = max(table.size[i] / d - 1, 0)
        box = [left, top, left + side, top + side]
        if rgba is None:
            draw.rectangle(box, outline=(255, 255, 255, 220), width=1)
        else:
            draw.rectangle(box, fill=tuple(int(v) for v in rgba[i]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def tissue_outline(pyramid: SlidePyramid) -> list[list[list[float]]]:
    """Tissue contours as polylines of level-0 ``[x, y]`` points, found on the overview image
    with the same detector as tiling."""
    from skimage.measure import approximate_polygon, find_contours

    from pipeline.wsi.tissue import detect_tissue

    overview = pyramid.overview()
    d = pyramid.downsample(pyramid.overview_level)
    mask = detect_tissue(overview, pyramid.slide.mpp * d)
    padded = np.pad(mask.astype(np.uint8), 1)
    lines = []
    for contour in find_contours(padded, 0.5):
        if len(contour) < 8:
            continue
        simple = approximate_polygon(contour, tolerance=0.8)
        lines.append([[round((c - 1) * d, 1), round((r - 1) * d, 1)] for r, c in simple])
    return lines
