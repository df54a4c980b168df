"""OHIF v3 in headless Debian Chromium, driven by selenium, for the viewer tests.

`require_viewer_tools()` fails (never skips) with the install hint when a part is
missing. `start_stack()` starts Orthanc with DICOMweb and the product's same-origin
server (dicomnode.app.viewer); `Browser` opens one OHIF page in a fresh profile and polls
OHIF's own state (`window.services`, `window.cornerstone`) with timeouts, never fixed
sleeps. See ENVIRONMENT.md, "A real viewer in a real browser".
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from dicomnode.app.orthanc import DICOMWEB_PLUGIN, ORTHANC_BIN, Orthanc, start_orthanc
from dicomnode.app.viewer import INSTALL_HINT, ViewerError, ViewerServer, ohif_dist

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1400, 900)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-unsafe-swiftshader", "--disable-dev-shm-usage", "--force-device-scale-factor=1",
                  f"--window-size={WINDOW[0]},{WINDOW[1]}"]
# the first-run tour would cover the viewport
HIDE_TOUR = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"
LOAD_TIMEOUT_S = 90  # OHIF start + SEG load took 6-12 s on 2 idle cores; the suite runs on busy ones


def require_viewer_tools() -> None:
    missing = [what for what, ok in [
        ("orthanc", Path(ORTHANC_BIN).exists()), ("orthanc-dicomweb", Path(DICOMWEB_PLUGIN).exists()),
        ("chromium", Path(CHROMIUM).exists()), ("chromium-driver", Path(CHROMEDRIVER).exists()),
        ("tesseract-ocr", shutil.which("tesseract") is not None)] if not ok]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip, the test extra)")
    try:
        ohif_dist()
    except ViewerError as err:
        missing.append(str(err))
    if missing:
        pytest.fail(f"viewer tools missing: {'; '.join(missing)}: {INSTALL_HINT}")


@dataclass
class Stack:
    orthanc: Orthanc
    server: ViewerServer

    def upload(self, files: list[Path]) -> int:
        for f in files:
            self.orthanc.post("/instances", Path(f).read_bytes())
        return len(files)

    def stop(self) -> None:
        self.server.stop()
        self.orthanc.stop()


def start_stack(workdir: Path) -> Stack:
    require_viewer_tools()
    orthanc = start_orthanc(workdir, dicomweb=True)
    try:
        plugins = orthanc.get("/plugins")
        assert "dicom-web" in plugins, f"Orthanc loaded no DICOMweb plugin ({plugins}): {INSTALL_HINT}"
        server = ViewerServer(orthanc.url).start()
    except BaseException:
        orthanc.stop()
        raise
    return Stack(orthanc, server)


def poll(check: Callable[[], Any], timeout_s: float = LOAD_TIMEOUT_S, what: str = "", every_s: float = 0.5) -> Any:
    """The first truthy value of `check()` within `timeout_s`; page-script errors count as not yet."""
    deadline = time.monotonic() + timeout_s
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as err:  # the page is still loading: OHIF's globals are not there yet
            last_error = err
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}" +
                         (f" (last error: {last_error!r})" if last_error else ""))


SEGMENTATIONS_JS = """
const s = window.services && window.services.segmentationService; if (!s) return null;
const segs = s.getSegmentations(); if (!segs || !segs.length) return null;
return segs.map(g => ({id: g.segmentationId, label: g.label,
  segments: Object.values(g.segments).filter(Boolean).map(x => ({index: x.segmentIndex, label: x.label}))}));
"""
VIEWPORTS_JS = """
const out = [];
for (const e of window.cornerstone.getRenderingEngines()) for (const v of e.getViewports()) {
  out.push({id: v.id, type: v.type, n: (v.getImageIds ? v.getImageIds().length : null),
    reps: (window.cornerstoneTools.segmentation.state.getSegmentationRepresentations(v.id) || [])
      .map(r => ({segmentationId: r.segmentationId, type: r.type, visible: r.visible}))});
}
return out;
"""


class Browser:
    """One headless Chromium with a fresh profile; quit() ends it and its chromedriver."""

    def __init__(self):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="nodestage-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS + [f"--user-data-dir={self.profile}"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.console: list[dict] = []
        try:
            self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        except BaseException:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        try:
            self.driver.set_script_timeout(60)
            self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": HIDE_TOUR})
        except BaseException:
            self.quit()
            raise

    def open(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str, *args) -> Any:
        return self.driver.execute_script(script, *args)

    def severe(self) -> list[str]:
        self.console += self.driver.get_log("browser")
        return [e["message"] for e in self.console if e["level"] == "SEVERE"]

    def screenshot(self, path: Path | None = None) -> np.ndarray:
        from PIL import Image

        png = self.driver.get_screenshot_as_png()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)

    def text(self) -> str:
        return self.js("return document.body.innerText") or ""

    def wait_for_seg(self, n_segments_at_least: int = 1) -> tuple[list[dict], dict]:
        """Poll until OHIF shows a SEG labelmap in a viewport: (segmentations, that viewport)."""
        def ready():
            segs = self.js(SEGMENTATIONS_JS)
            if not segs or sum(len(g["segments"]) for g in segs) < n_segments_at_least:
                return None
            shown = [v for v in self.js(VIEWPORTS_JS) if any(r["visible"] for r in v["reps"])]
            return (segs, shown[0]) if shown else None
        return poll(ready, what="OHIF to show the SEG over its CT")

    def segment_colour(self, viewport_id: str, segmentation_id: str, index: int) -> tuple[int, int, int]:
        rgba = self.js("return window.cornerstoneTools.segmentation.config.color"
                       ".getSegmentIndexColor(arguments[0], arguments[1], arguments[2])",
                       viewport_id, segmentation_id, index)
        return tuple(int(v) for v in rgba[:3])

    def jump_to_segment(self, viewport_id: str, segmentation_id: str, index: int) -> int:
        """Centre a segment's slice (OHIF pans nothing); poll until the viewport's slice settles."""
        self.js("window.services.segmentationService.jumpToSegmentCenter(arguments[0], arguments[1], undefined,"
                " 0.9, false)", segmentation_id, index)
        return self.settle(viewport_id)

    def settle(self, viewport_id: str) -> int:
        """Wait until the viewport's slice index holds still over two polls and it has rendered."""
        seen: list = []

        def stable():
            idx = self.js("const v = window.cornerstone.getRenderingEngines()[0].getViewport(arguments[0]);"
                          " return [v.getCurrentImageIdIndex(), v.getCamera().focalPoint.map(x => x.toFixed(1))];",
                          viewport_id)
            seen.append(repr(idx))
            return idx[0] + 1 if len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3] else None
        return poll(stable, timeout_s=30, what="the viewport to settle") - 1

    def set_seg_visible(self, viewport_id: str, segmentation_id: str, visible: bool) -> None:
        self.js("window.cornerstoneTools.segmentation.config.visibility.setSegmentationRepresentationVisibility("
                "arguments[0], {segmentationId: arguments[1]}, arguments[2])", viewport_id, segmentation_id, visible)

    def world_to_page(self, viewport_id: str, point_lps) -> tuple[float, float]:
        """Screenshot pixel of a patient (LPS mm) point on the viewport's current plane."""
        x, y = self.js("""const v = window.cornerstone.getRenderingEngines()[0].getViewport(arguments[0]);
            const c = v.worldToCanvas(arguments[1]); const r = v.canvas.getBoundingClientRect();
            const dpr = window.devicePixelRatio || 1; return [(c[0] + r.left) * dpr, (c[1] + r.top) * dpr];""",
                       viewport_id, [float(v) for v in point_lps])
        return float(x), float(y)

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


def colour_mask(image: np.ndarray, rgb, tolerance: int = 30) -> np.ndarray:
    """Pixels within `tolerance` (sum of absolute RGB differences) of a segment's colour."""
    return np.abs(image - np.asarray(rgb)).sum(axis=2) < tolerance
