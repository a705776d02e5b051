"""Slides in, tile coordinates out: readers (OpenSlide and a tifffile fast path), the
resolution (µm/px) and its source, tissue masks, the tile grid at a target mpp with its
CLAM/TRIDENT-compatible ``.h5``, slide manifests, and ``fascicle tile`` over many slides."""
