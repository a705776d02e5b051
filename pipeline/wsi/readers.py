"""Pixel readers behind one small interface.

``OpenSlideReader`` reads every format OpenSlide knows (Aperio, generic tiled TIFF, NDPI,
MRXS, Philips, DICOM, ...). ``TiffReader`` is a fast path for JPEG/JPEG 2000 tiled TIFF-family
slides (Aperio SVS, generic tiled TIFF): it decodes the compressed tiles a region touches with
tifffile + imagecodecs, keeps a small cache of decoded tiles, and skips OpenSlide's RGBA
compositing; its pixels equal OpenSlide's within JPEG decoder rounding. A region whose origin
falls between pixels of the level (a level with a non-integer downsample) is read through
OpenSlide, which resamples it. ``ImageReader`` covers
plain PNG/JPEG files for small inputs. ``open_reader`` picks the best one automatically.

Every reader returns RGB ``uint8`` arrays; pixels outside the image are white (glass).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image

from pipeline.core.errors import CorruptSlideError, SlideNotFoundError, UnsupportedFormatError
from pipeline.wsi.jpeg_tiles import JpegLevel, TileGrid

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
FAST_VENDORS = {"aperio", "generic-tiff"}
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
CONVERT_FIX = (
    "fascicle reads the formats OpenSlide reads (Aperio .svs, tiled .tif/.tiff, .ndpi, .mrxs, "
    "Philips .tiff, DICOM .dcm, ...) and plain PNG/JPEG; convert other files to a pyramidal "
    "tiled TIFF, e.g. with `vips tiffsave in out.tif --tile --pyramid --compression jpeg`"
)


class Reader(ABC):
    """Read RGB regions from a multi-resolution image."""

    name: str
    path: Path
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: Mapping[str, str]

    @abstractmethod
    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """Region of ``width`` x ``height`` pixels at ``level``; ``x, y`` in level-0 pixels."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles."""


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite non-premultiplied RGBA over white (transparent means no scanned data)."""
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.uint16)
    rgb = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return rgb.astype(np.uint8)


def pil_rgba_to_rgb(image: Image.Image) -> np.ndarray:
    """``rgba_to_rgb`` for a PIL image, in C (a strided numpy copy costs ~10x more)."""
    if image.getchannel("A").getextrema()[0] < 255:
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image)
    rgb = image.tobytes("raw", "RGB")
    return np.frombuffer(rgb, np.uint8).reshape(image.height, image.width, 3)


class OpenSlideReader(Reader):
    """The universal backend: any format OpenSlide reads."""

    name = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        self.path = path
        try:
            self._slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as err:
            if path.suffix.lower() == ".dcm" or "flavor" in str(err).lower():
                raise UnsupportedFormatError(
                    path,
                    f"a DICOM variant OpenSlide cannot read ({err})",
                    "OpenSlide reads DICOM whole-slide images (VL Whole Slide Microscopy, tiled "
                    "full); convert this one to a pyramidal tiled TIFF",
                ) from None
            raise CorruptSlideError(
                path,
                f"OpenSlide recognised the format but could not open it ({err})",
                "the file is probably truncated or damaged; copy it again from the scanner",
            ) from None
        self.level_dimensions = tuple(self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.properties = MappingProxyType(dict(self._slide.properties))
        self.vendor = self.properties.get("openslide.vendor", "")

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        import openslide

        try:
            image = self._slide.read_region((int(x), int(y)), level, (int(width), int(height)))
        except openslide.OpenSlideError as err:
            raise CorruptSlideError(
                self.path,
                f"could not decode pixels at ({x}, {y}) level {level} ({err})",
                "the file is probably truncated or damaged; copy it again from the scanner",
            ) from None
        return pil_rgba_to_rgb(image)

    def close(self) -> None:
        self._slide.close()


@dataclass(frozen=True)
class _TiffLevel:
    page: object
    grid: TileGrid
    offsets: tuple[int, ...]
    bytecounts: tuple[int, ...]


class TiffReader(Reader):
    """Fast path for tiled TIFF-family slides: decode only the tiles a region touches.

    Built on an ``OpenSlideReader`` for metadata, so levels and properties are OpenSlide's.
    Raises ``ValueError`` from the constructor when the file does not fit the fast path.
    """

    name = "tifffile"
    cache_tiles = 96
    """Decoded tiles kept per reader (~19 MB for 256 px tiles): neighbouring regions in a
    row-major grid share tiles, so each is decoded about once."""

    def __init__(self, base: OpenSlideReader) -> None:
        import tifffile

        self.path = base.path
        self.level_dimensions = base.level_dimensions
        self.level_downsamples = base.level_downsamples
        self.properties = base.properties
        self._base = base
        self._tif = tifffile.TiffFile(str(self.path))
        try:
            self._levels = [self._match_level(w, h) for w, h in self.level_dimensions]
        except ValueError:
            self._tif.close()
            raise
        self._fd = os.open(self.path, os.O_RDONLY)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def _match_level(self, width: int, height: int) -> _TiffLevel:
        from tifffile import COMPRESSION, PHOTOMETRIC, PLANARCONFIG

        decodable = {COMPRESSION.JPEG, COMPRESSION.APERIO_JP2000_RGB, COMPRESSION.JPEG2000}
        decodable |= {COMPRESSION.NONE, COMPRESSION.LZW, COMPRESSION.ADOBE_DEFLATE}
        for page in self._tif.pages:
            if page.shape[:2] != (height, width) or not page.is_tiled:
                continue
            ok = (
                page.compression in decodable
                and page.samplesperpixel in (3, 4)
                and page.planarconfig == PLANARCONFIG.CONTIG
                and page.imagedepth == 1
                and page.bitspersample == 8
                and (page.photometric == PHOTOMETRIC.RGB or page.compression == COMPRESSION.JPEG)
            )
            if not ok:
                raise ValueError("level not decodable by the fast path")
            return _TiffLevel(
                page=page,
                grid=TileGrid(width, height, page.tilewidth, page.tilelength),
                offsets=tuple(page.dataoffsets),
                bytecounts=tuple(page.databytecounts),
            )
        raise ValueError(f"no tiled TIFF page of {width}x{height}")

    def tile_bytes(self, level: int, index: int) -> bytes | None:
        """The stored (compressed) bytes of one tile; None for a tile never written."""
        lv = self._levels[level]
        count = lv.bytecounts[index]
        if count == 0:  # sparse TIFF
            return None
        data = os.pread(self._fd, count, lv.offsets[index])
        if len(data) != count:
            raise CorruptSlideError(
                self.path,
                f"tile {index} of level {level}: the file ends {count - len(data)} bytes early",
                "the file is probably truncated or damaged; copy it again from the scanner",
            )
        return data

    def jpeg_level(self, level: int) -> JpegLevel | None:
        """The level's tiles as JPEG streams, or None when it is not JPEG-compressed."""
        from tifffile import COMPRESSION, PHOTOMETRIC

        page = self._levels[level].page
        if page.compression != COMPRESSION.JPEG:
            return None
        rgb = page.photometric == PHOTOMETRIC.RGB
        return JpegLevel(self._levels[level].grid, page.jpegtables, rgb)

    def grid(self, level: int) -> TileGrid:
        return self._levels[level].grid

    def _tile(self, level: int, index: int) -> np.ndarray | None:
        key = (level, index)
        tile = self._cache.get(key)
        if tile is not None:
            self._cache.move_to_end(key)
            return tile
        data = self.tile_bytes(level, index)
        if data is None:
            return None
        page = self._levels[level].page
        try:
            segment, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as err:
            raise CorruptSlideError(
                self.path,
                f"tile {index} of level {level} cannot be decoded ({err})",
                "the file is probably truncated or damaged; copy it again from the scanner",
            ) from None
        tile = np.ascontiguousarray(segment[0, :, :, :3])
        self._cache[key] = tile
        if len(self._cache) > self.cache_tiles:
            self._cache.popitem(last=False)
        return tile

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        fx, fy = x / ds, y / ds
        if abs(fx - round(fx)) > 1e-6 or abs(fy - round(fy)) > 1e-6:
            # OpenSlide resamples at sub-pixel offsets; defer to it so pixels stay identical
            return self._base.read_region(x, y, level, width, height)
        out = np.full((height, width, 3), 255, np.uint8)
        for piece in self._levels[level].grid.pieces(round(fx), round(fy), width, height):
            tile = self._tile(level, piece.index)
            if tile is not None:
                out[piece.dst] = tile[piece.src]
        return out

    def close(self) -> None:
        os.close(self._fd)
        self._tif.close()
        self._base.close()


class ImageReader(Reader):
    """A plain PNG/JPEG image as a one-level slide (small inputs only: it is held in memory)."""

    name = "image"

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with Image.open(path) as image:
                self._pixels = np.asarray(image.convert("RGBA"))
        except Image.DecompressionBombError:
            raise UnsupportedFormatError(
                path,
                "image too large to read as a plain PNG/JPEG",
                "convert it to a pyramidal tiled TIFF",
            ) from None
        except (OSError, SyntaxError, ValueError) as err:
            raise CorruptSlideError(path, f"cannot decode image ({err})", "re-export it") from None
        self._pixels = rgba_to_rgb(self._pixels)
        h, w = self._pixels.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.properties = MappingProxyType({})

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        out = np.full((height, width, 3), 255, np.uint8)
        h, w = self._pixels.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, w), min(y + height, h)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._pixels[y0:y1, x0:x1]
        return out


def _looks_like_slide(path: Path) -> bool:
    """True when the header is a TIFF or DICOM one, i.e. a damaged slide rather than junk."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    return head[:4] in TIFF_MAGIC or head[128:132] == b"DICM"


def open_reader(path: str | Path, backend: str = "auto") -> Reader:
    """Open ``path`` with the best reader: ``auto``, ``openslide``, ``tifffile`` or ``image``."""
    import openslide

    path = Path(path)
    if not path.exists():
        raise SlideNotFoundError(path, "file not found", "check the path or the manifest")
    if path.is_file() and path.stat().st_size == 0:
        raise CorruptSlideError(path, "file is empty", "copy it again from the scanner")
    if backend == "image" or (backend == "auto" and path.suffix.lower() in IMAGE_SUFFIXES):
        return ImageReader(path)
    if openslide.OpenSlide.detect_format(str(path)) is None:
        if path.is_file() and _looks_like_slide(path):
            raise CorruptSlideError(
                path,
                "has a TIFF/DICOM header but OpenSlide cannot read it",
                "the file is probably truncated or damaged; copy it again from the scanner",
            )
        raise UnsupportedFormatError(path, "not a slide format fascicle can read", CONVERT_FIX)
    base = OpenSlideReader(path)
    if backend == "openslide" or (backend == "auto" and base.vendor not in FAST_VENDORS):
        return base
    try:
        return TiffReader(base)
    except ValueError:
        if backend == "tifffile":
            base.close()
            raise UnsupportedFormatError(
                path, "not a tiled TIFF the tifffile reader can decode", "use --backend auto"
            ) from None
        return base
