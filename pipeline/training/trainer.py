"""What tile and MIL training share: the Lightning trainer with its loggers and checkpoint,
the best weights after fitting, and writing the exported model with its metrics."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from models.meta import ModelMeta
from pipeline.core.atomic import write_text
from pipeline.core.errors import UsageError
from pipeline.training.config import RunConfig

log = logging.getLogger(__name__)
SELECTION = "val/selection"
TIE_BREAK = 1e-4
"""Weight of the validation loss in the selection score: far below one step of a slide
metric (1 / (2 x validation slides) for up to 5000 slides), so it only breaks ties."""


def selection_score(metrics: dict[str, float], monitor: str, mode: str) -> float | None:
    """The number the best checkpoint and early stopping follow: the monitored metric (higher
    is better), ties broken by the lower validation loss. None when it was not logged."""
    value = metrics.get(monitor)
    if value is None:
        return None
    score = float(value) if mode == "max" else -float(value)
    loss = metrics.get("val/loss")
    if loss is not None and monitor != "val/loss":
        score -= TIE_BREAK * float(loss)
    return score


def _selection_callback(monitor: str, mode: str):
    """Adds ``val/selection`` to the epoch's metrics before checkpointing reads them."""
    import pytorch_lightning as pl
    import torch

    class Selection(pl.Callback):
        def on_validation_end(self, trainer, pl_module) -> None:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            score = selection_score(metrics, monitor, mode)
            if score is None:
                if not trainer.sanity_checking:
                    raise UsageError(
                        f"trainer.monitor={monitor!r} was not logged; logged: "
                        f"{', '.join(sorted(k for k in metrics if k.startswith('val/')))}"
                    )
                return
            trainer.callback_metrics[SELECTION] = torch.tensor(score)

    return Selection()


@dataclass
class TrainResult:
    model_path: Path
    metrics: dict

    def describe(self) -> str:
        val = self.metrics["val"]
        return (
            f"model: {self.model_path}\nvalidation ({self.metrics['val_slides']} slides): "
            f"slide balanced accuracy {val['balanced_accuracy']:.3f}, "
            f"macro AUROC {val['auroc_macro']:.3f}"
        )


def scheme_fields(scheme, labels) -> dict:
    """The class scheme as model metadata: classes, the labels seen in training folded into
    them, the positive class, and the balance the class-balanced sampler trains at."""
    seen = {x for x in labels if x}
    label_map = {k: scheme.class_of(k) for k in sorted(seen) if k not in scheme.classes}
    return {
        "classes": list(scheme.classes),
        "label_map": label_map or None,
        "rest_class": scheme.rest,
        "positive_class": scheme.positive,
        "class_balance": [1.0 / len(scheme.classes)] * len(scheme.classes),
    }


def check_accelerator(config: RunConfig) -> None:
    """A GPU asked for where there is none is a usage error now, not Lightning's later."""
    import torch

    accelerator = str(config.trainer.accelerator)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"trainer.accelerator={accelerator} but this machine has no CUDA GPU; "
            "pass --trainer.accelerator=cpu (and --trainer.precision=32-true)"
        )


def make_trainer(config: RunConfig, run_dir: Path, progress: bool):
    """A Lightning trainer per ``config.trainer`` and the checkpoint callback it uses."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    t = config.trainer
    mode = t.monitor_mode or ("min" if t.monitor.endswith("loss") else "max")
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        monitor=SELECTION,
        mode="max",
        save_last=True,
        filename="best-{epoch:03d}",
    )
    callbacks = [_selection_callback(t.monitor, mode)]
    if t.early_stopping_patience is not None:
        callbacks.append(
            EarlyStopping(SELECTION, patience=t.early_stopping_patience, mode="max", strict=False)
        )
    callbacks.append(checkpoint)
    trainer = pl.Trainer(
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,
        deterministic=t.deterministic,
        log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        logger=[CSVLogger(run_dir, name="logs"), TensorBoardLogger(run_dir, name="tb")],
        callbacks=callbacks,
        use_distributed_sampler=False,
        enable_progress_bar=progress,
        enable_model_summary=progress,
        default_root_dir=run_dir,
    )
    return trainer, checkpoint


def best_state(checkpoint, model: nn.Module) -> dict:
    """Weights of the best checkpoint (or the current ones if none was kept)."""
    import torch

    path = checkpoint.best_model_path or checkpoint.last_model_path
    if not path:
        return model.state_dict()
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def write_model(
    run_dir: Path, model: nn.Module, meta: ModelMeta, metrics: dict, checkpoint
) -> TrainResult:
    """``model.ckpt`` and ``metrics.json`` (with the best checkpoint) in ``run_dir``."""
    from models.checkpoint import save_model

    metrics["best_checkpoint"] = str(checkpoint.best_model_path)
    metrics["selection"] = {"score": SELECTION, "tie_break": f"- {TIE_BREAK} x val/loss"}
    metrics["best_score"] = (
        None if checkpoint.best_model_score is None else float(checkpoint.best_model_score)
    )
    meta.val_slide_metrics = metrics["val"]
    path = save_model(run_dir / "model.ckpt", model, meta)
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=float) + "\n")
    log.info("model written to %s", path)
    return TrainResult(path, metrics)
