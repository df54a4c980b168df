"""report.html opens in headless Chromium without console messages, and renders something.

Needs a `chromium` binary (Debian: apt-get install chromium); skipped without one.
Console output is read from Chromium's own log (``--enable-logging=stderr``),
where every console message is a ``:CONSOLE`` line; a page with a script error
is the control that shows the check can fail.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.evaluate import evaluate
from tests.evaluate_cohort import write_cohort

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
WINDOW = (1200, 1600)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium installed")


def render(page: Path, screenshot: Path) -> list[str]:
    """Screenshot `page`; return the console lines Chromium logged."""
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
         "--v=0", f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={screenshot}", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert screenshot.is_file(), proc.stderr[-2000:]
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def test_report_opens_without_console_errors(tmp_path):
    from PIL import Image

    ledger, reference = write_cohort(tmp_path)
    _, written = evaluate(ledger, reference, tmp_path / "report", n_bootstrap=50)
    control = tmp_path / "broken.html"
    control.write_text("<html><body><script>undefined_function();</script></body></html>")
    assert render(control, tmp_path / "broken.png"), "the console check sees nothing: it would pass anything"
    shot = tmp_path / "report.png"
    assert render(written["report_html"], shot) == []
    with Image.open(shot) as im:
        assert im.size == WINDOW
        colours = im.convert("RGB").getcolors(maxcolors=1 << 22)
        assert colours is not None and len(colours) > 50  # text, tables and plots, not a blank page
