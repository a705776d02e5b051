"""fascicle: whole-slide image pipeline for dural spindle-cell tumours (research use only).

The modules follow the data flow: ``slide`` (reading, resolution) → ``tissue`` (masks)
→ ``tiling`` (coordinates) → ... Import what you need; nothing heavy is imported here so the
command line starts fast.
"""

__version__ = "0.1.0"
