"""Tiles as model input, shared by training, prediction, embedding and evaluation: tile
datasets read on the fly from slides, stain normalisation and augmentation, the one inference
runner that streams tiles through a model, and the numerics that turn tile probabilities into
calibrated slide probabilities."""
