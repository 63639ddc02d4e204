"""The HTML report in headless Chromium (Debian's chromium + chromium-driver, which .ci/run
installs): it opens from a file with the network off, logs no console error, every image has
loaded, and a screenshot of it is not blank."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from ctxlit.report.__main__ import main

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and DRIVER):
        pytest.fail("headless Chromium is needed: apt-get install chromium chromium-driver (as .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_report_opens_offline_with_no_console_errors_and_every_image_loaded(study_runs, tmp_path, browser):
    report = tmp_path / "report.html"
    assert main([str(study_runs / "study"), "-o", str(report)]) == 0
    browser.get(report.as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    widths = browser.execute_script(
        "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) >= 5 and all(w > 0 for w in widths), widths
    assert browser.execute_script("return document.querySelectorAll('table.groups tr').length") == 3  # header + 2
    assert browser.execute_script("return document.querySelector('table').className") == "answers"  # it opens with them
    shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB"))
    assert shot.shape[0] > 500 and shot.std() > 10  # not a blank page
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 100  # text, plots, colours
