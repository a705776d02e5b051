import json

import numpy as np
import pytest

from pipeline.core.errors import UsageError
from pipeline.wsi.tissue import TissueParams, detect_tissue, tissue_mask

from .slides import GLASS, TISSUE

MPP = 8.0  # thumbnail resolution: 1 px = 8 µm, so 125 px = 1 mm


def _thumb(size=(300, 400)) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.empty((*size, 3), np.uint8)
    image[:] = GLASS
    image = np.clip(image + rng.integers(-4, 4, image.shape), 0, 255).astype(np.uint8)
    return image


def _paint(image, rows, cols, colour, seed=1):
    rng = np.random.default_rng(seed)
    patch = np.array(colour) + rng.integers(
        -20, 20, (rows.stop - rows.start, cols.stop - cols.start, 3)
    )
    image[rows, cols] = np.clip(patch, 0, 255)


def test_finds_tissue_pieces_and_keeps_holes():
    image = _thumb()
    _paint(image, slice(50, 250), slice(40, 200), TISSUE)
    _paint(image, slice(60, 140), slice(260, 360), (150, 60, 140))  # haematoxylin-rich piece
    image[120:160, 100:140] = GLASS  # a vessel lumen: 40 px = 320 µm across
    mask = detect_tissue(image, MPP)
    assert mask[150, 60] and mask[100, 300]
    assert not mask[10, 10] and not mask[280, 380]
    assert not mask[140, 120], "holes are kept by default (vessels matter in sarcomas)"
    filled = detect_tissue(image, MPP, TissueParams(fill_holes=True))
    assert filled[140, 120]
    body = mask[50:250, 40:200]
    assert body.mean() > 0.9


def test_pen_marks_dark_dirt_and_specks_are_not_tissue():
    image = _thumb()
    _paint(image, slice(50, 250), slice(40, 200), TISSUE)
    _paint(image, slice(20, 280), slice(250, 262), (40, 70, 160))  # blue pen line
    _paint(image, slice(200, 215), slice(300, 380), (50, 140, 80))  # green pen
    _paint(image, slice(10, 30), slice(370, 395), (10, 10, 10))  # black dirt
    _paint(image, slice(280, 283), slice(20, 23), TISSUE)  # speck below min area
    mask = detect_tissue(image, MPP)
    assert mask[150, 100]
    assert not mask[:, 240:400].any()
    assert not mask[275:290, 15:30].any()


def test_blank_glass_gives_an_empty_mask():
    assert not detect_tissue(_thumb(), MPP).any()


def test_user_png_mask_replaces_or_restricts(tmp_path):
    from PIL import Image

    image = _thumb()
    _paint(image, slice(50, 250), slice(40, 200), TISSUE)
    user = np.zeros((150, 200), np.uint8)  # half resolution: it is resized
    user[:, :50] = 255  # left quarter of the slide
    path = tmp_path / "mask.png"
    Image.fromarray(user).save(path)
    replaced = tissue_mask(image, 32.0, MPP, user_mask=path).mask
    assert replaced[:, :100].all() and not replaced[:, 100:].any()
    restricted = tissue_mask(image, 32.0, MPP, user_mask=path, user_mask_mode="restrict").mask
    assert restricted[150, 60] and not restricted[150, 150]


def test_geojson_polygons_with_holes_in_level0_coordinates(tmp_path):
    image = _thumb()
    ds = 32.0  # level-0 px per thumbnail px
    outer = [
        [40 * ds, 50 * ds],
        [200 * ds, 50 * ds],
        [200 * ds, 250 * ds],
        [40 * ds, 250 * ds],
        [40 * ds, 50 * ds],
    ]
    hole = [[100 * ds, 100 * ds], [140 * ds, 100 * ds], [140 * ds, 140 * ds], [100 * ds, 100 * ds]]
    doc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [outer, hole]}},
        ],
    }
    path = tmp_path / "roi.geojson"
    path.write_text(json.dumps(doc))
    mask = tissue_mask(image, ds, MPP, user_mask=path).mask
    assert mask[200, 60] and not mask[20, 20] and not mask[110, 130]
    assert mask.sum() == pytest.approx(160 * 200 - 40 * 40 / 2, rel=0.05)


def test_geojson_with_points_is_rejected(tmp_path):
    path = tmp_path / "points.geojson"
    path.write_text(
        json.dumps({"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}})
    )
    with pytest.raises(UsageError, match="Polygon"):
        tissue_mask(_thumb(), 32.0, MPP, user_mask=path)
