"""``fascicle view``: a local web server for the slide viewer (standard library only).

Routes (everything else is a 404; a malformed number a 400):

- ``/`` the page; ``/static/<name>`` its script and style, Leaflet's files (from the
  ``XStatic-Leaflet`` package, so the viewer works offline);
- ``/api/slides`` the slide list; ``/api/slides/<id>`` geometry, layers and result;
  ``/api/slides/<id>/outline`` tissue contours; ``/api/slides/<id>/at?x=&y=`` the tile there;
- ``/tiles/<id>/<level>/<col>_<row>.jpeg`` slide tiles, ``/overlay/<id>/<layer>/<level>/
  <col>_<row>.png`` overlay tiles.

No URL part is ever joined to a path: slide ids are keys into the catalogue and static names
keys into a fixed table.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from pipeline.core.errors import FascicleError, UsageError
from pipeline.viewer.catalogue import Catalogue
from pipeline.viewer.overlay import overlay_png
from pipeline.viewer.pyramid import TileOutOfRange

TILE_PATH = re.compile(r"^/tiles/([^/]+)/(\d{1,3})/(\d{1,7})_(\d{1,7})\.jpeg$")
OVERLAY_PATH = re.compile(r"^/overlay/([^/]+)/([^/]+)/(\d{1,3})/(\d{1,7})_(\d{1,7})\.png$")
SLIDE_PATH = re.compile(r"^/api/slides/([^/]+)(/outline|/at)?$")
TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".html": "text/html"}


def static_files() -> dict[str, Path]:
    """Every file the page may load, by the name it is served under."""
    from xstatic.pkg import leaflet

    here = Path(str(resources.files("pipeline.viewer") / "static"))
    base = Path(leaflet.BASE_DIR)
    files = {p.name: p for p in here.iterdir() if p.suffix in TYPES}
    files |= {"leaflet.js": base / "leaflet.js", "leaflet.css": base / "leaflet.css"}
    files |= {f"images/{p.name}": p for p in (base / "images").glob("*.png")}
    return files


class ViewerServer(ThreadingHTTPServer):
    """The HTTP server with its catalogue; ``served`` keeps the last request paths answered
    with 200 (for tests and diagnostics)."""

    daemon_threads = True

    def __init__(self, catalogue: Catalogue, host: str = "127.0.0.1", port: int = 0) -> None:
        self.catalogue = catalogue
        self.static = static_files()
        self.served: deque[str] = deque(maxlen=20000)
        super().__init__((host, port), ViewerHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> threading.Thread:
        """Serve in a background thread (stop with ``shutdown()``)."""
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        return thread


class ViewerHandler(BaseHTTPRequestHandler):
    server: ViewerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # quiet: the CLI prints the URL only
        return

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):  # the browser moved on
            return

    def do_GET(self) -> None:
        try:
            self._route(urlsplit(self.path))
        except TileOutOfRange as err:
            self._error(HTTPStatus.NOT_FOUND, str(err))
        except FascicleError as err:  # the slide file cannot be read: say which and why
            self._error(HTTPStatus.UNPROCESSABLE_ENTITY, str(err))

    def _route(self, url) -> None:
        path = url.path
        catalogue = self.server.catalogue
        if path in ("/", "/index.html"):
            return self._file("index.html")
        if path == "/favicon.ico":
            return self._send(b"", "image/x-icon", cache=True, status=HTTPStatus.NO_CONTENT)
        if path.startswith("/static/"):
            return self._file(path[len("/static/") :])
        if path == "/api/slides":
            return self._json([s.summary() for s in catalogue.slides.values()])
        for pattern, handler in (
            (TILE_PATH, self._tile),
            (OVERLAY_PATH, self._overlay),
            (SLIDE_PATH, self._slide),
        ):
            match = pattern.match(path)
            if match:
                slide = catalogue.get(unquote(match.group(1)))
                if slide is None:
                    return self._error(HTTPStatus.NOT_FOUND, "no such slide in this run")
                if slide.path is None:
                    return self._error(HTTPStatus.NOT_FOUND, slide.problem or "slide not found")
                return handler(slide, match, parse_qs(url.query))
        return self._error(HTTPStatus.NOT_FOUND, "not found")

    def _tile(self, slide, match, query) -> None:
        level, col, row = (int(g) for g in match.groups()[1:])
        self._send(slide.pyramid().jpeg(level, col, row), "image/jpeg", cache=True)

    def _overlay(self, slide, match, query) -> None:
        layer = unquote(match.group(2))
        level, col, row = (int(g) for g in match.groups()[2:])
        table = slide.table()
        if table is None or layer not in table.layers():
            return self._error(HTTPStatus.NOT_FOUND, f"no overlay {layer!r} for this slide")
        png = overlay_png(table, slide.pyramid(), layer, level, col, row)
        self._send(png, "image/png", cache=True)

    def _slide(self, slide, match, query) -> None:
        what = match.group(2)
        if what is None:
            return self._json(slide.info())
        if what == "/outline":
            return self._json(slide.outline())
        try:
            x, y = float(query["x"][0]), float(query["y"][0])
        except (KeyError, ValueError):
            return self._error(HTTPStatus.BAD_REQUEST, "give x and y as numbers")
        table = slide.table()
        self._json(table.at(x, y) if table else None)

    def _file(self, name: str) -> None:
        path = self.server.static.get(name)
        if path is None:
            return self._error(HTTPStatus.NOT_FOUND, "not found")
        self._send(path.read_bytes(), TYPES[path.suffix], cache=False)

    def _json(self, value) -> None:
        self._send(json.dumps(value).encode(), "application/json", cache=False)

    def _error(self, status: HTTPStatus, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(body, "application/json", cache=False, status=status)

    def _send(self, body: bytes, kind: str, cache: bool, status=HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)
        if status == HTTPStatus.OK:
            self.server.served.append(self.path)


def run_viewer(
    target: Path,
    result: Path | None = None,
    slides_dir: Path | None = None,
    slide_id: str | None = None,
    port: int = 0,
    open_browser: bool = False,
) -> int:
    """Serve ``target`` (a ``fascicle predict --out`` folder, or one slide file with its
    ``result`` folder) on 127.0.0.1 until interrupted; print the URL."""
    from urllib.parse import quote

    if target.is_dir():
        catalogue = Catalogue.from_run(target, slides_dir)
    else:
        catalogue = Catalogue.from_slide(target, result)
    if slide_id is not None and catalogue.get(slide_id) is None:
        raise UsageError(f"no slide {slide_id!r} in {target}; the run has {len(catalogue.slides)}")
    try:
        server = ViewerServer(catalogue, port=port)
    except OSError as err:
        catalogue.close()
        raise UsageError(
            f"cannot listen on 127.0.0.1:{port} ({err.strerror}); choose another --port, or "
            "--port 0 for a free one"
        ) from None
    url = server.url + (f"#{quote(slide_id)}" if slide_id else "")
    print(f"fascicle viewer: {url}  (Ctrl-C to stop)", flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("viewer stopped", file=sys.stderr)
    finally:
        server.server_close()
        catalogue.close()
    return 0
