"""The speech data set: sentence grammar, splits, voices, espeak-ng synthesis, loudness, CLI."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from latentlm.data import espeak
from latentlm.data.sentences import TRIES, is_held_out, sentence, sentence_for, words_of
from latentlm.data.shapes import SPLIT_SEED_SPAN, split_seed
from latentlm.data.speech import (
    SAMPLE_RATE,
    TARGET_DBFS,
    VOICES,
    gated_rms_db,
    normalize_loudness,
    speak,
    speech_item,
    speech_text,
    speech_voice,
    training_voices,
)
from latentlm.errors import LatentLMError

needs_espeak = pytest.mark.skipif(
    not espeak.available(), reason=f"libespeak-ng is not installed: {espeak.INSTALL_HINT}"
)
CAPTION = re.compile(r"^a (small |large )?\w+ \w+( (above|below|left of|right of) a \w+ \w+)?$")


def test_sentences_are_a_pure_function_of_the_index():
    first = [sentence_for("train", i) for i in range(50)]
    assert [sentence_for("train", i) for i in range(50)] == first
    assert sentence(12345) == sentence(12345)
    assert len(set(first)) > 40  # and they vary


def test_splits_own_disjoint_seeds_and_test_texts_are_unseen():
    last_train_seed = split_seed("train", SPLIT_SEED_SPAN - 1) * TRIES + TRIES - 1
    assert last_train_seed < split_seed("val", 0) * TRIES
    assert split_seed("val", SPLIT_SEED_SPAN - 1) * TRIES + TRIES - 1 < split_seed("test", 0) * TRIES
    train = {speech_text("train", i)[0] for i in range(3000)}
    test = [speech_text("test", i) for i in range(300)]
    assert not train & {t for t, _ in test}
    assert all(is_held_out(t) for t, _ in test)
    assert not any(is_held_out(speech_text("val", i)[0]) for i in range(100))
    assert {"shapes", "general"} == {s for _, s in test}  # new caption combinations and new sentences


def test_speech_texts_mix_shapes_captions_and_general_sentences():
    items = [speech_text("train", i) for i in range(200)]
    shapes = [t for t, s in items if s == "shapes"]
    assert 60 < len(shapes) < 140
    assert all(CAPTION.match(t) for t in shapes), shapes


def test_general_vocabulary_is_a_few_hundred_words():
    vocab = {w for i in range(5000) for w in words_of(sentence_for("train", i))}
    assert 200 <= len(vocab) <= 1000, len(vocab)
    assert {"seven", "o'clock", "blue", "please", "where", "monday"} <= vocab


def test_voice_table():
    assert len(VOICES) >= 6 and len({v.name for v in VOICES}) == len(VOICES)
    assert {v.gender for v in VOICES} == {"male", "female"}
    held_out = [v for v in VOICES if v.held_out]
    assert len(held_out) >= 2 and {v.gender for v in held_out} == {"male", "female"}
    assert set(training_voices()) == set(VOICES) - set(held_out)
    assert len({v.speed for v in VOICES}) >= 4 and len({v.pitch for v in VOICES}) >= 4
    assert {speech_voice("train", i) for i in range(200)} == set(VOICES)  # the data speaks in every voice


def test_loudness_normalisation_hits_its_target():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    burst = np.sin(2 * np.pi * 220 * t) * (t % 0.25 < 0.15)  # tone bursts with silences between
    wav = np.concatenate([np.zeros(SAMPLE_RATE // 4), burst]).astype(np.float32)
    for gain in (0.001, 0.1, 0.9):
        out = normalize_loudness(wav * gain)
        assert out.dtype == np.float32
        assert gated_rms_db(out) == pytest.approx(TARGET_DBFS, abs=0.01)
    assert not normalize_loudness(np.zeros(1000, np.float32)).any()
    spike = np.zeros(SAMPLE_RATE, np.float32)
    spike[100] = 1.0
    assert np.abs(normalize_loudness(spike + 1e-3 * burst.astype(np.float32))).max() <= 0.99 + 1e-6


def test_missing_library_raises_a_user_error_naming_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import fails
    with pytest.raises(LatentLMError, match=r"pip install .*speech"):
        espeak.synthesize("hello", "en-us")
    assert not espeak.available()


def test_importing_the_package_does_not_load_espeak():
    code = ("import sys, latentlm, latentlm.data.speech, latentlm.cli.main; "
            "assert 'espeakng_loader' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@needs_espeak
@pytest.mark.parametrize("voice", VOICES, ids=lambda v: v.name)
def test_every_voice_speaks_audible_16khz_audio_whose_length_follows_the_text(voice):
    short = speak("a red circle", voice)
    long = speak("a red circle above a blue square, and then the train leaves at half past seven", voice)
    for wav in (short, long):
        assert wav.dtype == np.float32 and wav.ndim == 1
        assert gated_rms_db(wav) == pytest.approx(TARGET_DBFS, abs=0.1)
        assert 0.05 < np.abs(wav).max() <= 0.99
    assert 0.4 < len(short) / SAMPLE_RATE < 3
    assert len(long) > 2.5 * len(short)


@needs_espeak
def test_synthesis_is_16khz_resampled_from_espeak():
    raw, rate = espeak.synthesize("what time is it?", "en-us+f1")
    assert rate == 22050 and raw.dtype == np.float32
    wav = speak("what time is it?", VOICES[0])
    expected = len(espeak.synthesize("what time is it?", VOICES[0].espeak, VOICES[0].speed, VOICES[0].pitch)[0])
    assert abs(len(wav) - expected * SAMPLE_RATE / rate) <= 1


@needs_espeak
def test_same_item_gives_the_same_waveform():
    text, voice, wav = speech_item("val", 7)
    speech_item("train", 1)  # espeak-ng state from another utterance must not leak
    again = speech_item("val", 7)
    assert (again[0], again[1]) == (text, voice)
    np.testing.assert_array_equal(again[2], wav)


def test_unknown_espeak_voice_is_a_user_error():
    if not espeak.available():
        pytest.skip(f"libespeak-ng is not installed: {espeak.INSTALL_HINT}")
    with pytest.raises(LatentLMError, match="no voice"):
        espeak.synthesize("hello", "no-such-voice")


@needs_espeak
def test_data_speech_command_writes_wavs_and_a_manifest(tmp_path):
    import soundfile as sf

    out = tmp_path / "speech"
    proc = subprocess.run([sys.executable, "-m", "latentlm.cli", "data", "speech", "--n", "3", "-o", str(out),
                           "--split", "test", "--start", "5"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    manifest = out / "manifest.jsonl"
    assert proc.stdout.strip() == str(manifest)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["index"] for r in records] == [5, 6, 7]
    for r in records:
        assert {"text", "voice", "duration", "file", "split", "index"} <= set(r)
        assert r["split"] == "test" and r["text"] == speech_text("test", r["index"])[0]
        wav, rate = sf.read(out / r["file"], dtype="float32")
        assert rate == SAMPLE_RATE and wav.ndim == 1
        assert r["duration"] == pytest.approx(len(wav) / SAMPLE_RATE, abs=1e-3)
    assert not list(out.glob("*.tmp"))
