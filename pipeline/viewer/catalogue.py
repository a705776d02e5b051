"""What the viewer shows: the slides of a prediction run (or one slide), each with its result,
its tile predictions and, opened on first use, its pyramid.

Slides are addressed by id only; an id is a key into this catalogue, never part of a path,
so no request can reach a file the catalogue did not list.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.errors import UsageError
from pipeline.prediction.result import SlideResult, read_result, read_results, slide_folder
from pipeline.viewer.overlay import TileTable, legend, tissue_outline
from pipeline.viewer.pyramid import TILE, SlidePyramid


@dataclass
class ViewedSlide:
    slide_id: str
    path: Path | None
    """The slide file, or None when it could not be found (``problem`` says why)."""
    result: SlideResult | None = None
    folder: Path | None = None
    """The slide's prediction folder (``tiles.csv``), when there is one."""
    problem: str | None = None
    _pyramid: SlidePyramid | None = None
    _table: TileTable | None = None
    _outline: list | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def pyramid(self) -> SlidePyramid:
        if self.path is None:
            raise FileNotFoundError(self.problem)
        with self._lock:
            if self._pyramid is None:
                mpp = self.result.qc.mpp if self.result and self.result.qc else None
                self._pyramid = SlidePyramid(self.path, mpp=mpp)
        return self._pyramid

    def table(self) -> TileTable | None:
        csv_path = self.folder / "tiles.csv" if self.folder else None
        if csv_path is None or not csv_path.exists():
            return None
        with self._lock:
            if self._table is None:
                self._table = TileTable.read(csv_path)
        return self._table

    def outline(self) -> list:
        pyramid = self.pyramid()
        with self._lock:
            if self._outline is None:
                self._outline = tissue_outline(pyramid)
        return self._outline

    def summary(self) -> dict:
        """The slide's line in the slide list."""
        row = {"id": self.slide_id, "viewable": self.path is not None, "problem": self.problem}
        r = self.result
        if r is not None and r.ok:
            row.update(
                status="ok",
                call=r.call.label,
                entity=r.call.entity_name or r.call.entity,
                probability=r.call.probability,
                indeterminate=r.call.indeterminate,
            )
        elif r is not None:
            row.update(status="error", error=r.error)
        return row

    def info(self) -> dict:
        """Everything the page needs to show the slide: geometry, layers and the result."""
        pyramid = self.pyramid()
        table = self.table()
        return {
            "id": self.slide_id,
            "width": pyramid.slide.dimensions[0],
            "height": pyramid.slide.dimensions[1],
            "mpp": pyramid.slide.mpp,
            "tile_size": TILE,
            "max_level": pyramid.max_level,
            "classes": table.classes if table else [],
            "layers": table.layers() if table else [],
            "result": self.result.to_dict() if self.result else None,
            **legend(table.classes if table else []),
        }

    def close(self) -> None:
        if self._pyramid is not None:
            self._pyramid.close()


def _find_slide(stored: str, out: Path, slides_dir: Path | None) -> Path | None:
    """The slide file a result names: as stored (absolute or from the working folder), from
    the results folder and its parents, or by file name under ``slides_dir``."""
    path = Path(stored)
    candidates = [path]
    if not path.is_absolute():
        candidates += [parent / path for parent in [out, *out.resolve().parents]]
    if slides_dir is not None:
        candidates += [slides_dir / path.name, *sorted(slides_dir.rglob(path.name))[:1]]
    return next((c.resolve() for c in candidates if c.is_file()), None)


def _viewed(result: SlideResult, out: Path, slides_dir: Path | None) -> ViewedSlide:
    path = _find_slide(result.path, out, slides_dir)
    problem = None
    if path is None:
        problem = (
            f"slide file {result.path} not found; pass --slides DIR with the folder that holds it"
        )
    return ViewedSlide(
        result.slide_id, path, result, slide_folder(out, result.slide_id), problem=problem
    )


class Catalogue:
    """The slides the viewer serves, by id, in order."""

    def __init__(self, slides: list[ViewedSlide]) -> None:
        if not slides:
            raise UsageError("nothing to view: no slide results found")
        self.slides = {s.slide_id: s for s in slides}

    @classmethod
    def from_run(cls, out: str | Path, slides_dir: str | Path | None = None) -> Catalogue:
        """Every slide predicted under ``out`` (``fascicle predict --out``)."""
        out = Path(out)
        results = read_results(out)
        if not results:
            raise UsageError(
                f"{out}: no slides/<id>/result.json here; point to a `fascicle predict --out` "
                "folder, or view one slide with `fascicle view SLIDE`"
            )
        found = Path(slides_dir) if slides_dir else None
        return cls([_viewed(r, out, found) for r in results])

    @classmethod
    def from_slide(cls, slide: str | Path, result: str | Path | None = None) -> Catalogue:
        """One slide file, with its predictions when ``result`` is a run folder or the
        slide's own folder in one."""
        slide = Path(slide)
        if not slide.is_file():
            raise UsageError(f"{slide}: no such slide file")
        viewed = ViewedSlide(slide.stem, slide.resolve())
        if result is not None:
            run = Path(result)
            folder = run if (run / "result.json").exists() else slide_folder(run, slide.stem)
            doc = read_result(folder / "result.json")
            if doc is None:
                raise UsageError(
                    f"{run}: no readable result.json for slide {slide.stem!r}; give the run "
                    "folder (`fascicle predict --out`) or the slide's folder in it"
                )
            viewed = ViewedSlide(doc.slide_id, slide.resolve(), doc, folder)
        return cls([viewed])

    def get(self, slide_id: str) -> ViewedSlide | None:
        return self.slides.get(slide_id)

    def close(self) -> None:
        for s in self.slides.values():
            s.close()
