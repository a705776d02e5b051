"""Per-slide prediction files and the batch summary and report.

``tiles.csv`` (level-0 box and class probabilities per tile), ``tiles.geojson`` (QuPath:
one Polygon detection per tile, in QuPath's coordinates, i.e. level-0 pixels minus the
OpenSlide bounds offset, with ``classification`` and ``measurements``), ``heatmap.png``
(class overlay on the thumbnail with a legend; attention for MIL models), ``summary.csv``
and ``report.html`` (one self-contained page: images inlined, no network).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .atomic import atomic_path, write_text
from .batch import csv_text

COLOURS = [
    (214, 39, 40),
    (31, 119, 180),
    (44, 160, 44),
    (148, 103, 189),
    (255, 127, 14),
    (140, 86, 75),
]
SUMMARY_COLUMNS = [
    "slide_id",
    "status",
    "call",
    "leading",
    "probability",
    "entity",
    "indeterminate",
    "reasons",
    "n_tiles",
    "mpp",
    "mpp_source",
    "flags",
    "error",
]


def write_slide_outputs(
    folder: Path,
    entry,
    coords: np.ndarray,
    spec,
    probs: np.ndarray,
    attention: np.ndarray | None,
    h: dict,
    bounds,
    tiles_source: Path,
) -> None:
    classes = h["classes"]
    size = spec.patch_size_level0
    rows = []
    for i, (x, y) in enumerate(coords):
        row = {"x": int(x), "y": int(y), "width": size, "height": size}
        row.update(
            {f"prob_{c}": round(float(p), 6) for c, p in zip(classes, probs[i], strict=True)}
        )
        if attention is not None:
            row["attention"] = round(float(attention[i]), 8)
        rows.append(row)
    columns = ["x", "y", "width", "height", *[f"prob_{c}" for c in classes]]
    columns += ["attention"] if attention is not None else []
    write_text(folder / "tiles.csv", csv_text(rows, columns))
    write_text(
        folder / "tiles.geojson",
        json.dumps(geojson(coords, size, probs, classes, attention, bounds)),
    )
    thumb_path = tiles_source / "qc" / f"{entry.slide_id}.png"
    with atomic_path(folder / "heatmap.png") as tmp:
        heatmap(entry, coords, size, probs, classes, attention).save(tmp, format="PNG")
    if thumb_path.exists():
        with atomic_path(folder / "qc.png") as tmp:
            Image.open(thumb_path).save(tmp, format="PNG")


def geojson(coords, size, probs, classes, attention, bounds) -> dict:
    """QuPath-importable FeatureCollection of tile detections."""
    bx, by = bounds[0], bounds[1]
    features = []
    for i, (x, y) in enumerate(coords):
        x0, y0 = int(x) - bx, int(y) - by
        k = int(np.argmax(probs[i]))
        measurements = {f"prob_{c}": float(p) for c, p in zip(classes, probs[i], strict=True)}
        if attention is not None:
            measurements["attention"] = float(attention[i])
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


def heatmap(entry, coords, size, probs, classes, attention, side: int = 1000) -> Image.Image:
    """Tiles coloured by their most likely class (opacity = confidence) over the slide
    thumbnail, or by attention for MIL; a legend below."""
    from .slide import Slide

    with Slide(entry.path, mpp=entry.mpp) as slide:
        w0, h0 = slide.dimensions
        mpp = max(slide.mpp, max(w0, h0) * slide.mpp / side)
        thumb, ds = slide.thumbnail(mpp)
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
    for (x, y), colour, alpha in zip(coords, colours, alphas, strict=True):
        x0, y0 = x / ds, y / ds
        draw.rectangle([x0, y0, x0 + size / ds - 1, y0 + size / ds - 1], fill=(*colour, alpha))
    image = Image.alpha_composite(base, overlay).convert("RGB")
    legend_h = 24
    canvas = Image.new("RGB", (max(image.width, 360), image.height + legend_h), (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    if attention is not None:
        draw.text((6, image.height + 6), "attention: dark = low, bright = high", fill=(0, 0, 0))
    else:
        x = 6
        for i, c in enumerate(classes):
            draw.rectangle(
                [x, image.height + 6, x + 12, image.height + 18], fill=COLOURS[i % len(COLOURS)]
            )
            draw.text((x + 16, image.height + 6), c, fill=(0, 0, 0))
            x += 24 + 7 * len(c)
    return canvas


def _results(out: Path) -> list[dict]:
    results = []
    for path in sorted((out / "slides").glob("*/result.json")):
        try:
            results.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return results


def summary_row(r: dict) -> dict:
    row = {"slide_id": r["slide_id"], "status": r["status"], "error": r.get("error") or ""}
    if r["status"] == "ok":
        c, q = r["call"], r["qc"]
        row.update(
            call=c["label"],
            leading=c["leading"],
            probability=round(c["probability"], 4),
            entity=c["entity"],
            indeterminate=c["indeterminate"],
            reasons="; ".join(c["reasons"]),
            n_tiles=q["n_tiles"],
            mpp=q["mpp"],
            mpp_source=q["mpp_source"],
            flags="; ".join(q["flags"]),
        )
        for name, p in r["image"]["probabilities"].items():
            row[f"image_{name}"] = round(p, 4)
    return row


def write_summary_csv(out: Path) -> list[dict]:
    """``summary.csv`` from every ``result.json`` under ``out`` (all shards together)."""
    rows = [summary_row(r) for r in _results(out)]
    extra = sorted({k for row in rows for k in row} - set(SUMMARY_COLUMNS))
    write_text(out / "summary.csv", csv_text(rows, SUMMARY_COLUMNS + extra))
    return rows


def _img(path: Path, width: int = 420) -> str:
    if not path.exists():
        return ""
    image = Image.open(path).convert("RGB")
    if image.width > width:
        image = image.resize((width, max(1, round(image.height * width / image.width))))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(path.name)}">'


CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.error{color:#b00}
.indeterminate{color:#a60}.slide{border-top:2px solid #888;margin-top:2em;padding-top:1em}
.imgs img{margin-right:1em;vertical-align:top}
.note{background:#fff4d6;padding:.6em;border:1px solid #e0c36b}"""


def write_report(out: Path, loaded, warnings: list[str]) -> Path:
    """``report.html``: run metadata, a table of slides, then each slide in detail."""
    e = html.escape
    results = _results(out)
    h = loaded.hparams
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>fascicle report</title>"
        f"<style>{CSS}</style></head><body>",
        "<h1>fascicle prediction report</h1>",
        "<p class='note'>Research use only: not a medical device; not for diagnosis.</p>",
        f"<p>model <code>{e(str(loaded.path))}</code> (sha256 {loaded.sha256[:12]}…, "
        f"{e(h['kind'])}, {e(h['backbone'])}, {h['tile_px']} px at {h['target_mpp']} µm/px), "
        f"classes {e(', '.join(h['classes']))}; {len(results)} slide(s)</p>",
    ]
    for w in warnings:
        parts.append(f"<p class='note'>{e(w)}</p>")
    parts.append(
        "<table id='summary'><tr><th>slide</th><th>status</th><th>call</th><th>probability</th>"
        "<th>image probabilities</th><th>indeterminate because</th><th>QC</th></tr>"
    )
    for r in results:
        sid = e(r["slide_id"])
        if r["status"] != "ok":
            parts.append(
                f"<tr class='error' data-slide='{sid}'><td><a href='#{sid}'>{sid}</a></td>"
                f"<td>error</td><td colspan='5'>{e(r['error'] or '')}</td></tr>"
            )
            continue
        c = r["call"]
        probs = ", ".join(f"{k} {v:.2f}" for k, v in r["image"]["probabilities"].items())
        cls = " class='indeterminate'" if c["indeterminate"] else ""
        parts.append(
            f"<tr{cls} data-slide='{sid}'><td><a href='#{sid}'>{sid}</a></td><td>ok</td>"
            f"<td>{e(c['label'])}</td><td>{c['probability']:.2f}</td><td>{e(probs)}</td>"
            f"<td>{e('; '.join(c['reasons']))}</td><td>{e('; '.join(r['qc']['flags']))}</td></tr>"
        )
    parts.append("</table>")
    for r in results:
        sid = r["slide_id"]
        folder = out / "slides" / sid
        parts.append(f"<div class='slide' id='{e(sid)}'><h2>{e(sid)}</h2>")
        if r["status"] != "ok":
            parts.append(f"<p class='error'>{e(r['error'] or '')}</p></div>")
            continue
        c, q = r["call"], r["qc"]
        parts.append(
            f"<p>call: <b>{e(c['label'])}</b> (leading {e(c['leading'])}, {c['probability']:.2f}; "
            f"entity {e(c['entity'])}); {q['n_tiles']} tiles, {q['tissue_mm2']:.2f} mm² tissue, "
            f"{q['mpp']:.3g} µm/px from {e(q['mpp_source'])}</p>"
        )
        parts.append(
            f"<div class='imgs'>{_img(folder / 'qc.png')}{_img(folder / 'heatmap.png')}</div>"
        )
        d = r.get("differential")
        if d:
            parts.append(
                f"<h3>IHC differential</h3><p>panel: {e(r['ihc']['panel'])}</p><table>"
                "<tr><th>entity</th><th>probability</th><th>image class</th></tr>"
            )
            for row in d["differential"]:
                scope = row["image_class"] or "outside the image model's scope"
                parts.append(
                    f"<tr><td>{e(row['name'])}</td><td>{row['probability']:.3f}</td><td>{e(scope)}</td></tr>"
                )
            parts.append("</table>")
            for entity, items in d["evidence"].items():
                shown = [i for i in items if i["direction"] != "neutral"]
                text = ", ".join(f"{i['marker']} {i['result']} ({i['log_lr']:+.2f})" for i in shown)
                parts.append(f"<p>evidence for {e(entity)}: {e(text) or 'none'}</p>")
            if d["next_stains"]:
                stains = ", ".join(s["marker"] for s in d["next_stains"])
                parts.append(f"<p>suggested next stains: <b>{e(stains)}</b></p>")
            for w in r["ihc"]["warnings"]:
                parts.append(f"<p class='note'>{e(w)}</p>")
        parts.append("</div>")
    parts.append("</body></html>")
    path = out / "report.html"
    write_text(path, "\n".join(parts))
    return path
