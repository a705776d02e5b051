"""How tiles reach a model at inference: device, numeric precision, decode threads, torch
threads, and where JPEG tiles are decoded. ``plan_engine`` picks each from the machine
unless it is given.

Measured on a 2-core CPU (``scripts/bench_predict.py``): decoding in threads of the main
process (tifffile/imagecodecs, Pillow and OpenCV release the GIL) reads 2-3x as many tiles/s
as DataLoader worker processes, which pickle every tensor across a pipe, and spares their
memory; so the inference runner decodes in threads and torch keeps every core for the model.
bf16 autocast runs a CNN 2-3x faster on CPUs with AVX512-BF16 or AMX.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

import torch

from pipeline.core.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DECODES = ("auto", "cpu", "device")


@dataclass(frozen=True)
class Engine:
    """How one inference run feeds its model."""

    device: str
    precision: str
    """``fp32``, ``bf16`` or ``fp16`` (autocast; fp16 on CUDA only)."""
    workers: int
    """Threads that read and decode tiles on the CPU, ahead of the model (0: in line)."""
    threads: int
    """torch intra-op threads (CPU)."""
    decode: str
    """``cpu``, or ``device``: JPEG tiles decoded on the model's device where the slide allows
    (``pipeline.tiles.jpeg_batches``)."""

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def channels_last(self) -> bool:
        """NHWC tensors: the fast layout for convolutions under bf16/fp16 (oneDNN, cuDNN)."""
        return self.precision != "fp32" or self.cuda

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast("cuda" if self.cuda else "cpu", dtype=dtype)

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """Put ``module`` on the device in evaluation mode and the engine's layout; set threads."""
        if not self.cuda:
            torch.set_num_threads(self.threads)
        module = module.to(self.device).eval()
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def doc(self) -> dict[str, object]:
        """What a result's provenance records of the engine."""
        return {
            "device": self.device,
            "precision": self.precision,
            "decode_threads": self.workers,
            "torch_threads": None if self.cuda else self.threads,
        }


def cpu_count() -> int:
    """Cores this process may use (its affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def cpu_has_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (x86 AVX512-BF16 or AMX, Arm BF16)."""
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read(1 << 16)
    except OSError:
        return False
    flags = set(re.findall(r"[a-z0-9_]+", text.split("flags", 1)[-1].split("\n", 1)[0]))
    flags |= set(re.findall(r"[a-z0-9_]+", text.split("Features", 1)[-1].split("\n", 1)[0]))
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; refuse CUDA where there is none."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA device is available; use cpu")
    return device


def plan_engine(
    device: str = "auto",
    precision: str = "auto",
    workers: int | None = None,
    threads: int | None = None,
    decode: str = "auto",
) -> Engine:
    """The engine for this machine; each ``None``/``auto`` is chosen from the hardware.

    CPU: torch gets every core, one decode thread per two cores reads ahead (decoding costs a
    few percent of a CNN's work per tile), bf16 where the CPU has it. CUDA: fp16, decode on the
    device, CPU decode threads (for slides the device path cannot read) on every core but one.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if decode not in DECODES:
        raise UsageError(f"--decode {decode!r}: use one of {', '.join(DECODES)}")
    for name, value in (("--workers", workers), ("--threads", threads)):
        if value is not None and value < (1 if name == "--threads" else 0):
            raise UsageError(f"{name} must be at least {int(name == '--threads')}, got {value}")
    device = resolve_device(device)
    cuda, cores = device.startswith("cuda"), cpu_count()
    if precision == "auto":
        precision = "fp16" if cuda else ("bf16" if cpu_has_bf16() else "fp32")
    if precision == "fp16" and not cuda:
        raise UsageError("--precision fp16 needs a CUDA device; on CPU use bf16 or fp32")
    if decode == "auto":
        decode = "device" if cuda else "cpu"
    if workers is None:
        workers = max(1, cores - 1) if cuda else max(1, cores // 2)
    return Engine(device, precision, workers, threads or cores, decode)
