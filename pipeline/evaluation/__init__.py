"""``fascicle evaluate`` and ``fascicle export-tiles``: metrics with patient-level bootstrap
intervals on held-out slides or a tile bank, plots, and a gate that fails CI."""
