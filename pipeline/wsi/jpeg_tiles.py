"""The stored tiles of a tiled TIFF level: which ones a region touches, and each JPEG tile as a
standalone stream that any decoder (libjpeg-turbo, nvJPEG on a GPU) can read.

A TIFF JPEG tile is an abbreviated stream: its quantisation and Huffman tables are stored once
in the page's JPEGTables tag. ``JpegLevel.stream`` splices them back in, and for pages whose
photometric interpretation is RGB (Aperio) adds an Adobe APP14 marker with transform 0, so a
decoder does not apply a YCbCr to RGB conversion the data never had.
"""

from __future__ import annotations

from dataclasses import dataclass

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
"""APP14 'Adobe' segment, version 100, transform 0: the three components are R, G, B."""


@dataclass(frozen=True)
class Piece:
    """One stored tile's part of a region: rows/columns in the tile and in the region."""

    index: int
    src: tuple[slice, slice]
    dst: tuple[slice, slice]


@dataclass(frozen=True)
class TileGrid:
    """The tile layout of one level: its size in pixels and its tiles' size."""

    width: int
    height: int
    tile_width: int
    tile_height: int

    @property
    def tiles_across(self) -> int:
        return -(-self.width // self.tile_width)

    def pieces(self, x: int, y: int, width: int, height: int) -> list[Piece]:
        """The stored tiles the region ``(x, y, width, height)`` (level pixels) overlaps, with
        the part of each that lands in it; the rest of the region lies outside the level."""
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, self.width), min(y + height, self.height)
        if x1 <= x0 or y1 <= y0:
            return []
        tw, th = self.tile_width, self.tile_height
        out = []
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            sy0, sy1 = max(y0, ty * th), min(y1, ty * th + th)
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                sx0, sx1 = max(x0, tx * tw), min(x1, tx * tw + tw)
                out.append(
                    Piece(
                        ty * self.tiles_across + tx,
                        (slice(sy0 - ty * th, sy1 - ty * th), slice(sx0 - tx * tw, sx1 - tx * tw)),
                        (slice(sy0 - y, sy1 - y), slice(sx0 - x, sx1 - x)),
                    )
                )
        return out


@dataclass(frozen=True)
class JpegLevel:
    """A JPEG-compressed tiled level: its grid and what turns its tiles into JPEG files."""

    grid: TileGrid
    tables: bytes | None
    """The page's JPEGTables (a stream of tables only), or None when each tile has its own."""
    rgb: bool
    """Components are stored as R, G, B (photometric RGB), not YCbCr."""

    def stream(self, data: bytes) -> bytes:
        """The tile's bytes as a standalone JPEG stream."""
        if not data.startswith(SOI):
            raise ValueError("tile data does not start with a JPEG SOI marker")
        head = SOI + (ADOBE_RGB if self.rgb else b"")
        if self.tables:
            body = self.tables[2:]
            head += body[:-2] if body.endswith(EOI) else body
        return head + data[2:]
