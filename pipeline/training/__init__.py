"""``fascicle train`` and ``fascicle embed``: typed YAML run configs, slide splits and the
Lightning data module, tile-classifier and attention-MIL training, frozen-encoder features,
temperature calibration and the exported model file."""
