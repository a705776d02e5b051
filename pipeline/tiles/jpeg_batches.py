"""Tiles decoded from the slide's own JPEG bytes, a batch at a time, on the model's device.

On a GPU machine the CPU path (decode every stored tile with libjpeg-turbo, crop, resize and
normalise on the CPU) sets the pace, not the model. Here producer threads, each on its own
CUDA stream and a batch ahead of the model, read the compressed bytes of the stored tiles a
batch touches; ``decode_jpeg`` decodes them together on the device (nvJPEG on CUDA), and the
crop, the box resize (Pillow's BOX filter as a pair of matrix products) and the normalisation
run there too, so the model's input never leaves the device. The first region of each slide is
compared with the CPU reader: a decoder that reads colours differently sends that slide back
to the CPU path, and so does any batch whose bytes cannot be read or decoded (the CPU path
then names the damage).

The same code runs on the CPU with libjpeg-turbo: that is how CI tests it without a GPU.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from pipeline.core.ahead import read_ahead
from pipeline.core.errors import FascicleError
from pipeline.tiles.dataset import TileDataset, collate_with_mask
from pipeline.wsi.jpeg_tiles import JpegLevel, Piece
from pipeline.wsi.slide import Slide

log = logging.getLogger(__name__)
MAX_MEAN_DIFFERENCE = 2.0
"""Grey levels: more between the device's region and the CPU reader's means another colour
transform (e.g. RGB JPEG read as YCbCr: ~50), not decoder rounding (< 1)."""

Decode = Callable[[list[torch.Tensor]], list[torch.Tensor]]


def box_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of Pillow's BOX resampling along one axis (its
    ``precompute_coeffs``): each output pixel averages the inputs whose centres fall in it."""
    scale = size_in / size_out
    support = 0.5 * max(scale, 1.0)
    weights = np.zeros((size_out, size_in), np.float64)
    for i in range(size_out):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), size_in)
        x = (np.arange(lo, hi) - centre + 0.5) / max(scale, 1.0)
        w = ((x > -0.5) & (x <= 0.5)).astype(np.float64)
        weights[i, lo:hi] = w / w.sum() if w.sum() else 0
    return weights


@dataclass
class _SlideJpeg:
    slide: Slide
    jpeg: JpegLevel
    level: int
    downsample: int
    patch: int
    weights: torch.Tensor | None
    checked: bool = False
    on_cpu: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _open(dataset: TileDataset, device: str) -> dict[int, _SlideJpeg] | None:
    """The JPEG level of each slide the dataset's items use, or None when one is not a JPEG
    tiled TIFF aligned with its tiles (the CPU path reads those)."""
    opened: dict[int, _SlideJpeg] = {}
    try:
        for s in np.unique(dataset.items[:, 0]).tolist():
            tiles, spec = dataset.slides[s], dataset.slides[s].spec
            slide = Slide(tiles.entry.path, mpp=tiles.entry.mpp, backend=dataset.backend)
            ds = slide.level_downsamples[spec.level]
            jpeg = slide.jpeg_level(spec.level)
            opened[s] = _SlideJpeg(slide, jpeg, spec.level, round(ds), spec.patch_size, None)
            if jpeg is None or abs(ds - round(ds)) > 1e-6:
                raise ValueError(f"{tiles.entry.slide_id}: level {spec.level} is not JPEG tiles")
            if spec.patch_size != spec.tile_px:
                w = box_weights(spec.patch_size, spec.tile_px)
                opened[s].weights = torch.tensor(w, dtype=torch.float32, device=device)
    except (FascicleError, OSError, ValueError) as err:
        log.info("tiles decoded on the CPU: %s", err)
        for sj in opened.values():
            sj.slide.close()
        return None
    return opened


def device_batches(
    dataset: TileDataset,
    batch_size: int,
    device: str,
    mean: Sequence[float],
    std: Sequence[float],
    decode: Decode | None = None,
    producers: int = 2,
) -> Iterator[tuple[torch.Tensor, np.ndarray]] | None:
    """Normalised (B, 3, tile_px, tile_px) float32 batches on ``device`` with their readable
    mask, as ``threaded_batches`` gives them; None when a slide does not allow it.

    ``decode`` turns a list of JPEG byte tensors into (3, H, W) uint8 tensors on ``device``
    (default: ``torchvision.io.decode_jpeg`` there); ``producers`` threads each read, decode
    and assemble a batch, so decoding overlaps the model."""
    if not isinstance(dataset, TileDataset) or not len(dataset):
        return None
    slides = _open(dataset, device)
    if slides is None:
        return None
    if decode is None:
        decode = _torchvision_decoder(device)

    shift = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
    scale = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
    job = _Job(dataset, slides, device, decode, shift, scale)
    return _batches(job, batch_size, producers)


def _torchvision_decoder(device: str) -> Decode:
    """``torchvision.io.decode_jpeg`` on ``device`` (nvJPEG on CUDA, libjpeg-turbo on CPU)."""
    import warnings

    with warnings.catch_warnings():  # torchvision >= 0.29 points to TorchCodec; still works
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

    def decode(data: list[torch.Tensor]) -> list[torch.Tensor]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

    return decode


def _read(dataset: TileDataset, slides: dict[int, _SlideJpeg], indices: range):
    """Pieces of each item and the JPEG streams they need (runs in the reading thread)."""
    plans: list[tuple[int, list[Piece]]] = []
    keys: list[tuple[int, int]] = []
    streams: list[torch.Tensor] = []
    seen: set[tuple[int, int]] = set()
    for i in indices:
        s, x, y = (int(v) for v in dataset.items[i])
        sj = slides[s]
        if sj.on_cpu or x % sj.downsample or y % sj.downsample:
            raise ValueError(f"tile {i} is read on the CPU")
        pieces = sj.jpeg.grid.pieces(x // sj.downsample, y // sj.downsample, sj.patch, sj.patch)
        plans.append((s, pieces))
        for piece in pieces:
            key = (s, piece.index)
            if key in seen:
                continue
            seen.add(key)
            data = sj.slide.tile_bytes(sj.level, piece.index)
            if data is not None:
                keys.append(key)
                streams.append(torch.frombuffer(bytearray(sj.jpeg.stream(data)), dtype=torch.uint8))
    return plans, keys, streams


def _assemble(plans, tiles: dict, slides: dict[int, _SlideJpeg], device: str) -> torch.Tensor:
    """(B, 3, patch, patch) uint8 regions from the decoded stored tiles (white off the slide)."""
    out: list[torch.Tensor] = []
    for s, pieces in plans:
        sj = slides[s]
        region = torch.full((3, sj.patch, sj.patch), 255, dtype=torch.uint8, device=device)
        for p in pieces:
            tile = tiles.get((s, p.index))
            if tile is not None:
                region[:, p.dst[0], p.dst[1]] = tile[:3, p.src[0], p.src[1]]
        out.append(region)
    return torch.stack(out)


def _check(sj: _SlideJpeg, region: torch.Tensor, x: int, y: int) -> None:
    """Send the slide to the CPU path when the device reads its first region differently."""
    sj.checked = True
    cpu = sj.slide.read_region(x, y, sj.level, sj.patch, sj.patch).astype(np.float32)
    mine = region.permute(1, 2, 0).cpu().numpy().astype(np.float32)
    diff = float(np.abs(mine - cpu).mean())
    if diff > MAX_MEAN_DIFFERENCE:
        sj.on_cpu = True
        log.warning(
            "%s: the device's JPEG decoder differs from the CPU reader by %.1f grey levels on "
            "average; this slide is decoded on the CPU",
            sj.slide.path,
            diff,
        )


@dataclass
class _Job:
    """What every producer thread shares for one dataset."""

    dataset: TileDataset
    slides: dict[int, _SlideJpeg]
    device: str
    decode: Decode
    shift: torch.Tensor
    scale: torch.Tensor


_STREAMS = threading.local()


def _on_device(job: _Job, indices: range, read) -> torch.Tensor | None:
    """The batch's uint8 regions decoded on the device, or None when the CPU must read it."""
    if isinstance(read, Exception):
        log.debug("tiles %d.. read on the CPU: %s", indices[0], read)
        return None
    plans, keys, streams = read
    s = plans[0][0]
    sj = job.slides[s]
    if any(p[0] != s for p in plans):
        return None  # a batch spanning two slides (their patch sizes may differ)
    try:
        tiles = dict(zip(keys, job.decode(streams) if streams else [], strict=True))
    except RuntimeError as err:  # a damaged tile (the CPU path names it), or no decoder
        log.warning("%s: tiles %d.. decoded on the CPU (%s)", sj.slide.path, indices[0], err)
        return None
    regions = _assemble(plans, tiles, job.slides, job.device)
    with sj.lock:  # no batch of a slide leaves before its first region has been checked
        if not sj.checked:
            _, x, y = (int(v) for v in job.dataset.items[indices[0]])
            _check(sj, regions[0], x, y)
        return None if sj.on_cpu else regions


def _produce(job: _Job, indices: range) -> tuple[torch.Tensor, np.ndarray]:
    """One batch, ready for the model (runs in a producer thread, on its own CUDA stream so
    it overlaps the model's work on the previous batch)."""
    cuda = job.device.startswith("cuda")
    if cuda and not hasattr(_STREAMS, "stream"):
        _STREAMS.stream = torch.cuda.Stream(job.device)
    with torch.cuda.stream(_STREAMS.stream) if cuda else contextlib.nullcontext():
        try:
            read = _read(job.dataset, job.slides, indices)
        except (FascicleError, OSError, ValueError) as err:
            read = err
        regions = _on_device(job, indices, read)
        if regions is None:
            batch, readable = collate_with_mask([job.dataset[i] for i in indices])
            if not readable.all():  # damaged: the CPU path reads the rest, as it would
                for s in {int(job.dataset.items[i][0]) for i in indices}:
                    job.slides[s].on_cpu = True
            return batch["image"], readable
        images = regions.float()
        weights = job.slides[read[0][0][0]].weights
        if weights is not None:
            images = weights @ images @ weights.T
        images = (images - job.shift) / job.scale
        if cuda:
            _STREAMS.stream.synchronize()  # ready before the model's stream reads it
        return images, np.ones(len(indices), bool)


def _batches(job: _Job, batch_size: int, producers: int):
    n = len(job.dataset)
    ranges = (range(i, min(i + batch_size, n)) for i in range(0, n, batch_size))
    try:
        yield from read_ahead(partial(_produce, job), ranges, producers, producers, "fascicle-jpeg")
    finally:
        for sj in job.slides.values():
            sj.slide.close()
