"""Neural network models (backbones, tile classifiers, MIL heads) for fascicle."""
