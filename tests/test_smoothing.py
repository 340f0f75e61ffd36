"""Prediction smoothing: EMA math, the `unknown` threshold, hysteresis and minimum dwell."""

from __future__ import annotations

import numpy as np
import pytest

from edge.core.errors import EdgeError
from edge.core.labels import UNKNOWN_LABEL
from edge.runtime.smoothing import Smoother

NAMES = ["up", "down"]


def feed(s: Smoother, seq) -> list[str]:
    return [s.update(np.asarray(p, np.float32))[0] for p in seq]


def test_no_smoothing_is_plain_argmax():
    s = Smoother(NAMES)
    assert s.update(np.array([0.7, 0.3]))[0] == "up"
    label, conf = s.update(np.array([0.2, 0.8]))
    assert (label, conf) == ("down", pytest.approx(0.8))


def test_ema_math():
    s = Smoother(NAMES, smoothing=0.5)
    s.update(np.array([1.0, 0.0]))
    np.testing.assert_allclose(s.probs, [1.0, 0.0])
    s.update(np.array([0.0, 1.0]))
    np.testing.assert_allclose(s.probs, [0.5, 0.5])
    s.update(np.array([0.0, 1.0]))
    np.testing.assert_allclose(s.probs, [0.25, 0.75])
    assert s.label == "down"


def test_below_threshold_is_unknown_with_top_confidence():
    s = Smoother(NAMES, threshold=0.6)
    label, conf = s.update(np.array([0.55, 0.45]))
    assert label == UNKNOWN_LABEL
    assert conf == pytest.approx(0.55)
    assert s.update(np.array([0.9, 0.1]))[0] == "up"


def test_hysteresis_keeps_the_shown_label_near_the_threshold():
    s = Smoother(NAMES, threshold=0.6, hysteresis=0.1)
    assert s.update(np.array([0.7, 0.3]))[0] == "up"
    # dips under the threshold but stays within the hysteresis band: no flicker to unknown
    assert feed(s, [[0.55, 0.45], [0.52, 0.48], [0.58, 0.42]]) == ["up", "up", "up"]
    # falls out of the band: unknown
    assert s.update(np.array([0.45, 0.55]))[0] == UNKNOWN_LABEL
    # coming back needs the full threshold, not threshold - hysteresis
    assert s.update(np.array([0.55, 0.45]))[0] == UNKNOWN_LABEL
    assert s.update(np.array([0.65, 0.35]))[0] == "up"


def test_hysteresis_between_two_classes():
    s = Smoother(NAMES, hysteresis=0.2)
    assert s.update(np.array([0.6, 0.4]))[0] == "up"
    assert s.update(np.array([0.45, 0.55]))[0] == "up"  # "down" leads by 0.1 < 0.2
    assert s.update(np.array([0.35, 0.65]))[0] == "down"  # leads by 0.3


def test_min_dwell_ignores_blips_and_switches_after_n_frames():
    s = Smoother(NAMES, min_dwell=3)
    up, down = [0.9, 0.1], [0.1, 0.9]
    assert feed(s, [up, down, up, down, down, up]) == ["up"] * 6  # never 3 in a row
    assert feed(s, [down, down, down]) == ["up", "up", "down"]


def test_smoothing_reduces_flicker_on_noisy_input():
    rng = np.random.default_rng(0)
    p_up = np.clip(0.5 + 0.3 * np.sign(np.sin(np.arange(300) / 50)) + rng.normal(0, 0.25, 300), 0, 1)
    seq = np.stack([p_up, 1 - p_up], axis=1)

    def changes(labels: list[str]) -> int:
        return sum(a != b for a, b in zip(labels, labels[1:]))

    raw = changes(feed(Smoother(NAMES), seq))
    smooth = changes(feed(Smoother(NAMES, smoothing=0.7, hysteresis=0.1, min_dwell=3), seq))
    assert raw > 20
    assert smooth <= 8  # the input really changes ~6 times


def test_reset_with_new_class_names():
    s = Smoother(NAMES, smoothing=0.9)
    s.update(np.array([1.0, 0.0]))
    s.reset(["a", "b", "c"])
    assert s.update(np.array([0.1, 0.1, 0.8]))[0] == "c"
    with pytest.raises(ValueError, match="expected 3 probabilities"):
        s.update(np.array([0.5, 0.5]))


@pytest.mark.parametrize("kw, match", [
    ({"smoothing": 1.0}, "smoothing"),
    ({"smoothing": -0.1}, "smoothing"),
    ({"threshold": 1.5}, "threshold"),
    ({"hysteresis": 1.0}, "hysteresis"),
    ({"min_dwell": 0}, "min_dwell"),
])
def test_bad_parameters_are_one_line_errors(kw, match):
    with pytest.raises(EdgeError, match=match):
        Smoother(NAMES, **kw)


# ------------------------------------------------------------------------------------------------ novelty

SURE_UP = np.array([0.95, 0.05])


def feed_novelty(s: Smoother, novelties, threshold=0.3, probs=SURE_UP) -> list[str]:
    return [s.update(probs, n, threshold)[0] for n in novelties]


def test_above_the_novelty_threshold_is_unknown_however_sure_the_classifier_is():
    s = Smoother(NAMES)
    label, conf = s.update(SURE_UP, 0.5, 0.3)
    assert (label, conf) == (UNKNOWN_LABEL, pytest.approx(0.95))  # confidence stays the top class's
    assert s.update(SURE_UP, 0.2, 0.3)[0] == "up"
    assert s.update(SURE_UP, 0.3, 0.3)[0] == "up"  # at the threshold: still known (unknown is strictly above)


def test_novelty_without_threshold_or_threshold_without_novelty_changes_nothing():
    assert feed_novelty(Smoother(NAMES), [0.9, 0.9], threshold=None) == ["up", "up"]
    assert feed_novelty(Smoother(NAMES), [None, None]) == ["up", "up"]


def test_min_dwell_applies_to_unknown_like_any_label():
    s = Smoother(NAMES, min_dwell=3)
    assert feed_novelty(s, [0.1, 0.6, 0.1, 0.6, 0.6]) == ["up"] * 5  # a one- or two-frame blip of novelty
    assert feed_novelty(s, [0.6]) == [UNKNOWN_LABEL]  # third novel frame in a row
    # and back after three familiar ones
    assert feed_novelty(s, [0.1, 0.1, 0.1]) == [UNKNOWN_LABEL, UNKNOWN_LABEL, "up"]


def test_novelty_is_smoothed_with_the_probabilities():
    s = Smoother(NAMES, smoothing=0.5)
    assert feed_novelty(s, [0.1, 0.5]) == ["up", "up"]  # smoothed novelty 0.3: not above 0.3 yet
    assert s.novelty == pytest.approx(0.3)
    assert feed_novelty(s, [0.5]) == [UNKNOWN_LABEL]  # 0.4
    assert feed_novelty(s, [0.25, 0.1]) == [UNKNOWN_LABEL, "up"]  # 0.325 (a familiar frame alone does not end it), 0.21


def test_unknown_from_novelty_holds_until_familiar_and_confident():
    s = Smoother(NAMES, threshold=0.8)
    assert s.update(SURE_UP, 0.6, 0.3)[0] == UNKNOWN_LABEL
    assert s.update(np.array([0.6, 0.4]), 0.1, 0.3)[0] == UNKNOWN_LABEL  # familiar, but under the probability threshold
    assert s.update(SURE_UP, 0.1, 0.3)[0] == "up"


def test_hysteresis_does_not_keep_a_label_on_a_novel_frame():
    s = Smoother(NAMES, threshold=0.6, hysteresis=0.3)
    assert s.update(SURE_UP, 0.1, 0.3)[0] == "up"
    assert s.update(np.array([0.5, 0.5]), 0.1, 0.3)[0] == "up"  # the probability band holds it...
    assert s.update(np.array([0.5, 0.5]), 0.4, 0.3)[0] == UNKNOWN_LABEL  # ...but not against novelty


def test_reset_forgets_novelty():
    s = Smoother(NAMES, smoothing=0.9)
    s.update(SURE_UP, 0.9, 0.3)
    s.reset()
    assert s.novelty is None and s.update(SURE_UP, 0.1, 0.3)[0] == "up"
