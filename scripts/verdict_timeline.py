#!/usr/bin/env python3
"""When an Analyse-page user sees each verdict and each activation map, on a fresh server: seconds from the upload to
the first verdict, to every verdict, and to every map, for one model and N photos.

    .venv/bin/python scripts/verdict_timeline.py [--model teacher|student|NAME] [--photos 5] [--wait 6] [--runs 2]

A benchmark, not a test (it needs Chromium and starts a server per run). ``--wait``: seconds between the
uploader appearing and the upload (a user picking photos; 0 uploads at once, while the server still loads what the
maps need). Photos are generated lesions (no patient data), 600 px; the page is polled every 50 ms.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))
from browser import CHROMIUM, FLAGS, VERDICT, open_page, stop_server  # noqa: E402
from concurrent_sessions import serve  # noqa: E402
from conftest import lesion  # noqa: E402

MAP = "regions that raised the"  # the map's caption on Analyse


def timeline(url: str, chromium: str, model: str, photos: list[Path], wait_s: float) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
        try:
            page = open_page(browser, url)
            page.get_by_test_id("stSelectbox").first.click()
            page.get_by_role("option", name=f"{model} ", exact=False).first.click()
            page.locator("input[type=file]").first.wait_for(state="attached", timeout=120_000)
            time.sleep(wait_s)
            t0 = time.perf_counter()
            page.locator("input[type=file]").first.set_input_files([str(x) for x in photos])
            seen: dict[str, list[float]] = {"verdicts": [], "maps": []}
            while min(map(len, seen.values())) < len(photos) and time.perf_counter() - t0 < 600:
                now = round(time.perf_counter() - t0, 2)
                for key, text in (("verdicts", VERDICT), ("maps", MAP)):
                    seen[key] += [now] * (page.get_by_text(text).count() - len(seen[key]))
                page.wait_for_timeout(50)
            seen["map_ms"] = [float(m) for m in re.findall(r"(?:drawn in|Grad-CAM) ([0-9.]+) ms", page.content())]
            seen["exceptions"] = page.locator("[data-testid=stException]").count()
            return seen
        finally:
            browser.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="teacher", help="'teacher', 'student' (the defaults) or a registered name")
    ap.add_argument("--photos", type=int, default=5)
    ap.add_argument("--wait", type=float, default=6.0, help="seconds from the uploader to the upload")
    ap.add_argument("--runs", type=int, default=2, help="fresh servers, one after another")
    ap.add_argument("--weights", help="registry folder (default: the shipped weights/)")
    ap.add_argument("--chromium", default=CHROMIUM)
    args = ap.parse_args()
    from skinapp.registry import Registry

    reg = Registry(args.weights)
    model = reg.default(args.model).name if args.model in ("teacher", "student") else reg.get(args.model).name
    tmp = Path(tempfile.mkdtemp(prefix="skinapp-timeline-"))
    photos = []
    for i in range(args.photos):
        photos.append(tmp / f"lesion-{i}.png")
        lesion(500 + i, i % 2 == 0, 600).save(photos[-1])
    runs = []
    for r in range(args.runs):
        server, url = serve(args.weights, tmp / f"streamlit-{r}.log")
        try:
            runs.append(timeline(url, args.chromium, model, photos, args.wait))
        finally:
            stop_server(server)
    print(json.dumps({"model": model, "photos": args.photos, "wait_s": args.wait, "runs": runs}))
    return 0 if all(len(r["maps"]) == len(r["verdicts"]) == args.photos and not r["exceptions"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
