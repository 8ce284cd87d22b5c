"""Headless Chromium (Debian's `chromium` package) for the tests that look at a web UI: one
process per page renders it, writes a screenshot and returns the DOM as the page's scripts
left it.

    page = render(url, folder / "run.png", wait_for="loss")   # Page: png, dom, text
    page.text                                                 # the DOM's strings, in document order

`make services-deps` installs chromium; without it the tests that need it skip (`find`).
The browser runs with its own throwaway profile (nothing remembered between pages) and is
stopped by its pid (tests/services.py), whatever happens.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests import services

WINDOW = (1600, 1000)


def find() -> str | None:
    """The Chromium executable on PATH, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Page:
    png: Path
    dom: str  # the serialised DOM after the page's scripts ran

    @property
    def text(self) -> list[str]:
        """The DOM's text nodes (scripts and styles left out), stripped, in document order."""
        body = re.sub(r"<(script|style)\b.*?</\1>", " ", self.dom, flags=re.S | re.I)
        return [s for s in (html.unescape(t).strip() for t in re.split(r"<[^>]*>", body)) if s]


def render(
    url: str, png: Path, wait_for: str = "", budget_ms: int = 10_000, timeout: float = 180.0
) -> Page:
    """Load `url`, let its scripts run for `budget_ms` of virtual time (the browser skips idle
    waits, so a page that settles sooner returns sooner), screenshot the window into `png` and
    return the page. A page whose text does not hold `wait_for` yet (a single-page app still
    loading) is loaded again with twice the budget, up to three times; the last one is returned
    as it is."""
    for attempt in range(3):
        page = _render_once(url, png, budget_ms * 2**attempt, timeout)
        if wait_for in " ".join(page.text):
            break
    return page


def _render_once(url: str, png: Path, budget_ms: int, timeout: float) -> Page:
    """One browser process for `url`; one that does not finish within `timeout` seconds is
    stopped and tried once more (a cold server can stall the first load), then TimeoutError."""
    exe = find()
    if exe is None:
        raise FileNotFoundError("chromium is not installed (`make services-deps`)")
    for attempt in range(2):
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
            command = [
                exe,
                "--headless",
                "--no-sandbox",  # as root in a container; the pages are our own server's
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                f"--virtual-time-budget={budget_ms}",
                "--run-all-compositor-stages-before-draw",
                f"--screenshot={png}",
                "--dump-dom",
                url,
            ]
            proc = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
            try:
                dom, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                services.stop_process(proc)
                if attempt:
                    message = f"chromium did not finish {url} in {timeout:.0f} s"
                    raise TimeoutError(message) from None
                continue
            finally:
                services.stop_process(proc)
        if proc.returncode != 0 or not png.is_file():
            raise RuntimeError(f"chromium failed on {url} (exit {proc.returncode})")
        return Page(png, dom)
    raise AssertionError("unreachable")
