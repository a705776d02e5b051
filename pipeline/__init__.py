"""fascicle: whole-slide image pipeline for dural spindle-cell tumours (research use only).

The subpackages follow the data flow: ``wsi`` (slides, tissue, tile coordinates) →
``tiles`` (tile datasets, the inference runner, aggregation) → ``training`` (models from
tiles) → ``ihc`` (knowledge base, panels, the differential) → ``prediction`` (calls and their
outputs) → ``evaluation`` (metrics and the CI gate); ``synth`` makes synthetic cohorts and
``core`` holds what they all share. ``models/`` (beside this package) holds the networks.
Nothing heavy is imported here so the command line starts fast.
"""

__version__ = "0.1.0"
