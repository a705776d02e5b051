"""``result.json``: the typed document of one predicted slide, written and read here only.

The dataclasses mirror ``docs/result.schema.json`` (schema version 1). A document is written
atomically and last, so a folder with a readable ``result.json`` is complete.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import __version__
from pipeline.core.atomic import write_text
from pipeline.core.paths import under

SCHEMA_VERSION = 1


@dataclass
class CallDoc:
    label: str
    """The class called, or ``indeterminate``."""
    leading: str
    entity: str
    probability: float
    indeterminate: bool
    reasons: list[str]
    outside_image_scope: bool = False
    entity_name: str = ""
    """The entity's name as pathologists write it (``entity`` is its key)."""
    prediction_set: list[str] | None = None
    """Split-conformal set of classes (``--coverage``), most probable first."""
    coverage: float | None = None
    entity_probability: float | None = None
    entity_settled: bool = True
    """False when the class is called but its entities (grades, sarcoma types) are not told
    apart; ``entity_note`` says which and how close."""
    entity_note: str = ""


@dataclass
class ImageDoc:
    probabilities: dict[str, float]
    aggregator: str
    temperature: float
    classes: list[str]
    model_kind: str


@dataclass
class IHCDoc:
    panel: str
    """The panel as used (normalised markers and results)."""
    warnings: list[str] = field(default_factory=list)
    unknown_markers: list[str] = field(default_factory=list)
    raw: str = ""
    """The text as given (a panel string, or the CSV rows)."""
    noted_markers: list[str] = field(default_factory=list)
    markers_used: str = ""


@dataclass
class QCDoc:
    mpp: float
    mpp_source: str
    tissue_mm2: float
    n_tiles: int
    backend: str
    flags: list[str] = field(default_factory=list)
    ood_fraction: float | None = None
    """Share of tiles unlike the training data (None: the model has no detector)."""


@dataclass
class Provenance:
    package_version: str
    params_hash: str
    model_path: str | None = None
    model_sha256: str | None = None
    model_package_version: str | None = None
    tiling: dict | None = None
    timings_s: dict[str, float] | None = None
    engine: dict | None = None
    """Device, precision, decode threads, torch threads, where JPEG tiles were decoded."""


@dataclass
class SlideResult:
    slide_id: str
    path: str
    status: str
    """``ok`` or ``error``."""
    provenance: Provenance
    error: str | None = None
    call: CallDoc | None = None
    image: ImageDoc | None = None
    differential: dict | None = None
    """The fused IHC differential (``SlideCall.summary``), when the slide has a panel."""
    ihc: IHCDoc | None = None
    qc: QCDoc | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def failed(cls, slide_id: str, path: str, error: str, params_hash: str) -> SlideResult:
        return cls(slide_id, path, "error", Provenance(__version__, params_hash), error=error)

    def to_dict(self) -> dict:
        """The JSON document, keys in schema order; unset provenance fields left out."""
        d = dataclasses.asdict(self)
        d["provenance"] = {k: v for k, v in d["provenance"].items() if v is not None}
        order = ("schema_version", "slide_id", "path", "status", "error", "call", "image")
        order += ("differential", "ihc", "qc", "provenance")
        return {k: d[k] for k in order}

    @classmethod
    def from_dict(cls, d: dict) -> SlideResult:
        def sub(kind, value):
            return None if value is None else kind(**value)

        return cls(
            slide_id=d["slide_id"],
            path=d["path"],
            status=d["status"],
            provenance=Provenance(**d["provenance"]),
            error=d.get("error"),
            call=sub(CallDoc, d.get("call")),
            image=sub(ImageDoc, d.get("image")),
            differential=d.get("differential"),
            ihc=sub(IHCDoc, d.get("ihc")),
            qc=sub(QCDoc, d.get("qc")),
            schema_version=d.get("schema_version", SCHEMA_VERSION),
        )


def slide_folder(out: Path, slide_id: str) -> Path:
    """``out/slides/<slide_id>``, refused when the id would leave ``out``."""
    return under(out, "slides", slide_id)


def result_path(out: Path, slide_id: str) -> Path:
    return slide_folder(out, slide_id) / "result.json"


def write_result(out: Path, result: SlideResult) -> Path:
    """Write ``slides/<id>/result.json`` under ``out`` atomically."""
    path = result_path(out, result.slide_id)
    write_text(path, json.dumps(result.to_dict(), indent=2) + "\n")
    return path


def read_result(path: Path) -> SlideResult | None:
    """The document at ``path``; None when missing, unreadable or of another schema."""
    try:
        return SlideResult.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_results(out: Path) -> list[SlideResult]:
    """Every readable result under ``out/slides`` (all shards), by slide id."""
    found = (read_result(p) for p in sorted((Path(out) / "slides").glob("*/result.json")))
    return [r for r in found if r is not None]
