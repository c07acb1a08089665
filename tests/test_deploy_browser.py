"""``segbench serve``'s page in a real browser: Debian's headless Chromium, driven through its
chromedriver by Selenium (both binaries given, so Selenium downloads nothing); skipped, saying
why, where they are not installed (``.ci/run`` installs them)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbench.deploy.predictor import Predictor
from tests.fixtures.checkpoints import untrained_checkpoint
from tests.test_deploy_serve import start_server

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# a folder where the tests also leave their screenshots, for a person to look at
SCREENSHOTS = os.environ.get("SEGBENCH_SCREENSHOTS")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER),
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
        "chromium-driver)",
    ),
]


def serve(predictor):
    server, thread, url = start_server(predictor)
    return server, thread, url + "/"


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1100,650",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def upload_and_wait(driver, url: str | None, image: Path, state: str = "done") -> None:
    """Open ``url`` (None: stay on the page) and upload ``image``; wait for ``state``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if url is not None:
        driver.get(url)
    driver.find_element(By.ID, "file").send_keys(str(image))
    body = driver.find_element(By.TAG_NAME, "body")
    WebDriverWait(driver, 60).until(lambda d: body.get_attribute(f"data-{state}") == image.name)


def _state(driver) -> dict:
    """What the page shows: which figures, their captions, the legend rows, status and error."""
    return driver.execute_script(
        """
        const shown = (el) => !!el && !el.closest("[hidden]") && el.getClientRects().length > 0;
        const figs = {};
        for (const name of ["input", "overlay", "uncertainty"]) {
          const el = document.getElementById(name + "-img");
          figs[name] = {
            shown: shown(el),
            broken: el.tagName === "IMG" && el.hasAttribute("src") && el.complete
              && el.naturalWidth === 0,
            caption: document.getElementById(name + "-cap").textContent,
          };
        }
        return {
          figs: figs,
          legend_rows: document.querySelectorAll("#legend tr").length,
          legends_shown: [...document.querySelectorAll("#legend-box, #legend")]
            .filter((el) => shown(el)).length,
          status: document.getElementById("status").textContent,
          error: document.getElementById("error").textContent,
          error_shown: shown(document.getElementById("error")),
        };
        """
    )


def test_the_page_uploads_an_image_and_shows_the_overlay_and_legend(trained_run, tmp_path, browser):
    from selenium.webdriver.common.by import By

    predictor = Predictor(trained_run / "checkpoints" / "best.ckpt")
    server, thread, url = serve(predictor)
    try:
        image = np.random.default_rng(5).integers(0, 256, (60, 80, 3), dtype=np.uint8)
        path = tmp_path / "upload.png"
        Image.fromarray(image).save(path)
        upload_and_wait(browser, url, path)
        overlay = browser.find_element(By.ID, "overlay-img")
        # the overlay's image part, drawn pixel for pixel: its legend is the page's table only
        width, height, pixels = browser.execute_script(
            "const c = arguments[0];"
            "return [c.width, c.height,"
            " Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];",
            overlay,
        )
        expected = predictor.overlay(image, predictor.predict(image))
        assert (height, width) == image.shape[:2]
        rgba = np.asarray(pixels, dtype=np.int64).reshape(height, width, 4)
        assert np.abs(rgba[..., :3] - expected[:height, :width].astype(np.int64)).max() <= 1
        # large: the input and the overlay share the page's width, not a 16rem strip
        shown_w = browser.execute_script(
            "return arguments[0].getBoundingClientRect().width", overlay
        )
        input_w = browser.execute_script(
            "return document.getElementById('input-img').getBoundingClientRect().width"
        )
        assert shown_w >= 300 and input_w >= 300, (shown_w, input_w)
        pred = predictor.predict(image).classes
        present = {predictor.class_names[c] for c in np.unique(pred)}
        shown = {
            r.get_attribute("data-cls")
            for r in browser.find_elements(By.CSS_SELECTOR, "#legend tr")
        }
        assert shown == present
        state = _state(browser)
        assert state["figs"]["input"]["shown"] and state["figs"]["overlay"]["shown"]
        assert not state["figs"]["uncertainty"]["shown"]  # FCN gives none
        assert state["figs"]["input"]["caption"] == "input: upload.png"
        assert "fcn8s" in browser.find_element(By.ID, "model").text
        assert state["error"] == "" and not state["error_shown"]
        browser.save_screenshot(str(tmp_path / "serve_page.png"))
        with Image.open(tmp_path / "serve_page.png") as im:
            assert im.size[0] >= 1000  # the window's width
        if SCREENSHOTS:
            shutil.copy(tmp_path / "serve_page.png", Path(SCREENSHOTS) / "serve_page.png")
        # a file that is not an image, after a good one: only the error is left
        bad = tmp_path / "notes.png"
        bad.write_bytes(b"not an image")
        upload_and_wait(browser, None, bad, state="failed")  # on the same page
        body = browser.find_element(By.TAG_NAME, "body")
        state = _state(browser)
        assert "400" in state["error"] and "notes.png" in state["error"] and state["error_shown"]
        for name, fig in state["figs"].items():
            assert not fig["shown"] and not fig["broken"] and fig["caption"] == "", (name, fig)
        assert state["legend_rows"] == 0 and state["legends_shown"] == 0
        assert state["status"] == "" and body.get_attribute("data-done") is None
        shot = tmp_path / "serve_after_error.png"
        browser.save_screenshot(str(shot))
        with Image.open(shot) as im:
            assert im.size[0] >= 1000
        if SCREENSHOTS:
            shutil.copy(shot, Path(SCREENSHOTS) / shot.name)
        # and a good image after the error shows again, with no error left
        upload_and_wait(browser, None, path)
        state = _state(browser)
        assert state["figs"]["overlay"]["shown"] and state["error"] == ""
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_bayesian_segnet_shows_its_uncertainty_map(tmp_path, browser):
    from selenium.webdriver.common.by import By

    ckpt = untrained_checkpoint("bayesian_segnet", tmp_path / "b.ckpt", "model.mc_samples=2")
    server, thread, url = serve(Predictor(ckpt))
    try:
        path = tmp_path / "u.png"
        Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(path)
        upload_and_wait(browser, url, path)
        assert browser.find_element(By.ID, "uncertainty-img").is_displayed()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
