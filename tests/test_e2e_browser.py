"""End to end in a real browser: `streamlit run app.py`, Debian Chromium driven by Playwright, one upload."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from browser import CHROMIUM, FLAGS, ROOT, ServerError, open_page, start_server, stop_server, upload
from conftest import lesion

ARTIFACTS = Path(os.environ.get("SKINAPP_TEST_ARTIFACTS", ROOT / "runs" / "test-artifacts"))

# CI sets SKINAPP_REQUIRE_BROWSER=1 so a missing browser fails there instead of skipping silently.
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("SKINAPP_REQUIRE_BROWSER"),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")


@pytest.fixture()
def server(tmp_path, tiny_registry):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_registry, weights)
    try:
        proc, url = start_server({"SKINAPP_WEIGHTS": str(weights), "SKINAPP_JOBS": str(tmp_path / "jobs")},
                                 tmp_path / "streamlit.log", timeout_s=60)
    except ServerError as exc:
        pytest.fail(str(exc))
    yield url
    stop_server(proc)


def test_upload_in_real_browser(server, tmp_path):
    from playwright.sync_api import sync_playwright

    image = tmp_path / "lesion.png"
    lesion(11, True, 160).save(image)
    from dicoms import PHI_STRINGS, dicom_bytes

    dicom = tmp_path / "dermoscope.dcm"
    dicom.write_bytes(dicom_bytes(lesion(12, False, 160)))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = open_page(browser, server, 60_000)
            upload(page, [image, dicom], verdicts=1, timeout_ms=60_000)
            page.get_by_text("regions that raised the").first.wait_for(timeout=30_000)  # the map, its method named
            page.wait_for_function(
                "() => [...document.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth > 0)"
                ".length >= 2", timeout=30_000)
            page.wait_for_selector(".js-plotly-plot", timeout=30_000)
            assert page.locator("[data-testid=stException]").count() == 0
            page.get_by_text("dermoscope.dcm").first.wait_for(timeout=30_000)
            assert not [s for s in PHI_STRINGS if s in page.content()]
            page.screenshot(path=str(ARTIFACTS / "e2e_diagnose.png"), full_page=True)
            with page.expect_download(timeout=60_000) as download:
                page.get_by_role("button", name="Download case report (PDF)").first.click()
            pdf = tmp_path / "report.pdf"
            download.value.save_as(pdf)
            _check_report(pdf.read_bytes(), page)
            _compare(page, server, image)
            _other_pages(page, server)
        finally:
            browser.close()


def _check_report(pdf: bytes, page) -> None:
    """The downloaded report names both photos with the verdicts the page shows, and no patient detail."""
    from dicoms import PHI_STRINGS
    from test_report import pages_text

    text = pages_text(pdf)
    assert len(text) == 3 and "lesion.png" in text[0] and "dermoscope.dcm" in text[0]
    shown = [h.inner_text() for h in page.locator("h4").all()]
    for headline in shown:
        assert " ".join(headline.replace("—", "-").split()) in " ".join(text[1:])
    assert not [s for s in PHI_STRINGS if s in " ".join(text)]


def _compare(page, server: str, image: Path) -> None:
    """Compare carries the threshold over from Analyse and words its verdicts the same way."""
    page.goto(server + "/compare", timeout=60_000)
    page.get_by_text("Timing budget").first.wait_for(timeout=60_000)
    page.locator("input[type=file]").first.set_input_files(str(image))
    page.get_by_text("timed runs per model").first.wait_for(timeout=90_000)
    assert page.get_by_text("lesion.png").count() >= 1  # the photo's caption, beside the overlays
    verdicts = [h.inner_text() for h in page.locator("h5").all()]
    assert len(verdicts) == 2 and all(v.startswith(("Leans ", "Uncertain")) for v in verdicts)
    assert page.locator("[data-testid=stException]").count() == 0
    page.screenshot(path=str(ARTIFACTS / "e2e_compare.png"), full_page=True)


def _other_pages(page, server: str) -> None:
    """Models and Train open without an error; their screenshots are saved for a reviewer."""
    for path, ready, shot in (("/models", "Model card", "e2e_models.png"), ("/train", "Launch training",
                                                                          "e2e_train.png")):
        page.goto(server + path, timeout=60_000)
        page.get_by_text(ready).first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)  # charts draw after the text
        assert page.locator("[data-testid=stException]").count() == 0
        if path == "/models":
            _tables_fit(page)
        page.screenshot(path=str(ARTIFACTS / shot), full_page=True)


def _tables_fit(page) -> None:
    """The registry tables (and every other table on the page) fit their column: no sideways scrolling."""
    scrollers = "[data-testid=stDataFrame] .dvn-scroller"
    page.wait_for_function(f'document.querySelectorAll("{scrollers}").length >= 2', timeout=60_000)
    widths = page.evaluate(f'() => [...document.querySelectorAll("{scrollers}")]'
                           '.map(e => [e.scrollWidth, e.clientWidth])')
    assert widths and all(scroll <= client for scroll, client in widths), widths
