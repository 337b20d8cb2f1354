"""A real browser (headless Debian Chromium) opens the Space, runs an example and shows the full result."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def binary(name: str) -> str | None:
    path = shutil.which(name) or f"/usr/bin/{name}"
    return path if Path(path).exists() else None


CHROMIUM, CHROMEDRIVER = binary("chromium"), binary("chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--window-size=1400,2600",
)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does this)",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}")
    service = Service(CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    yield driver
    driver.quit()


def loaded_images(driver, elem_id: str) -> int:
    """How many images inside `#elem_id` have finished loading with a real size."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' img'))"
        ".filter(i => i.complete && i.naturalWidth > 0).length;",
        f"#{elem_id}",
    )


def wait_for(condition, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"Timed out after {timeout:.0f} s waiting for {what}.")


def test_browser_runs_an_example_and_shows_everything(browser, space_url, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(space_url)
    example = wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, "#fga-examples button, #fga-examples .gallery-item"),
        60,
        "the examples",
    )[0]
    example.click()
    wait_for(lambda: loaded_images(browser, "fga-input"), 60, "the example to fill the input")
    browser.find_element(By.ID, "fga-run").click()
    for elem_id in ("fga-image", "fga-transmm", "fga-fga", "fga-feature-image", "fga-feature-cards", "fga-gates"):
        wait_for(lambda elem_id=elem_id: loaded_images(browser, elem_id), 180, f"the images of #{elem_id}")
    wait_for(lambda: "SaCo" in browser.find_element(By.ID, "fga-metrics").text, 180, "the metrics table")
    features = browser.find_element(By.ID, "fga-features").text
    assert "amplifier" in features or "suppressor" in features
    assert "⚠️" not in browser.find_element(By.ID, "fga-message").text
    browser.execute_script("document.getElementById('fga-feature-panel').scrollIntoView({block: 'center'});")
    time.sleep(0.5)
    browser.execute_script("window.scrollTo(0, 0);")
    screenshot = Path(os.environ.get("FGA_SPACE_SCREENSHOT") or tmp_path / "space.png")  # set it to keep the picture
    assert browser.save_screenshot(str(screenshot))
    pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20, "the screenshot is (nearly) blank"
    colours = np.unique((pixels // 32).reshape(-1, 3), axis=0)
    assert len(colours) >= 20, f"only {len(colours)} distinct colours: the overlays did not render"


def test_browser_switches_the_domain(browser, app_module, fake_bundled):
    """Picking another domain swaps the example gallery (per visitor), the blocks and the note; its model explains."""
    from selenium.webdriver.common.by import By

    from .conftest import FAKE_LABELS, free_port

    demo = app_module.build_demo()
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        browser.get(f"http://127.0.0.1:{port}/")

        def examples():
            return browser.find_elements(By.CSS_SELECTOR, "#fga-examples button, #fga-examples .gallery-item")

        wait_for(lambda: len(examples()) == 2, 60, "the two chest X-ray examples")
        browser.find_element(By.CSS_SELECTOR, "#fga-domain input").click()
        picker = "#fga-domain li[role=option]"
        options = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, picker), 30, "the picker's options")
        assert [o.text.strip(" ✓\n") for o in options] == ["chest X-ray", "fake scan"]
        options[1].click()
        wait_for(lambda: len(examples()) == 3, 60, "the three examples of the other domain")
        note = browser.find_element(By.ID, "fga-domain-note").text
        assert "fake scan" in note and "No prototypes" in note
        assert "fake scan, test split" in browser.find_element(By.ID, "fga-examples").text
        examples()[2].click()  # only the new gallery has a third example
        wait_for(lambda: loaded_images(browser, "fga-input"), 60, "the example to fill the input")
        browser.find_element(By.ID, "fga-run").click()
        wait_for(lambda: "SaCo" in browser.find_element(By.ID, "fga-metrics").text, 120, "the metrics table")
        message = browser.find_element(By.ID, "fga-message").text
        assert "bundled fake scan ViT" in message and "⚠️" not in message
        prediction = browser.find_element(By.ID, "fga-prediction").text
        assert all(label in prediction for label in FAKE_LABELS)
    finally:
        demo.close()
