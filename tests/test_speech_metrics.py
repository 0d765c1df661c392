"""The measures of `latentlm eval tts`: recognition, word error rate, MCD-DTW, pitch."""
from __future__ import annotations

import numpy as np
import pytest

from latentlm.evaluation.speech_metrics import Recognizer, mcd_dtw, median_f0, shapes_grammar, word_error_rate

pytest.importorskip("pocketsphinx")


def tone(f0: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(16_000 * seconds)) / 16_000
    return (0.3 * np.sin(2 * np.pi * f0 * t) + 0.15 * np.sin(4 * np.pi * f0 * t)).astype(np.float32)


def test_word_error_rate_is_edit_distance_over_reference_words():
    assert word_error_rate("a red circle", "a red circle") == 0
    assert word_error_rate("a red circle", "a circle") == pytest.approx(1 / 3)
    assert word_error_rate("what time is it?", "what time is it") == 0
    assert word_error_rate("a b", "x y z") == pytest.approx(3 / 2)


def test_mcd_is_zero_for_the_same_wave_and_grows_with_noise():
    x = tone(150) * np.hanning(16_000).astype(np.float32)
    noise = np.random.default_rng(0).standard_normal(len(x)).astype(np.float32)
    a, b = mcd_dtw(x + 0.003 * noise, x), mcd_dtw(x + 0.03 * noise, x)
    assert mcd_dtw(x, x) == 0 and 0 < a < b


def test_mcd_aligns_in_time():
    """A copy delayed by 50 ms is nearer after DTW than a different pitch with the same timing."""
    x = tone(150) * np.hanning(16_000).astype(np.float32)
    late = np.concatenate([np.zeros(800, np.float32), x])[: len(x)]
    assert mcd_dtw(late, x) < mcd_dtw(tone(300) * np.hanning(16_000).astype(np.float32), x)


@pytest.mark.parametrize("f0", [110.0, 180.0, 240.0])
def test_median_f0_of_a_harmonic_tone(f0):
    assert median_f0(tone(f0)) == pytest.approx(f0, rel=0.05)


def test_the_shapes_grammar_names_every_word():
    g = shapes_grammar()
    for word in ("small", "purple", "triangle", "left of", "below"):
        assert word in g


def test_the_recogniser_hears_espeak_under_the_grammar():
    pytest.importorskip("espeakng_loader")
    from latentlm.data.speech import VOICE_BY_NAME, speak

    wav = speak("a red circle above a blue square", VOICE_BY_NAME["amy"])
    assert Recognizer(grammar=True)(wav) == "a red circle above a blue square"
    assert Recognizer(grammar=True)(np.zeros(16_000, np.float32)) in ("", "a")


def test_mcd_is_on_the_usual_scale_where_6_db_means_the_same_voice_and_words():
    """SPTK's convention (cepstra of the log-power spectrum): another voice or other words land above the
    6 dB bar of issue 19; the same voice and words at another speed (aligned by DTW) far below it."""
    import dataclasses

    from latentlm.data.speech import VOICE_BY_NAME, speak

    first, second = list(VOICE_BY_NAME.values())[:2]
    ref = speak("a small green circle", first)
    assert mcd_dtw(speak("a small green circle", dataclasses.replace(first, speed=first.speed + 20)), ref) < 3.0
    assert mcd_dtw(speak("a small green circle", second), ref) > 6.0  # same words, another voice
    assert mcd_dtw(speak("the doctor has eight flags", first), ref) > 6.0  # same voice, other words
