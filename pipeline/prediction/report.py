"""The batch's ``summary.csv`` (a row per slide, errors included) and ``report.html`` (one
self-contained page: images inlined, no network), both built from every ``result.json``
under the output folder, so shards and reruns merge."""

from __future__ import annotations

import base64
import html
import io
import shlex
from pathlib import Path

from PIL import Image

from models.meta import ModelMeta
from pipeline.core.atomic import write_text
from pipeline.core.batch import csv_text
from pipeline.prediction.outputs import COLOURS, OOD_COLOUR
from pipeline.prediction.result import SlideResult, read_results

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


def summary_row(r: SlideResult) -> dict:
    row = {"slide_id": r.slide_id, "status": r.status, "error": r.error or ""}
    if r.ok:
        c, q = r.call, r.qc
        row.update(
            call=c.label,
            leading=c.leading,
            probability=round(c.probability, 4),
            entity=c.entity,
            indeterminate=c.indeterminate,
            reasons="; ".join(c.reasons),
            n_tiles=q.n_tiles,
            mpp=q.mpp,
            mpp_source=q.mpp_source,
            flags="; ".join(q.flags),
        )
        for name, p in r.image.probabilities.items():
            row[f"image_{name}"] = round(p, 4)
    return row


def write_summary_csv(out: Path, not_done: dict[str, str] | None = None) -> list[dict]:
    """``summary.csv`` from every ``result.json`` under ``out`` (all shards together), plus a
    ``not_done`` row for each slide another process still holds (``not_done``: id → why)."""
    not_done = not_done or {}
    rows = [summary_row(r) for r in read_results(out) if r.slide_id not in not_done]
    rows += [{"slide_id": s, "status": "not_done", "error": why} for s, why in not_done.items()]
    rows.sort(key=lambda row: row["slide_id"])
    extra = sorted({k for row in rows for k in row} - set(SUMMARY_COLUMNS))
    write_text(out / "summary.csv", csv_text(rows, SUMMARY_COLUMNS + extra))
    return rows


def _img(path: Path, width: int = 480) -> str:
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
.legend span{margin-right:1.2em;white-space:nowrap}.legend i{display:inline-block;width:16px;
height:16px;border:1px solid #333;vertical-align:middle;margin-right:5px}
.view{color:#555}.note{background:#fff4d6;padding:.6em;border:1px solid #e0c36b}"""


def _summary_table(results: list[SlideResult]) -> list[str]:
    e = html.escape
    parts = [
        "<table id='summary'><tr><th>slide</th><th>status</th><th>call</th><th>probability</th>"
        "<th>image probabilities</th><th>indeterminate because</th><th>QC</th></tr>"
    ]
    for r in results:
        sid = e(r.slide_id)
        if not r.ok:
            parts.append(
                f"<tr class='error' data-slide='{sid}'><td><a href='#{sid}'>{sid}</a></td>"
                f"<td>error</td><td colspan='5'>{e(r.error or '')}</td></tr>"
            )
            continue
        c = r.call
        probs = ", ".join(f"{k} {v:.2f}" for k, v in r.image.probabilities.items())
        cls = " class='indeterminate'" if c.indeterminate else ""
        parts.append(
            f"<tr{cls} data-slide='{sid}'><td><a href='#{sid}'>{sid}</a></td><td>ok</td>"
            f"<td>{e(c.label)}</td><td>{c.probability:.2f}</td><td>{e(probs)}</td>"
            f"<td>{e('; '.join(c.reasons))}</td><td>{e('; '.join(r.qc.flags))}</td></tr>"
        )
    parts.append("</table>")
    return parts


def _differential(r: SlideResult) -> list[str]:
    e, d = html.escape, r.differential
    parts = [
        f"<h3>IHC differential</h3><p>panel: {e(r.ihc.panel)}</p><table>"
        "<tr><th>entity</th><th>probability</th><th>image class</th></tr>"
    ]
    for row in d["differential"]:
        scope = row["image_class"] or "outside the image model's scope"
        name = row["name"] + (f" ({row['variant']})" if row.get("variant") else "")
        parts.append(
            f"<tr><td>{e(name)}</td><td>{row['probability']:.3f}</td><td>{e(scope)}</td></tr>"
        )
    parts.append("</table>")
    for entity, items in d["evidence"].items():
        shown = [i for i in items if i["direction"] != "neutral"]
        text = ", ".join(
            f"{i['marker']} {i['result']} ({i['log_lr']:+.2f}, {i.get('kind', '?')}: "
            f"{i.get('source', '')[:80]})"
            for i in shown
        )
        parts.append(f"<p>evidence for {e(entity)}: {e(text) or 'none'}</p>")
    if d["next_stains"]:
        stains = ", ".join(s["marker"] for s in d["next_stains"])
        parts.append(f"<p>suggested next stains: <b>{e(stains)}</b></p>")
    parts += [f"<p class='note'>{e(w)}</p>" for w in r.ihc.warnings]
    return parts


def _legend(r: SlideResult) -> str:
    """The heatmap's colours at a readable size (the image is shrunk to fit the page)."""
    if r.image.model_kind == "mil":
        return "<p class='legend'>heatmap: attention, dark = low, bright = high</p>"
    items = [
        (COLOURS[i % len(COLOURS)], c.replace("_", " ")) for i, c in enumerate(r.image.classes)
    ]
    if r.qc.ood_fraction:
        items.append((OOD_COLOUR, "unlike the training data"))
    spans = "".join(
        f"<span><i style='background:rgb{colour}'></i>{html.escape(name)}</span>"
        for colour, name in items
    )
    return f"<p class='legend'>heatmap: {spans} (opacity: confidence)</p>"


def _slide_section(out: Path, r: SlideResult) -> list[str]:
    e = html.escape
    folder = out / "slides" / r.slide_id
    parts = [f"<div class='slide' id='{e(r.slide_id)}'><h2>{e(r.slide_id)}</h2>"]
    command = f"fascicle view {shlex.quote(str(out))} --slide {shlex.quote(r.slide_id)}"
    parts.append(f"<p class='view'>zoom in: <code>{e(command)}</code> (opens a local viewer)</p>")
    if not r.ok:
        return [*parts, f"<p class='error'>{e(r.error or '')}</p></div>"]
    c, q = r.call, r.qc
    parts.append(
        f"<p>call: <b>{e(c.label)}</b> (leading {e(c.leading)}, {c.probability:.2f}; "
        f"entity {e(c.entity_name or c.entity)}); {q.n_tiles} tiles, "
        f"{q.tissue_mm2:.2f} mm² tissue, "
        f"{q.mpp:.3g} µm/px from {e(q.mpp_source)}</p>"
    )
    if c.entity_note:
        parts.append(f"<p class='indeterminate'>{e(c.entity_note)}</p>")
    parts.append(f"<div class='imgs'>{_img(folder / 'qc.png')}{_img(folder / 'heatmap.png')}</div>")
    parts.append(_legend(r))
    if r.differential:
        parts += _differential(r)
    return [*parts, "</div>"]


def write_report(
    out: Path, model_path: Path, model_sha256: str, meta: ModelMeta, warnings: list[str]
) -> Path:
    """``report.html``: run metadata, a table of slides, then each slide in detail."""
    e = html.escape
    results = read_results(out)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>fascicle report</title>"
        f"<style>{CSS}</style></head><body>",
        "<h1>fascicle prediction report</h1>",
        "<p class='note'>Research use only: not a medical device; not for diagnosis.</p>",
        f"<p>model <code>{e(str(model_path))}</code> (sha256 {model_sha256[:12]}…, "
        f"{e(meta.kind)}, {e(meta.backbone)}, {meta.tile_px} px at {meta.target_mpp} µm/px), "
        f"classes {e(', '.join(meta.classes))}; {len(results)} slide(s)</p>",
    ]
    parts += _summary_table(results)
    parts += [
        f"<details class='note'><summary>{e(w[:90])}…</summary>{e(w)}</details>" for w in warnings
    ]
    for r in results:
        parts += _slide_section(out, r)
    parts.append("</body></html>")
    path = out / "report.html"
    write_text(path, "\n".join(parts))
    return path
