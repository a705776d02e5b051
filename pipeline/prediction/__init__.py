"""``fascicle predict`` and ``fascicle ihc``: the slide call (the one place it is made), the
typed ``result.json`` document, per-slide outputs (tiles.csv, QuPath GeoJSON, heatmap) and the
batch's summary.csv and report.html, resumable and locked per slide."""
