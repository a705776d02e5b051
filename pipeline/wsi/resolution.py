"""Microns-per-pixel resolution: where it comes from, and whether it is believable.

Order of sources: explicit override → OpenSlide ``openslide.mpp-x/y`` → TIFF resolution tags
→ objective power (an assumption, with a warning) → error. Each candidate is validated; an
implausible one is skipped with a note and the next source is tried, except an override,
which is the user's word and must be valid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import InvalidResolutionError, MissingResolutionError

log = logging.getLogger(__name__)

MPP_RANGE = (0.05, 50.0)
"""Plausible microns per pixel, from high-NA scans (~0.1) to overview images (tens of µm)."""
MAX_XY_DISAGREEMENT = 0.05
"""x and y resolution may differ by at most this fraction."""
MICRONS_PER_UNIT = {"centimeter": 1e4, "inch": 25400.0, "3": 1e4, "2": 25400.0}
"""TIFF ResolutionUnit values (as OpenSlide reports them) in microns."""
FIX = "pass --slide-mpp on the command line or add an mpp column to the manifest"


@dataclass(frozen=True)
class Resolution:
    """Validated microns per pixel of a slide's level 0, and where the value came from."""

    mpp_x: float
    mpp_y: float
    source: str

    @property
    def mpp(self) -> float:
        """Mean of x and y, used for geometry."""
        return (self.mpp_x + self.mpp_y) / 2


def _check(path: str | Path, mpp_x: float, mpp_y: float, source: str) -> Resolution:
    lo, hi = MPP_RANGE
    for value in (mpp_x, mpp_y):
        if not math.isfinite(value) or not lo <= value <= hi:
            raise InvalidResolutionError(
                path,
                f"{value:g} µm/px from {source} is outside the plausible range {lo}-{hi} µm/px",
                "correct the --slide-mpp value or the manifest's mpp column"
                if source == "override"
                else FIX,
            )
    if abs(mpp_x - mpp_y) / max(mpp_x, mpp_y) > MAX_XY_DISAGREEMENT:
        raise InvalidResolutionError(
            path,
            f"x and y resolution from {source} disagree ({mpp_x:g} vs {mpp_y:g} µm/px)",
            FIX,
        )
    return Resolution(mpp_x, mpp_y, source)


def _float(properties: Mapping[str, str], key: str) -> float | None:
    try:
        return float(properties[key])
    except (KeyError, ValueError):
        return None


def _candidates(properties: Mapping[str, str]) -> list[tuple[float, float, str, bool]]:
    """(mpp_x, mpp_y, source, is_assumption) from slide metadata, in priority order."""
    found: list[tuple[float, float, str, bool]] = []
    mx, my = _float(properties, "openslide.mpp-x"), _float(properties, "openslide.mpp-y")
    if mx is not None and my is not None:
        found.append((mx, my, "openslide", False))
    rx, ry = _float(properties, "tiff.XResolution"), _float(properties, "tiff.YResolution")
    unit = MICRONS_PER_UNIT.get(properties.get("tiff.ResolutionUnit", "").lower())
    if rx and ry and unit:
        found.append((unit / rx, unit / ry, "tiff-tags", False))
    power = _float(properties, "openslide.objective-power")
    if power and power > 0:
        found.append((10.0 / power, 10.0 / power, "objective-power", True))
    return found


def resolve_mpp(
    path: str | Path, properties: Mapping[str, str], override: float | None = None
) -> Resolution:
    """Return the slide's validated resolution or raise a ``SlideError`` saying how to fix it."""
    if override is not None:
        return _check(path, float(override), float(override), "override")
    rejected: list[str] = []
    for mpp_x, mpp_y, source, assumption in _candidates(properties):
        try:
            resolution = _check(path, mpp_x, mpp_y, source)
        except InvalidResolutionError as err:
            rejected.append(err.problem)
            continue
        if assumption:
            log.warning(
                "%s: no resolution metadata; assuming %.3g µm/px from the objective power "
                "(10 / power). Scanners differ: %s to be sure.",
                path,
                resolution.mpp,
                FIX,
            )
        return resolution
    problem = "no microns-per-pixel metadata"
    if rejected:
        problem += " that could be trusted: " + "; ".join(rejected)
    raise MissingResolutionError(path, problem, FIX)
