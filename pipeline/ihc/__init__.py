"""Immunohistochemistry: the knowledge base (P(marker positive | entity) with sources), the
parser for panels and IHC CSVs, and the differential: Bayesian fusion of the panel with image
probabilities, evidence per entity, and the stains worth ordering next."""
