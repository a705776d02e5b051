"""What one prediction run holds: its options, the loaded model with the knowledge base and
call settings, the parameter hash that marks a finished slide, shards, and the checks made
before a slide's call (tissue unlike the training data, prediction sets)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.meta import ModelMeta
from models.outputs import SlideModel
from pipeline.core.errors import UsageError
from pipeline.core.hashing import file_sha256, params_digest
from pipeline.ihc.image import ImageEvidence, kb_class_of
from pipeline.ihc.knowledge import KnowledgeBase
from pipeline.prediction.call import CallConfig
from pipeline.prediction.result import SCHEMA_VERSION, read_result, result_path
from pipeline.wsi.manifest import SlideEntry

if TYPE_CHECKING:
    from pipeline.tiles.engine import Engine


@dataclass
class PredictOptions:
    """Everything that shapes a prediction (hashed into each result for provenance)."""

    batch_size: int = 64
    workers: int | None = None
    """Tile-decoding threads (None: chosen from the cores, ``pipeline.tiles.engine``)."""
    device: str = "auto"
    threads: int | None = None
    """torch threads on CPU (None: every core)."""
    precision: str = "auto"
    decode: str = "auto"
    prior: str | None = None
    tiles_dir: str | Path | None = None
    overwrite: bool = False
    progress: bool = True
    knowledge: str | None = None
    calls: str | None = None
    coverage: float | None = None
    """Split-conformal prediction sets at this coverage (e.g. 0.9); None: no sets."""
    wait: bool = False
    """Wait for slides another process holds instead of reporting them as not done."""

    def check(self) -> None:
        """Refuse bad values before any slide (``UsageError`` naming the option)."""
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.coverage is not None and not 0 < self.coverage < 1:
            raise UsageError(f"--coverage must be between 0 and 1, got {self.coverage}")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise UsageError(f"--device {self.device!r}: use auto, cpu, cuda or cuda:N")

    def engine(self) -> Engine:
        """The inference engine these options ask for (``UsageError`` for bad values)."""
        from pipeline.tiles.engine import plan_engine

        return plan_engine(self.device, self.precision, self.workers, self.threads, self.decode)


@dataclass
class LoadedModel:
    """A model file, checked and ready, with the knowledge base and call settings."""

    path: Path
    sha256: str
    model: SlideModel
    meta: ModelMeta
    kb: KnowledgeBase
    call_config: CallConfig
    class_of: dict[str, str | None]
    """Knowledge-base entity → the model class that covers it."""
    engine: Engine

    def image_evidence(self, probs: dict[str, float]) -> ImageEvidence:
        return ImageEvidence.build(probs, self.meta.classes, self.class_of, self.meta.balance())


def load_for_prediction(model_path: str | Path, options: PredictOptions) -> LoadedModel:
    """Load and check the model, knowledge base and call settings before any slide."""
    from models.checkpoint import load_model
    from pipeline.ihc.knowledge import load_knowledge

    options.check()
    engine = options.engine()  # bad values or no CUDA: refused now, not per slide
    model, meta = load_model(model_path)
    kb = load_knowledge(options.knowledge)
    if options.prior is not None:
        kb.prior(options.prior)  # an unknown prior names the known ones
    scheme = meta.scheme()
    class_of = kb_class_of(kb, meta.classes, lambda label: scheme.class_of(label, rest=False))
    empty = [c for c in meta.classes if c not in class_of.values()]
    if empty:
        raise UsageError(
            f"{model_path}: model class(es) {', '.join(empty)} cover no entity of the IHC "
            f"knowledge base ({kb.path}); name classes like its entities or image classes, "
            "or fold labels into them with data.label_map when training"
        )
    config = CallConfig.load(options.calls)
    sha = file_sha256(model_path)
    model = engine.prepare(model)
    return LoadedModel(Path(model_path), sha, model, meta, kb, config, class_of, engine)


def shard(entries: Sequence[SlideEntry], index: int, count: int) -> list[SlideEntry]:
    """The ``index``-th of ``count`` deterministic, disjoint shares (by sorted slide id)."""
    if not 0 <= index < count:
        raise UsageError(f"--shard {index}/{count}: need 0 <= I < N")
    ordered = sorted(entries, key=lambda e: e.slide_id)
    return [e for i, e in enumerate(ordered) if i % count == index]


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (0-based I) as given to ``--shard``."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r} must look like 0/4 (I/N with 0 <= I < N)") from None
    return index, count


def params_hash(loaded: LoadedModel, options: PredictOptions, panel_text: str) -> str:
    return params_digest(
        {
            "model": loaded.sha256,
            "prior": options.prior,
            "ihc": panel_text,
            "calls": loaded.call_config.__dict__,
            "coverage": options.coverage,
            "precision": loaded.engine.precision,
            "v": SCHEMA_VERSION,
        }
    )


def is_done(out: Path, slide_id: str, digest: str) -> bool:
    """Finished with these parameters: an ``ok`` result (errors are retried on rerun)."""
    result = read_result(result_path(out, slide_id))
    return result is not None and result.ok and result.provenance.params_hash == digest


def ood_tiles(scores: np.ndarray | None, meta: ModelMeta) -> np.ndarray | None:
    """Per tile, True beyond the model's out-of-distribution threshold (None: no detector)."""
    if scores is None or not meta.ood:
        return None
    return scores > meta.ood["threshold"]


def pre_call_reasons(
    image: ImageEvidence, ood_fraction: float | None, loaded: LoadedModel, options
) -> tuple[list[str], list[str] | None]:
    """Reasons found before the call (tissue unlike the training data, an unsettled
    prediction set) and the prediction set when one is asked for."""
    from pipeline.prediction import conformal

    reasons, chosen = [], None
    limit = loaded.call_config.max_ood_fraction
    if ood_fraction is not None and ood_fraction > limit:
        reasons.append(
            f"tissue unlike the training data: {ood_fraction:.0%} of tiles are out of "
            f"distribution (> {limit:.0%})"
        )
    if options.coverage is not None:
        scores = loaded.meta.conformal_scores or []
        q_hat = conformal.threshold(scores, options.coverage)
        posterior = image.posterior(image.class_prior(loaded.kb, options.prior))
        chosen = conformal.prediction_set(posterior, q_hat)
        why = conformal.set_reason(chosen, options.coverage, q_hat, len(scores))
        reasons += [why] if why else []
    return reasons, chosen


def qc_flags(attrs: dict, n_tiles: int, config: CallConfig) -> list[str]:
    flags = []
    if attrs["mpp_source"] == "objective-power":
        flags.append("resolution assumed from objective power")
    if n_tiles < config.min_tiles:
        flags.append(f"few tissue tiles ({n_tiles})")
    return flags
