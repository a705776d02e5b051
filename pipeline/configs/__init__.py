"""Built-in configs shipped with the package: call thresholds, the IHC knowledge base and
example training YAMLs. The top-level ``configs/`` of a clone points here."""
