"""A skinapp server and a Chromium page, as the end-to-end test and the browser benchmarks
(``scripts/concurrent_sessions.py``, ``scripts/server_memory.py``) drive them: one way to start, open, upload."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SKINAPP_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
VERDICT = "P(malignant) ="  # on Analyse once a photo is analysed


class ServerError(RuntimeError):
    """Streamlit did not answer its health check in time; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], log: Path, port: int | None = None, timeout_s: float = 90
                 ) -> tuple[subprocess.Popen, str]:
    """``streamlit run app.py`` on localhost with ``env`` added to this environment; (process, its URL)."""
    port = port or free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless",
                                 "true", "--server.port", str(port), "--server.address", "127.0.0.1",
                                 "--browser.gatherUsageStats", "false"], cwd=ROOT, env=dict(os.environ, **env),
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise ServerError("streamlit did not start: " + log.read_text()[-2000:])


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def open_page(browser, url: str, timeout_ms: int = 120_000):
    """A page at ``url`` once the app has drawn (the disclaimer is on every page)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url, timeout=timeout_ms)
    page.get_by_text("not a medical device").first.wait_for(timeout=timeout_ms)
    return page


def upload(page, photos: Sequence[Path], verdicts: int | None = None, timeout_ms: int = 120_000) -> None:
    """Upload ``photos`` on the page's first file input and wait until ``verdicts`` verdicts show (default: one
    per photo; uploads add to those already there, so pass the running total)."""
    page.locator("input[type=file]").first.set_input_files([str(p) for p in photos])
    page.get_by_text(VERDICT).nth((verdicts or len(photos)) - 1).wait_for(timeout=timeout_ms)


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
