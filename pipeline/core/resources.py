"""The built-in configs shipped inside the package (``pipeline/configs``), found through
``importlib.resources`` so they work from a clone, an editable install or a wheel."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def builtin_config(name: str) -> Path:
    """Path of a built-in config, e.g. ``calls.yaml`` or ``ihc/knowledge.yaml``."""
    return Path(str(resources.files("pipeline.configs").joinpath(name)))


def config_path(path: str | Path) -> Path:
    """``path`` if it exists, else the built-in config it names (``demo``, ``demo.yaml``,
    ``configs/demo.yaml``), so the examples run outside a clone too."""
    path = Path(path)
    if path.exists():
        return path
    builtin = builtin_config(path.name if path.suffix else f"{path.name}.yaml")
    return builtin if builtin.is_file() else path
