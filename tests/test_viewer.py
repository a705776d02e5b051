"""``fascicle view``: the Deep Zoom pyramid against OpenSlide's, overlays, request safety, and
the page driven in headless Chromium (selenium with Debian's chromium-driver)."""

import csv
import io
import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import openslide
import pytest
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from pipeline.cli import main
from pipeline.prediction.outputs import COLOURS
from pipeline.viewer.catalogue import Catalogue
from pipeline.viewer.overlay import TileTable, overlay_png
from pipeline.viewer.pyramid import TILE, SlidePyramid, TileOutOfRange
from pipeline.viewer.server import ViewerServer


@pytest.fixture(scope="module")
def run(tiny_cohort, tiny_model, cmu_svs, tmp_path_factory) -> Path:
    """A prediction run over a synthetic slide, the real Aperio slide and a broken file."""
    folder = tmp_path_factory.mktemp("view_slides")
    synthetic = sorted((tiny_cohort / "slides").glob("*.tiff"))[0]
    shutil.copy(synthetic, folder / synthetic.name)
    shutil.copy(cmu_svs, folder / "cmu.svs")
    (folder / "broken.tiff").write_bytes(synthetic.read_bytes()[:4000])
    ihc = folder / "ihc.csv"
    rows = [("desmin", "positive"), ("h-caldesmon", "positive"), ("STAT6", "negative")]
    lines = [f"{synthetic.stem},{marker},{value}" for marker, value in rows]
    ihc.write_text("slide_id,marker,result\n" + "\n".join(lines) + "\n")
    out = tmp_path_factory.mktemp("view_run")
    code = main(["-q", "predict", str(folder), "--model", str(tiny_model), "--out", str(out),
                 "--ihc", str(ihc), "--workers", "0"])  # fmt: skip
    assert code == 1  # the broken slide fails, the others go on
    return out


@pytest.fixture(scope="module")
def server(run):
    viewer = ViewerServer(Catalogue.from_run(run))
    viewer.start()
    yield viewer
    viewer.shutdown()
    viewer.server_close()
    viewer.catalogue.close()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _tiles(run: Path, slide_id: str) -> list[dict]:
    with open(run / "slides" / slide_id / "tiles.csv") as fh:
        return list(csv.DictReader(fh))


# -- pyramid ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cmu_svs", "textured_even_tiff", "textured_tiff"])
def test_pyramid_matches_openslide_deepzoom(name, request):
    """Same geometry as OpenSlide's generator; pixels the exact area average of level 0 where
    the stored levels are exact halvings (odd-sized scans' stored levels are off by up to a
    level-0 pixel, as in OpenSlide's generator, so only the geometry is compared there)."""
    path = request.getfixturevalue(name)
    pyramid = SlidePyramid(path, mpp=0.5)
    slide = openslide.OpenSlide(str(path))
    dz = DeepZoomGenerator(slide, tile_size=TILE, overlap=0)
    assert pyramid.level_dimensions == list(dz.level_dimensions)
    assert [pyramid.tiles_across(z) for z in range(dz.level_count)] == list(dz.level_tiles)
    top = pyramid.max_level
    for level in (top, top - 1, pyramid.overview_level, pyramid.overview_level - 2):
        d = pyramid.downsample(level)
        cols, rows = dz.level_tiles[level]
        for col, row in {(0, 0), (cols - 1, rows - 1), (cols // 2, rows // 2)}:
            ours = pyramid.pixels(level, col, row).astype(int)
            h, w = ours.shape[:2]
            assert (w, h) == dz.get_tile_dimensions(level, (col, row)) or level < top - 2
            # the exact area average of level 0 (DeepZoomGenerator resamples a stored level
            # with Lanczos instead, ~8 grey levels away on fine texture)
            box = slide.read_region((col * TILE * d, row * TILE * d), 0, (w * d, h * d))
            box = Image.alpha_composite(Image.new("RGBA", box.size, "white"), box)  # as ours
            exact = np.asarray(box.convert("RGB").reduce(d)).astype(int)
            if name != "textured_tiff" or level == top:
                assert np.abs(ours - exact)[:-1, :-1].mean() < 1.5, (level, col, row)
    assert pyramid.pixels(0, 0, 0).shape == (1, 1, 3)
    cols, rows = dz.level_tiles[top]
    jpeg = Image.open(io.BytesIO(pyramid.jpeg(top, cols - 1, rows - 1)))
    assert jpeg.size == (TILE, TILE)  # edge tiles padded, so Leaflet never stretches them
    with pytest.raises(TileOutOfRange):
        pyramid.jpeg(top, cols, 0)
    with pytest.raises(TileOutOfRange):
        pyramid.jpeg(top + 1, 0, 0)
    pyramid.close()


def test_overlay_colours_each_tile_by_its_class(run):
    slide_id = next(p.name for p in (run / "slides").iterdir() if p.name.startswith("syn"))
    table = TileTable.read(run / "slides" / slide_id / "tiles.csv")
    pyramid = SlidePyramid(next(run.parent.glob("view_slides*/" + slide_id + ".tiff")), mpp=0.5)
    i = 0
    top = pyramid.max_level
    x, y, size = int(table.x[i]), int(table.y[i]), int(table.size[i])
    cx, cy = x + size // 2, y + size // 2
    png = Image.open(io.BytesIO(overlay_png(table, pyramid, "class", top, cx // TILE, cy // TILE)))
    pixel = png.getpixel((cx % TILE, cy % TILE))
    if not (table.ood is not None and table.ood[i]):
        assert pixel[:3] == COLOURS[int(table.probs[i].argmax())]
    assert pixel[3] > 0
    empty = Image.open(io.BytesIO(overlay_png(table, pyramid, "grid", 0, 0, 0)))
    assert empty.size == (TILE, TILE)
    assert table.at(cx, cy)["x"] == x and table.at(-5, -5) is None
    pyramid.close()


# -- server ----------------------------------------------------------------------------------
def test_api_lists_the_run_and_answers_tile_lookups(run, server):
    status, body = _get(server.url + "api/slides")
    slides = {s["id"]: s for s in json.loads(body)}
    assert status == 200 and set(slides) == {p.name for p in (run / "slides").iterdir()}
    assert slides["broken"]["status"] == "error"
    synthetic = next(s for s in slides if s.startswith("syn"))
    info = json.loads(_get(server.url + f"api/slides/{synthetic}")[1])
    assert info["layers"][:2] == ["class", "prob:" + info["classes"][0]]
    assert info["result"]["call"]["label"] == slides[synthetic]["call"]
    tile = _tiles(run, synthetic)[5]
    x, y = int(tile["x"]) + 3, int(tile["y"]) + 3
    found = json.loads(_get(server.url + f"api/slides/{synthetic}/at?x={x}&y={y}")[1])
    assert (found["x"], found["y"]) == (int(tile["x"]), int(tile["y"]))
    for c in info["classes"]:
        assert found["probabilities"][c] == pytest.approx(float(tile[f"prob_{c}"]))
    outline = json.loads(_get(server.url + f"api/slides/{synthetic}/outline")[1])
    assert outline and all(len(line) >= 3 for line in outline)


@pytest.mark.parametrize(
    "path",
    [
        "static/../../../etc/passwd",
        "static/%2e%2e/%2e%2e/etc/passwd",
        "static/viewer.py",
        "tiles/..%2F..%2F..%2Fetc%2Fpasswd/1/0_0.jpeg",
        "tiles/not_in_run/0/0_0.jpeg",
        "tiles/SLIDE/99/0_0.jpeg",
        "tiles/SLIDE/1/5_0.jpeg",
        "tiles/SLIDE/1/-1_0.jpeg",
        "tiles/SLIDE/1/0_0.png",
        "tiles/SLIDE/x/0_0.jpeg",
        "overlay/SLIDE/..%2Fresult.json/1/0_0.png",
        "overlay/SLIDE/prob%3Anot_a_class/1/0_0.png",
        "api/slides/SLIDE/at?x=abc&y=1",
        "api/slides/SLIDE/at",
        "etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
    ],
)
def test_malformed_requests_get_a_4xx_and_no_file(path, run, server):
    synthetic = next(p.name for p in (run / "slides").iterdir() if p.name.startswith("syn"))
    status, body = _get(server.url + path.replace("SLIDE", synthetic))
    assert 400 <= status < 500, (path, status)
    assert b"root:" not in body and b"schema_version" not in body


def test_an_unreadable_slide_is_named_with_the_fix(server):
    status, body = _get(server.url + "api/slides/broken")
    assert status == 422
    message = json.loads(body)["error"]
    assert "broken.tiff" in message and "copy it again" in message


def test_cli_refuses_what_it_cannot_show(tmp_path, capsys):
    assert main(["view", str(tmp_path)]) == 2
    assert "no slides/<id>/result.json" in capsys.readouterr().err
    assert main(["view", str(tmp_path / "missing.svs")]) == 2


def test_a_port_in_use_is_a_usage_error(run, server, capsys):
    port = server.server_address[1]
    assert main(["view", str(run), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_a_moved_slide_is_listed_with_the_fix(run, tmp_path):
    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    for doc in moved.glob("slides/*/result.json"):
        data = json.loads(doc.read_text())
        data["path"] = "/nowhere/" + Path(data["path"]).name
        doc.write_text(json.dumps(data))
    catalogue = Catalogue.from_run(moved)
    cmu = catalogue.get("cmu")
    assert cmu.path is None and "--slides" in cmu.problem
    found = Catalogue.from_run(moved, slides_dir=next(run.parent.glob("view_slides*")))
    assert found.get("cmu").path.name == "cmu.svs"


# -- the page in a real browser -------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("Chromium or chromedriver missing (.ci/run installs Debian's packages)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
                 "--disable-background-networking", "--disable-component-update",
                 f"--user-data-dir={tmp_path_factory.mktemp('chrome')}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    yield driver
    driver.quit()


def _wait(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _levels(server, prefix: str) -> set[int]:
    return {
        int(p[len(prefix) :].split("/")[0]) for p in list(server.served) if p.startswith(prefix)
    }


def _settled(browser) -> bool:
    script = "return document.querySelectorAll('.leaflet-tile-loading').length === 0"
    return browser.execute_script(script)


def _screenshot(browser, path: Path) -> Image.Image:
    browser.save_screenshot(str(path))
    return Image.open(path).convert("RGB")


@pytest.mark.parametrize("which", ["syn", "cmu"])
def test_viewer_in_headless_chromium(which, run, server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    slide_id = next(p.name for p in (run / "slides").iterdir() if p.name.startswith(which))
    result = json.loads((run / "slides" / slide_id / "result.json").read_text())
    browser.get(f"{server.url}#{slide_id}")
    shown = "return fascicle.info && fascicle.info.id === arguments[0]"
    _wait(lambda: browser.execute_script(shown, slide_id), "the slide")
    call = browser.find_element(By.ID, "call-line").text
    assert result["call"]["label"].replace("_", " ") in call
    info = browser.execute_script("return fascicle.info")
    top = info["max_level"]
    tiles, overlay = f"/tiles/{slide_id}/", f"/overlay/{slide_id}/class/"
    _wait(lambda: _levels(server, tiles) and _settled(browser), "the first tiles")
    first = _levels(server, tiles)
    assert max(first) < top  # the whole slide first, at a coarse level
    _wait(lambda: _levels(server, overlay) >= first, "the class map over them")
    assert "leiomyosarcoma" in browser.find_element(By.ID, "legend").text

    # zoom to full resolution over a tile the model saw, and read it by clicking there
    tile = _tiles(run, slide_id)[len(_tiles(run, slide_id)) // 2]
    cx, cy = int(tile["x"]) + int(tile["width"]) // 2, int(tile["y"]) + int(tile["height"]) // 2
    browser.execute_script(
        "fascicle.map.setView(fascicle.map.unproject([arguments[0], arguments[1]], "
        "fascicle.info.max_level), fascicle.info.max_level, {animate: false})",
        cx,
        cy,
    )
    _wait(lambda: top in _levels(server, tiles) and _settled(browser), "full-resolution tiles")
    _wait(lambda: top in _levels(server, overlay), "the class map at full resolution")
    ActionChains(browser).move_to_element(browser.find_element(By.ID, "map")).click().perform()
    table = _wait(lambda: browser.find_elements(By.ID, "tile-probabilities"), "tile read-out")
    text = table[0].text
    for c in info["classes"]:
        assert f"{c.replace('_', ' ')} {float(tile[f'prob_{c}']):.3f}" in text

    # switch the overlay to one class's heat layer, and show the grid and tissue outline
    browser.find_element(By.CSS_SELECTOR, f"input[value='prob:{info['classes'][0]}']").click()
    browser.find_element(By.ID, "toggle-grid").click()
    browser.find_element(By.ID, "toggle-outline").click()
    heat = f"/overlay/{slide_id}/prob%3A{info['classes'][0]}/"
    _wait(lambda: _levels(server, heat) and _levels(server, f"/overlay/{slide_id}/grid/"), "heat")
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".leaflet-overlay-pane path"), "outline")
    _wait(lambda: _settled(browser), "the heat layer")
    shot = _screenshot(browser, tmp_path / f"viewer_{which}.png")
    map_area = np.asarray(shot)[:, 400:]
    assert map_area.std() > 10  # tissue and overlay drawn, not a blank page
    if which == "syn":
        panel = browser.find_element(By.ID, "ihc").text
        assert "IHC differential" in panel and "desmin" in panel
    else:  # the real slide: zoom out to the lowest level too
        browser.execute_script("fascicle.map.setZoom(0, {animate: false})")
        _wait(lambda: 0 in _levels(server, tiles), "the lowest zoom level")
    assert len(_levels(server, tiles)) >= 2


def test_attention_layer_for_mil_tiles(run, tmp_path):
    slide_id = next(p.name for p in (run / "slides").iterdir() if p.name.startswith("syn"))
    rows = _tiles(run, slide_id)
    for i, row in enumerate(rows):
        row["attention"] = str(i / len(rows))
    path = tmp_path / "tiles.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = TileTable.read(path)
    assert table.layers()[-1] == "attention"
    rgba = table.colours("attention")
    assert tuple(rgba[0, :3]) != tuple(rgba[-1, :3])  # low and high attention differ
    assert table.at(int(rows[-1]["x"]) + 1, int(rows[-1]["y"]) + 1)["attention"] > 0.9


def test_one_slide_with_its_result_folder(run, cmu_svs):
    copy = next(run.parent.glob("view_slides*")) / "cmu.svs"
    for given in (run, run / "slides" / "cmu"):
        catalogue = Catalogue.from_slide(copy, given)
        (viewed,) = catalogue.slides.values()
        assert viewed.result.slide_id == "cmu" and viewed.table() is not None
        catalogue.close()
    alone = Catalogue.from_slide(cmu_svs)
    assert alone.get(cmu_svs.stem).info()["layers"] == []
    alone.close()
