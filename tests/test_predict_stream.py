"""`edge predict` takes what `edge serve` takes: test://, video files (one JSON line per frame, with its index and
time in the video), and --save writes annotated images or a video that Chromium plays."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from mqtt_helpers import FPS, PERIOD, SOURCE, arrow_model

from edge.cli.predict import main
from edge.core.synthetic import SceneRenderer


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return arrow_model(tmp_path_factory.mktemp("arrows") / "arrows.onnx")


def lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_test_source_with_frames_prints_one_line_per_frame_that_follows_the_scene(model, capsys):
    assert main(["--model", str(model), "-q", SOURCE, "--frames", "50"]) == 0
    out = lines(capsys)
    assert [r["frame"] for r in out] == list(range(50))
    assert [r["time"] for r in out] == [round(i / FPS, 3) for i in range(50)]
    scene = SceneRenderer(8, 8, period_s=PERIOD)
    assert [r["label"] for r in out] == [scene.label_at(i / FPS) for i in range(50)]  # up, then down at 3 s
    assert main(["--model", str(model), "-q", SOURCE, "--seconds", "1.5"]) == 0
    assert len(lines(capsys)) == 15


def _video(path, frames: int = 40):
    scene = SceneRenderer(160, 120, period_s=PERIOD)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (160, 120))
    for i in range(frames):
        w.write(scene.render(i / FPS, i))
    w.release()
    return path


def test_a_video_file_and_images_with_save(model, tmp_path, capsys):
    video = _video(tmp_path / "clip.avi")
    img = tmp_path / "one.png"
    cv2.imwrite(str(img), SceneRenderer(160, 120, period_s=PERIOD).render(0.0))
    assert main(["--model", str(model), "-q", str(img), str(video), "--save", str(tmp_path / "out")]) == 0
    out = lines(capsys)
    assert out[0]["path"] == str(img) and out[0]["label"] == "up"
    frames = out[1:]
    assert [r["frame"] for r in frames] == list(range(40)) and frames[0]["source"] == str(video)
    assert frames[0]["label"] == "up" and frames[-1]["label"] == "down"
    saved = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert saved[0] == "clip.mp4" or saved[0] == "clip.webm", saved
    assert "one.png" in saved
    annotated = cv2.imread(str(tmp_path / "out" / "one.png"))
    assert annotated.shape == (120, 160, 3) and not np.array_equal(annotated, cv2.imread(str(img)))  # overlay
    cap = cv2.VideoCapture(str(tmp_path / "out" / saved[0]))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 40


def test_a_wrong_source_is_one_line(model, tmp_path, capsys):
    assert main(["--model", str(model), "bogus://x"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "bogus://" in err
    assert main(["--model", str(model), SOURCE, "--frames", "0"]) == 2


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="needs Chromium and its driver (apt-get install chromium chromium-driver)")
def test_the_saved_video_plays_in_chromium(model, tmp_path, capsys):
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the test extra)")
    from selenium.webdriver.chrome.service import Service

    video = _video(tmp_path / "clip.avi")
    assert main(["--model", str(model), "-q", str(video), "--save", str(tmp_path / "out")]) == 0
    saved = next((tmp_path / "out").iterdir())
    page = tmp_path / "out" / "play.html"
    page.write_text(f'<video id="v" src="{saved.name}" muted autoplay></video>')
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--autoplay-policy=no-user-gesture-required", "--allow-file-access-from-files",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(page.as_uri())
        from selenium.webdriver.support.ui import WebDriverWait

        state = WebDriverWait(driver, 30).until(lambda d: d.execute_script(
            "const v = document.getElementById('v');"
            "return v.readyState >= 2 && v.videoWidth > 0 ? [v.videoWidth, v.videoHeight, v.duration, v.error] : null"))
        assert state[:2] == [160, 120] and state[2] > 3.5 and state[3] is None, state
    finally:
        driver.quit()
