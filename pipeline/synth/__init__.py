"""Synthetic cohorts of spindle-cell tumour slides, rendered at physical scale.

Real leiomyosarcoma and meningioma slides cannot be shipped, so the demo, the tests and CI
use slides whose classes differ in morphology (nuclear shape, architecture, special
features), while stain colour, intensity, thickness and background vary per slide and are
shared across classes. See ``pipeline.synth.cohort`` and ``fascicle synth``.
"""
