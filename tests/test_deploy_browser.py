"""``segbench serve``'s page in a real browser: Debian's headless Chromium, driven through its
chromedriver by Selenium (both binaries given, so Selenium downloads nothing); skipped, saying
why, where they are not installed (``.ci/run`` installs them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbench.deploy.predictor import Predictor
from tests.fixtures.checkpoints import untrained_checkpoint
from tests.test_deploy_serve import start_server

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
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


def upload_and_wait(driver, url: str, image: Path, state: str = "done") -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    driver.find_element(By.ID, "file").send_keys(str(image))
    body = driver.find_element(By.TAG_NAME, "body")
    WebDriverWait(driver, 60).until(lambda d: body.get_attribute(f"data-{state}") == image.name)


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
        width, height = browser.execute_script(
            "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", overlay
        )
        expected = predictor.overlay(image, predictor.predict(image))
        assert (height, width) == expected.shape[:2]  # the image and its legend, as sent
        pred = predictor.predict(image).classes
        present = {predictor.class_names[c] for c in np.unique(pred)}
        shown = {
            r.get_attribute("data-cls")
            for r in browser.find_elements(By.CSS_SELECTOR, "#legend tr")
        }
        assert shown == present
        assert "fcn8s" in browser.find_element(By.ID, "model").text
        assert browser.find_element(By.ID, "error").text == ""
        browser.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 0
        # a file that is not an image: the page says why
        bad = tmp_path / "notes.png"
        bad.write_bytes(b"not an image")
        upload_and_wait(browser, url, bad, state="failed")
        assert "400" in browser.find_element(By.ID, "error").text
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
