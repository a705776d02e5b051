"""Atomic file writes: a reader sees the old file or the complete new one, never a part."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_png(path: str | Path, image) -> None:
    """Write an image array (H, W[, 3]) as PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def writable_folder(path: str | Path) -> Path:
    """Create ``path`` if needed and check it can be written, else a ``UsageError``."""
    from pipeline.core.errors import UsageError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe.", suffix=".tmp"):
            pass
    except OSError as err:
        raise UsageError(
            f"{path}: cannot write the output folder ({err.strerror}); choose another --out"
        ) from None
    return path


def clean_stale_temps(root: str | Path, min_age_s: float = 60.0) -> int:
    """Remove temporaries (``.*.tmp``) that killed runs left under ``root``; files younger
    than ``min_age_s`` may belong to a live writer and are kept. Returns how many went."""
    import time

    removed = 0
    for path in Path(root).rglob(".*.tmp"):
        try:
            if time.time() - path.stat().st_mtime >= min_age_s:
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
