"""A small ctypes binding of libespeak-ng, for the speech data set (`latentlm.data.speech`).

The library and its voice data come from the `espeakng-loader` wheel on PyPI (the `speech` and
`test` extras install it), so a fresh machine needs no system package. Only retraining and
evaluation synthesise speech: the wheel is imported on first use, never by `import latentlm`, and
a missing wheel raises a `LatentLMError` that names the fix.

Determinism: libespeak-ng keeps state between utterances in C statics that no call resets (the
pitch-flutter phase), and seeds its noise from an unset value. So every utterance loads the library
afresh (dlopen after dlclose, about 3 ms), seeds its noise with `espeak_ng_SetRandSeed`, and
unloads it again: the same text and voice give the same samples whatever was spoken before.
Synthesis runs with AUDIO_OUTPUT_SYNCHRONOUS: `espeak_Synth` returns after handing every sample
to our callback. The engine is global to the process, so calls hold a lock.
"""
from __future__ import annotations

import _ctypes
import ctypes
import threading

import numpy as np

from latentlm.errors import LatentLMError

INSTALL_HINT = "install the speech extra: .venv/bin/pip install -e '.[speech]' (it brings espeakng-loader)"
NOISE_SEED = 0

# speak_lib.h
AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
CHARS_UTF8 = 1
ENDPAUSE = 0x1000
PARAM_RATE, PARAM_PITCH = 1, 3
EE_OK = 0

SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_lock = threading.Lock()
_chunks: list[np.ndarray] = []


@SynthCallback
def _collect(wav, n, events) -> int:
    """espeak's callback: copy `n` int16 samples out of its buffer; returning 0 means go on."""
    if n > 0 and wav:
        _chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
    return 0


def _paths() -> tuple[str, str]:
    """The wheel's shared library and voice data folder, or a LatentLMError naming the fix."""
    try:
        import espeakng_loader
    except ImportError as e:
        raise LatentLMError(f"speech synthesis needs libespeak-ng: {INSTALL_HINT}") from e
    try:
        return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except RuntimeError as e:
        raise LatentLMError(f"espeakng-loader is broken ({e}): reinstall it: {INSTALL_HINT}") from e


def _declare(lib: ctypes.CDLL) -> None:
    """Argument and result types of the functions we call."""
    c_int, c_uint = ctypes.c_int, ctypes.c_uint
    signatures = {
        "espeak_Initialize": ([c_int, c_int, ctypes.c_char_p, c_int], c_int),
        "espeak_SetSynthCallback": ([SynthCallback], None),
        "espeak_ng_SetRandSeed": ([ctypes.c_long], None),
        "espeak_SetVoiceByName": ([ctypes.c_char_p], c_int),
        "espeak_SetParameter": ([c_int, c_int, c_int], c_int),
        "espeak_Synth": ([ctypes.c_char_p, ctypes.c_size_t, c_uint, c_int, c_uint, c_uint, ctypes.c_void_p,
                          ctypes.c_void_p], c_int),
        "espeak_Synchronize": ([], c_int),
        "espeak_Terminate": ([], c_int),
    }
    for name, (args, res) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res


def _load() -> tuple[ctypes.CDLL, int]:
    """A freshly loaded and initialised library, and its native sample rate."""
    lib_path, data_path = _paths()
    try:
        lib = ctypes.CDLL(lib_path)
    except OSError as e:
        raise LatentLMError(f"cannot load libespeak-ng ({e}): reinstall it: {INSTALL_HINT}") from e
    _declare(lib)
    rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
    if rate <= 0:
        _unload(lib)
        raise LatentLMError(f"libespeak-ng failed to start with its data at {data_path}: {INSTALL_HINT}")
    lib.espeak_SetSynthCallback(_collect)
    lib.espeak_ng_SetRandSeed(NOISE_SEED)
    return lib, rate


def _unload(lib: ctypes.CDLL) -> None:
    """Terminate and unload, so that the next load starts from the library's initial state."""
    lib.espeak_Terminate()
    _ctypes.dlclose(lib._handle)


def _speak(lib: ctypes.CDLL, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
    """The int16 samples of `text` from an initialised library."""
    if lib.espeak_SetVoiceByName(voice.encode()) != EE_OK:
        raise LatentLMError(f"espeak-ng has no voice {voice!r}: use a name like 'en-us+f3' (language+variant)")
    lib.espeak_SetParameter(PARAM_RATE, int(rate), 0)
    lib.espeak_SetParameter(PARAM_PITCH, int(pitch), 0)
    _chunks.clear()
    data = text.encode("utf-8")
    err = lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8 | ENDPAUSE, None, None)
    if err != EE_OK or lib.espeak_Synchronize() != EE_OK:
        raise LatentLMError(f"espeak-ng failed (error {err}) on {text!r}")
    return np.concatenate(_chunks) if _chunks else np.zeros(0, np.int16)


def require() -> None:
    """Load and start libespeak-ng once, or raise the LatentLMError that names the fix."""
    with _lock:
        _unload(_load()[0])


def available() -> bool:
    """True when libespeak-ng loads and starts (the tests skip synthesis otherwise)."""
    try:
        require()
        return True
    except LatentLMError:
        return False


def synthesize(text: str, voice: str, rate: int = 175, pitch: int = 50) -> tuple[np.ndarray, int]:
    """Speak `text` with espeak voice `voice` (e.g. "en-us+f3") at `rate` words a minute and `pitch`
    0-100: mono float32 samples in [-1, 1) at espeak's native rate (22050 Hz), and that rate."""
    with _lock:
        lib, sample_rate = _load()
        try:
            pcm = _speak(lib, text, voice, rate, pitch)
        finally:
            _unload(lib)
    return pcm.astype(np.float32) / 32768.0, sample_rate
