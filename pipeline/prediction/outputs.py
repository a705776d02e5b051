"""Per-slide prediction files.

``tiles.csv`` (level-0 box and class probabilities per tile), ``tiles.geojson`` (QuPath:
one Polygon detection per tile, in QuPath's coordinates, i.e. level-0 pixels minus the
OpenSlide bounds offset, with ``classification`` and ``measurements``) and ``heatmap.png``
(class overlay on the thumbnail with a legend; attention for MIL models).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.core.atomic import atomic_path, write_text
from pipeline.core.batch import csv_text

OOD_COLOUR = (150, 150, 150)
COLOURS = [  # Okabe & Ito (2008): distinguishable with red-green colour blindness
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (204, 121, 167),
    (0, 114, 178),
    (213, 94, 0),
    (240, 228, 66),
]
LEGEND_FONT_PX = 16


def write_slide_outputs(
    folder: Path,
    coords: np.ndarray,
    size: int,
    probs: np.ndarray,
    attention: np.ndarray | None,
    classes: list[str],
    bounds: tuple[int, int, int, int],
    thumbnail: tuple[np.ndarray, float],
    qc_png: Path | None = None,
    ood: np.ndarray | None = None,
) -> None:
    """``tiles.csv``, ``tiles.geojson``, ``heatmap.png`` (over ``thumbnail``: an RGB array
    and its downsample from level 0) and a copy of the tiling QC image. ``ood``: per tile,
    True where the tile is unlike the training data."""
    rows = []
    for i, (x, y) in enumerate(coords):
        row = {"x": int(x), "y": int(y), "width": size, "height": size}
        row.update(
            {f"prob_{c}": round(float(p), 6) for c, p in zip(classes, probs[i], strict=True)}
        )
        if attention is not None:
            row["attention"] = round(float(attention[i]), 8)
        if ood is not None:
            row["ood"] = int(ood[i])
        rows.append(row)
    columns = ["x", "y", "width", "height", *[f"prob_{c}" for c in classes]]
    columns += ["attention"] if attention is not None else []
    columns += ["ood"] if ood is not None else []
    write_text(folder / "tiles.csv", csv_text(rows, columns))
    write_text(
        folder / "tiles.geojson",
        json.dumps(geojson(coords, size, probs, classes, attention, bounds, ood)),
    )
    with atomic_path(folder / "heatmap.png") as tmp:
        heatmap(thumbnail, coords, size, probs, classes, attention, ood).save(tmp, format="PNG")
    if qc_png is not None and qc_png.exists():
        with atomic_path(folder / "qc.png") as tmp:
            Image.open(qc_png).save(tmp, format="PNG")


def geojson(coords, size, probs, classes, attention, bounds, ood=None) -> dict:
    """QuPath-importable FeatureCollection of tile detections."""
    bx, by = bounds[0], bounds[1]
    features = []
    for i, (x, y) in enumerate(coords):
        x0, y0 = int(x) - bx, int(y) - by
        k = int(np.argmax(probs[i]))
        measurements = {f"prob_{c}": float(p) for c, p in zip(classes, probs[i], strict=True)}
        if attention is not None:
            measurements["attention"] = float(attention[i])
        if ood is not None:
            measurements["out_of_distribution"] = int(ood[i])
        features.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [
                            [x0, y0],
                            [x0 + size, y0],
                            [x0 + size, y0 + size],
                            [x0, y0 + size],
                            [x0, y0],
                        ]
                    ],
                },
                "properties": {
                    "objectType": "detection",
                    "classification": {
                        "name": classes[k],
                        "color": list(COLOURS[k % len(COLOURS)]),
                    },
                    "measurements": measurements,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def heatmap_thumbnail(slide, side: int = 1000) -> tuple[np.ndarray, float]:
    """The slide's thumbnail for the heatmap (longest side about ``side`` px) and its
    downsample from level 0."""
    w0, h0 = slide.dimensions
    return slide.thumbnail(max(slide.mpp, max(w0, h0) * slide.mpp / side))


def heatmap(thumbnail, coords, size, probs, classes, attention, ood=None) -> Image.Image:
    """Tiles coloured by their most likely class (opacity = confidence) over the slide
    thumbnail, or by attention for MIL; tiles unlike the training data grey; a legend below."""
    thumb, ds = thumbnail
    base = Image.fromarray(thumb).convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    k = len(classes)
    if attention is not None:
        import matplotlib

        a = (attention - attention.min()) / max(float(np.ptp(attention)), 1e-12)
        colours = [tuple(int(255 * c) for c in matplotlib.colormaps["inferno"](v)[:3]) for v in a]
        alphas = [150] * len(a)
    else:
        top = probs.argmax(1)
        conf = (probs.max(1) - 1 / k) / (1 - 1 / k)
        colours = [COLOURS[t % len(COLOURS)] for t in top]
        alphas = [int(60 + 150 * c) for c in conf]
    if ood is not None:
        colours = [OOD_COLOUR if o else c for c, o in zip(colours, ood, strict=True)]
        alphas = [200 if o else a for a, o in zip(alphas, ood, strict=True)]
    for (x, y), colour, alpha in zip(coords, colours, alphas, strict=True):
        x0, y0 = x / ds, y / ds
        draw.rectangle([x0, y0, x0 + size / ds - 1, y0 + size / ds - 1], fill=(*colour, alpha))
    image = Image.alpha_composite(base, overlay).convert("RGB")
    font = ImageFont.load_default(size=LEGEND_FONT_PX)
    line = LEGEND_FONT_PX + 8
    rows = len(classes) + (ood is not None and bool(ood.any())) if attention is None else 1
    canvas = Image.new("RGB", (max(image.width, 420), image.height + 8 + rows * line), "white")
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = image.height + 6
    if attention is not None:
        draw.text((6, y), "attention: dark = low, bright = high", fill=(0, 0, 0), font=font)
        return canvas
    for i, c in enumerate(classes):
        box = [6, y + 2, 6 + LEGEND_FONT_PX, y + 2 + LEGEND_FONT_PX]
        draw.rectangle(box, fill=COLOURS[i % len(COLOURS)], outline=(0, 0, 0))
        draw.text((12 + LEGEND_FONT_PX, y), c.replace("_", " "), fill=(0, 0, 0), font=font)
        y += line
    if ood is not None and ood.any():
        box = [6, y + 2, 6 + LEGEND_FONT_PX, y + 2 + LEGEND_FONT_PX]
        draw.rectangle(box, fill=OOD_COLOUR, outline=(0, 0, 0))
        draw.text((12 + LEGEND_FONT_PX, y), "unlike the training data", fill=(0, 0, 0), font=font)
    return canvas
