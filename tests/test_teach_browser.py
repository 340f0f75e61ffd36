"""The teach page in a real browser (headless Chromium driven by selenium), as a user on a phone would use it.

Add two labels, snap examples of each phase of the test:// scene (Burst and the space bar), delete a snapshot
taken across a flip, remove a label, Train, and watch the page's label follow the scene's arrow. Screenshots of
the page before and after training go to /tmp/teach-before.png and /tmp/teach-after.png.
"""

from __future__ import annotations

import shutil
import time

import pytest
from serve_helpers import find_chromium, headless_chrome
from teach_helpers import FPS, PERIOD, Teach, phase_left, true_arrow

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the test extra)")
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402 - after importorskip (selenium)
from selenium.webdriver.common.by import By  # noqa: E402 - after importorskip (selenium)
from selenium.webdriver.common.keys import Keys  # noqa: E402 - after importorskip (selenium)
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402 - after importorskip (selenium)

CHROMIUM = find_chromium()
CHROMEDRIVER = shutil.which("chromedriver")
SOURCE = f"test://?width=320&height=240&fps={FPS:g}&period={PERIOD:g}"
PER_LABEL = 8

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs Chromium and its driver (apt-get install chromium chromium-driver)"),
]


@pytest.fixture
def browser(tmp_path):
    with headless_chrome(tmp_path, "1200,1300") as driver:
        yield driver


@pytest.fixture
def teach(tmp_path):
    service = Teach(tmp_path, ["--source", SOURCE, "--data", "data", "--cache-views", "2"]).start()
    yield service
    assert service.stop() == 0, service.log()[-2000:]


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text.strip()


def wait(driver, what: str, condition, timeout: float = 30.0):
    """condition(driver)'s first true value; the page redraws its label cards, so an element found a moment
    ago may be gone: that is one more try, not an error."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)).until(
        lambda d: condition(d), message=what)


def card(driver, label: str):
    return driver.find_element(By.CSS_SELECTOR, f'.card[data-label="{label}"]')


def add_label(driver, label: str) -> None:
    field = driver.find_element(By.ID, "new-label")
    field.clear()
    field.send_keys(label, Keys.ENTER)
    wait(driver, f"the {label!r} card", lambda d: d.find_elements(By.CSS_SELECTOR, f'.card[data-label="{label}"]'))


def count_of(driver, label: str) -> int:
    return int(wait(driver, f"{label}'s count", lambda d: card(d, label).find_element(By.CSS_SELECTOR, ".count").text))


def click(driver, find) -> None:
    """Click what `find(driver)` finds, finding it again when a redraw replaced it."""
    wait(driver, "a click", lambda d: find(d).click() or True)


def when_scene_shows(teach: Teach, label: str, seconds: float) -> None:
    """Wait until the scene shows `label`'s arrow with at least `seconds` of it left."""
    teach.wait_for(f"the scene to show {label}", lambda: (lambda f: true_arrow(f) == label and
                                                          phase_left(f) >= seconds)(teach.frame()), 3 * PERIOD, 0.05)


def drop_wrong_snapshots(driver, teach: Teach, label: str) -> None:
    """Delete, with the page's x button, every snapshot of `label` whose camera frame shows the other arrow."""
    for sid in teach.ok("GET", "api/dataset")["recent"][label]:
        frame = teach.ok("GET", f"api/snapshots/{sid}")["frame"]
        if frame is not None and true_arrow(frame) != label:
            before = count_of(driver, label)
            click(driver, lambda d, sid=sid: d.find_element(By.ID, f"snap-{sid}").find_element(By.TAG_NAME, "button"))
            wait(driver, "the deleted snapshot to go", lambda d, before=before: count_of(d, label) == before - 1)


def snap_examples(driver, teach: Teach, label: str) -> None:
    click(driver, lambda d: card(d, label).find_element(By.CSS_SELECTOR, "button.name"))  # select the label
    wait(driver, f"{label} selected", lambda d: "selected" in card(d, label).get_attribute("class"))
    while count_of(driver, label) < PER_LABEL:
        when_scene_shows(teach, label, 2.0)
        driver.find_element(By.ID, "burst").click()  # 5 frames, one every 0.2 s: within the phase
        wait(driver, "the burst to end", lambda d: text(d, "burst") == "Burst", 20)
        when_scene_shows(teach, label, 1.0)
        before = count_of(driver, label)
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.SPACE)  # one more, with the space bar
        wait(driver, "the space-bar snapshot", lambda d, before=before: count_of(d, label) == before + 1)
        assert f"to {label} (frame" in text(driver, "snap-status")
        drop_wrong_snapshots(driver, teach, label)


def test_teach_from_the_page_and_watch_the_label_follow_the_arrow(browser, teach):
    browser.get(teach.url)
    wait(browser, "the live view", lambda d: text(d, "status") == "live" and text(d, "label") == "no model yet")
    assert browser.find_element(By.ID, "snap").get_attribute("disabled")  # nothing to snap into yet
    for field, value in (("burst-n", "5"), ("burst-t", "0.2")):
        browser.find_element(By.ID, field).clear()
        browser.find_element(By.ID, field).send_keys(value)
    for label in ("up", "down", "oops"):
        add_label(browser, label)
    browser.find_element(By.ID, "new-label").send_keys("a/b", Keys.ENTER)  # capture's label rules, on the page
    wait(browser, "the refusal", lambda d: "path separator" in text(d, "label-error"))
    click(browser, lambda d: card(d, "oops").find_element(By.CSS_SELECTOR, "button.remove"))
    browser.switch_to.alert.accept()
    wait(browser, "oops removed", lambda d: not d.find_elements(By.CSS_SELECTOR, '.card[data-label="oops"]'))

    for label in ("up", "down"):
        snap_examples(browser, teach, label)
    snaps = teach.ok("GET", "api/dataset")
    assert snaps["labels"] == ["down", "up"] and min(snaps["counts"].values()) >= PER_LABEL
    wait(browser, "thumbnails", lambda d: all(img.get_attribute("naturalWidth") not in (None, "0") for img in
                                              d.find_elements(By.CSS_SELECTOR, ".thumb img")))
    wait(browser, "the features", lambda d: "waiting" not in text(d, "features"), 60)
    browser.save_screenshot("/tmp/teach-before.png")

    browser.find_element(By.ID, "train").click()
    wait(browser, "the training", lambda d: text(d, "train-phase").startswith(("done", "failed")), 180)
    assert text(browser, "train-phase").startswith("done"), text(browser, "train-phase")
    accuracy = text(browser, "val-accuracy")  # "87.5% (7 of 8 validation images: too few for a reliable figure)"
    assert float(accuracy.split("%")[0]) >= 75 and " validation image" in accuracy, accuracy
    assert len(browser.find_elements(By.CSS_SELECTOR, "#confusion tr")) == 3  # header + one row per label

    # the page's label follows the scene's arrow (frames away from a flip), and so does the API
    agree = total = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        label, frame = browser.execute_script(
            "return [document.getElementById('label').textContent, document.getElementById('frame').textContent]")
        if frame.isdigit() and 0.5 < phase_left(int(frame)) < PERIOD - 0.5:
            total += 1
            agree += label == true_arrow(int(frame))
        time.sleep(0.2)
    assert total >= 20 and agree >= 0.85 * total, (agree, total)
    api_agree, api_total = teach.agreement(4)
    assert api_total >= 10 and api_agree >= 0.9 * api_total
    assert "efficientnet_lite0 via torch" in text(browser, "model")
    wait(browser, "video frames", lambda d: d.execute_script("return document.getElementById('video').naturalWidth")
         == 320)
    browser.save_screenshot("/tmp/teach-after.png")
