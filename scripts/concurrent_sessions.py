#!/usr/bin/env python3
"""N browser sessions on one skinapp server at once: each opens Analyse, uploads its own photo and waits for
the verdict. Reports the time to a verdict per session (median, max) and the server's memory before and after.

    .venv/bin/python scripts/concurrent_sessions.py --sessions 8 [--weights weights] [--photo-size 600]

A benchmark, not a test: it needs Chromium (/usr/bin/chromium or --chromium) and takes about a minute. The server
runs on the shipped default models unless --weights says otherwise; every session uploads a different generated
lesion photo, so no answer comes from another session's cache.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from browser import CHROMIUM, FLAGS, ServerError, open_page, rss_mb, start_server, stop_server, upload  # noqa: E402
from conftest import lesion  # noqa: E402  (the generated test lesions: no patient data)

def serve(weights: str | None, log: Path) -> tuple[subprocess.Popen, str]:
    """The app with training off (a benchmark starts no jobs), on ``weights`` or the shipped registry."""
    try:
        return start_server({"SKINAPP_TRAINING": "off"} | ({"SKINAPP_WEIGHTS": weights} if weights else {}), log)
    except ServerError as exc:
        raise SystemExit(str(exc)) from exc


def session(url: str, chromium: str, photo: Path, barrier: threading.Barrier, out: dict, i: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
        try:
            page = open_page(browser, url)
            barrier.wait()  # every session uploads at the same moment
            t0 = time.perf_counter()
            upload(page, [photo])
            out[i] = {"verdict_s": time.perf_counter() - t0,
                      "exceptions": page.locator("[data-testid=stException]").count()}
        except Exception as exc:  # a failed session is a result too
            out[i] = {"error": f"{type(exc).__name__}: {exc}"}
            barrier.abort()
        finally:
            browser.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--weights", help="registry folder (default: the shipped weights/)")
    ap.add_argument("--photo-size", type=int, default=600, help="side of each generated photo, pixels")
    ap.add_argument("--chromium", default=CHROMIUM)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.sessions < 1:
        raise SystemExit(f"--sessions {args.sessions} must be at least 1")
    tmp = Path(tempfile.mkdtemp(prefix="skinapp-sessions-"))
    photos = []
    for i in range(args.sessions):
        photos.append(tmp / f"lesion-{i}.png")
        lesion(100 + i, i % 2 == 0, args.photo_size).save(photos[-1])
    server, url = serve(args.weights, tmp / "streamlit.log")
    try:
        before = rss_mb(server.pid)
        out: dict[int, dict] = {}
        barrier = threading.Barrier(args.sessions)
        threads = [threading.Thread(target=session, args=(url, args.chromium, photos[i], barrier, out, i))
                   for i in range(args.sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = rss_mb(server.pid)
    finally:
        stop_server(server)
    times = [r["verdict_s"] for r in out.values() if "verdict_s" in r]
    report = {"sessions": args.sessions, "answered": len(times), "photo_px": args.photo_size,
              "verdict_s_median": round(statistics.median(times), 2) if times else None,
              "verdict_s_max": round(max(times), 2) if times else None,
              "exceptions": sum(r.get("exceptions", 0) for r in out.values()),
              "errors": [r["error"] for r in out.values() if "error" in r],
              "server_rss_mb_before": round(before, 1), "server_rss_mb_after": round(after, 1), "cpus": os.cpu_count()}
    print(json.dumps(report, indent=2) if args.json else
          f"{report['answered']}/{args.sessions} sessions answered; time to verdict median "
          f"{report['verdict_s_median']} s, max {report['verdict_s_max']} s; server memory "
          f"{report['server_rss_mb_before']} -> {report['server_rss_mb_after']} MB; exceptions "
          f"{report['exceptions']}; errors {len(report['errors'])}")
    return 0 if report["answered"] == args.sessions and not report["exceptions"] else 1


if __name__ == "__main__":
    sys.exit(main())
