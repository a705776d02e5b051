"""Exceptions with messages a user can act on: each names the file and says what to do."""

from __future__ import annotations

from pathlib import Path


class FascicleError(Exception):
    """Base class of every error fascicle reports to a user."""


class UsageError(FascicleError):
    """Bad command-line usage or configuration (exit code 2)."""


class SlideError(FascicleError):
    """A slide could not be used. The message names the file and the fix."""

    def __init__(self, path: str | Path, problem: str, fix: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        message = f"{self.path}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)


class SlideNotFoundError(SlideError):
    """The slide file does not exist."""


class UnsupportedFormatError(SlideError):
    """No reader recognises the file format."""


class CorruptSlideError(SlideError):
    """The file looks like a slide but cannot be decoded (truncated, damaged)."""


class MissingResolutionError(SlideError):
    """No microns-per-pixel value could be found for the slide."""


class InvalidResolutionError(SlideError):
    """The microns-per-pixel value is implausible or inconsistent."""


class EmptySlideError(SlideError):
    """No tissue was found on the slide."""


class SlideBusyError(FascicleError):
    """Another live process holds the slide: it is reported as not done, never as done."""


class ManifestError(UsageError):
    """A manifest has problems; all of them are listed at once."""

    def __init__(self, path: str | Path, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{self.path}: {len(problems)} problem(s) in the manifest:\n{lines}")
