"""OHIF v3 on loopback: the prebuilt viewer and Orthanc's DICOMweb behind one origin.

Orthanc 1.10 sends no CORS headers and OHIF's static build expects to live at `/`, so
a small HTTP server serves the OHIF dist (with an `index.html` fallback for app routes
such as `/viewer`), serves our one OHIF configuration (`deploy/ohif/app-config.js`, the
compose stack's too), proxies `/dicom-web` and `/wado` to Orthanc with the `Host`
header passed through (Orthanc's BulkDataURIs then stay on this origin), and adds the
cross-origin isolation headers OHIF needs for its shared-memory decoders.
`scripts/ensure-viewer.sh` fetches the OHIF build into `ohif_dist()`.
"""

from __future__ import annotations

import http.server
import logging
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

OHIF_VERSION = "3.13.2"
APP_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "ohif" / "app-config.js"
PROXIED_PREFIXES = ("/dicom-web/", "/wado")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "accept-encoding"}
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
PROXY_TIMEOUT_S = 120
INSTALL_HINT = "run `make viewer-packages` (bash scripts/ensure-viewer.sh)"


class ViewerError(RuntimeError):
    """The viewer cannot be served; the message says what is missing and how to install it."""


def ohif_dist() -> Path:
    """Where scripts/ensure-viewer.sh keeps the trimmed OHIF build (NODESTAGE_OHIF_DIR overrides)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = Path(os.environ.get("NODESTAGE_OHIF_DIR") or cache / "nodestage" / f"ohif-{OHIF_VERSION}")
    dist = root / "dist"
    if not (dist / "index.html").is_file():
        raise ViewerError(f"OHIF {OHIF_VERSION} not found at {dist}: {INSTALL_HINT}")
    return dist


def viewer_url(base: str, study_uid: str, series_uid: str | None = None) -> str:
    """OHIF's address of one study, opening `series_uid` (a SEG shows over its CT) first."""
    query = {"StudyInstanceUIDs": study_uid}
    if series_uid:
        query["initialSeriesInstanceUID"] = series_uid
    return f"{base}/viewer?{urllib.parse.urlencode(query)}"


def _handler(dist: Path, orthanc_url: str, app_config: bytes) -> type[http.server.SimpleHTTPRequestHandler]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(dist), **kwargs)

        def end_headers(self) -> None:
            for name, value in ISOLATION_HEADERS.items():
                self.send_header(name, value)
            super().end_headers()

        def log_message(self, fmt: str, *args) -> None:
            log.debug("viewer: " + fmt, *args)

        def _proxy(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            request = urllib.request.Request(orthanc_url + self.path, data=body, method=self.command,
                                             headers=headers)
            try:
                response = urllib.request.urlopen(request, timeout=PROXY_TIMEOUT_S)
            except urllib.error.HTTPError as err:
                response = err
            except OSError as err:
                log.warning("viewer: Orthanc did not answer %s: %s", self.path.split("?")[0], err)
                self.send_error(502)
                return
            with response:
                data = response.read()
                self.send_response(response.status)
                for name, value in response.headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = urllib.parse.urlsplit(self.path).path
            if path.startswith(PROXIED_PREFIXES):
                return self._proxy()
            if path == "/app-config.js":
                self.send_response(200)
                self.send_header("Content-Type", "application/javascript")
                self.send_header("Content-Length", str(len(app_config)))
                self.end_headers()
                self.wfile.write(app_config)
                return None
            target = (dist / path.lstrip("/")).resolve()
            if path == "/" or not target.is_file() or dist.resolve() not in target.parents:
                self.path = "/index.html"  # OHIF's client-side routes (/viewer, /segmentation, ...)
            return super().do_GET()

        def do_POST(self) -> None:  # noqa: N802
            path = urllib.parse.urlsplit(self.path).path
            if path.startswith(PROXIED_PREFIXES):
                return self._proxy()
            self.send_error(405)
            return None

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class ViewerServer:
    """OHIF + the Orthanc proxy on a loopback port, served from a background thread."""

    def __init__(self, orthanc_url: str, port: int = 0, dist: Path | None = None,
                 app_config: Path = APP_CONFIG):
        dist = dist or ohif_dist()
        handler = _handler(dist, orthanc_url.rstrip("/"), app_config.read_bytes())
        self._server = _Server(("127.0.0.1", port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif-viewer", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ViewerServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
