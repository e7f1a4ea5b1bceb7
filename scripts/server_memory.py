#!/usr/bin/env python3
"""The Streamlit server's resident memory on the shipped models: at start, with every default model loaded, and
after N Analyse-page predictions with Grad-CAM on the default teacher (each on a different photo).

    .venv/bin/python scripts/server_memory.py [--photos 20] [--limit-mb 1500] [--weights weights]

A benchmark, not a test (it needs Chromium and takes a few minutes on 2 cores): exits 1 when the server ends
above --limit-mb. Photos are generated lesions (no patient data), 600 px, uploaded five at a time.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))
from browser import CHROMIUM, FLAGS, rss_mb, stop_server, upload  # noqa: E402
from concurrent_sessions import serve  # noqa: E402
from conftest import lesion  # noqa: E402


def drive(url: str, chromium: str, photos: list[Path], teacher: str, pid: int) -> dict:
    from playwright.sync_api import sync_playwright

    marks = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url + "/compare", timeout=120_000)  # Compare loads the default teacher and student
            page.get_by_text("Timing budget").first.wait_for(timeout=120_000)
            page.locator("input[type=file]").first.set_input_files(str(photos[0]))
            page.get_by_text("timed runs per model").first.wait_for(timeout=300_000)
            marks["defaults_loaded_mb"] = rss_mb(pid)
            page.goto(url, timeout=120_000)
            page.get_by_text("not a medical device").first.wait_for(timeout=120_000)
            page.get_by_test_id("stSelectbox").first.click()
            page.get_by_role("option", name=f"{teacher} ★", exact=False).first.click()
            page.wait_for_timeout(2000)
            for i in range(0, len(photos), 5):
                t0 = time.perf_counter()
                done = min(i + 5, len(photos))  # uploads add to the list: wait for this many verdicts
                upload(page, photos[i:i + 5], verdicts=done, timeout_ms=600_000)
                marks[f"after_{done}_mb"] = rss_mb(pid)
                marks[f"batch_{i // 5 + 1}_s"] = round(time.perf_counter() - t0, 1)
            marks["exceptions"] = page.locator("[data-testid=stException]").count()
            marks["answered_by_teacher"] = page.get_by_text(f"model {teacher}").count()
        finally:
            browser.close()
    return marks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=20)
    ap.add_argument("--limit-mb", type=float, default=1500)
    ap.add_argument("--weights", help="registry folder (default: the shipped weights/)")
    ap.add_argument("--chromium", default=CHROMIUM)
    args = ap.parse_args()
    from skinapp.registry import Registry

    teacher = Registry(args.weights).default("teacher").name
    tmp = Path(tempfile.mkdtemp(prefix="skinapp-memory-"))
    photos = []
    for i in range(args.photos):
        photos.append(tmp / f"lesion-{i}.png")
        lesion(300 + i, i % 2 == 0, 600).save(photos[-1])
    server, url = serve(args.weights, tmp / "streamlit.log")
    try:
        report = {"start_mb": rss_mb(server.pid)} | drive(url, args.chromium, photos, teacher, server.pid)
        report["end_mb"] = rss_mb(server.pid)
    finally:
        stop_server(server)
    report = {k: round(v, 1) if isinstance(v, float) else v for k, v in report.items()}
    report |= {"teacher": teacher, "photos": args.photos, "limit_mb": args.limit_mb}
    print(json.dumps(report, indent=2))
    ok = report["answered_by_teacher"] == args.photos and not report["exceptions"]
    return 0 if ok and report["end_mb"] <= args.limit_mb else 1


if __name__ == "__main__":
    sys.exit(main())
