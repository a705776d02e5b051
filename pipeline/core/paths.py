"""Output paths that cannot escape their folder, whatever a slide id holds."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.errors import UsageError


def under(root: str | Path, *parts: str) -> Path:
    """``root / parts...``, refused (``UsageError``) when a part is empty, absolute, holds a
    path separator, starts with a dot, or the result would lie outside ``root``."""
    root = Path(root)
    for part in parts:
        if (
            not part
            or part.startswith(".")
            or "/" in part
            or "\\" in part
            or os.sep in part
            or any(ord(ch) < 32 for ch in part)
        ):
            raise UsageError(f"unsafe name {part!r} for a file under {root}")
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise UsageError(f"{path} would lie outside {root}")
    return path
