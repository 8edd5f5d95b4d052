"""espeak-ng backend: real synthesis, measurable style effects, failure paths, determinism."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from minmo.tts.base import Style, Synthesized, TtsFailure, TtsRequest, Voice
from minmo.tts.espeak import EMOTION_PRESETS, EspeakBackend, parse_voice_list

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

TEXT = "The quick brown fox jumps over the lazy dog, and then it runs home for dinner."
EN = Voice(voice_id="spk1", language="en-us")


NEUTRAL = Style()


def speak(backend: EspeakBackend, style: Style = NEUTRAL, voice: Voice = EN) -> Synthesized:
    (out,) = backend.synthesize([TtsRequest(key="k", text=TEXT, voice=voice, style=style)])
    assert isinstance(out, Synthesized), out
    return out


def speech_seconds(out: Synthesized) -> float:
    """Duration between the first and last frame above -40 dB of the loudest (10 ms frames)."""
    n = out.sample_rate_hz // 100
    frames = out.samples[: len(out.samples) // n * n].reshape(-1, n)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    voiced = np.flatnonzero(rms > rms.max() * 0.01)
    return (voiced[-1] - voiced[0] + 1) * n / out.sample_rate_hz


def median_f0(out: Synthesized, fmin: float = 60.0, fmax: float = 400.0) -> float:
    """Median F0 over voiced frames: normalised autocorrelation peak of 40 ms frames."""
    x, sr = out.samples.astype(np.float64), out.sample_rate_hz
    size, hop = int(0.04 * sr), int(0.01 * sr)
    lo, hi = int(sr / fmax), int(sr / fmin)
    frames = np.lib.stride_tricks.sliding_window_view(x, size)[::hop]
    rms = np.sqrt(np.mean(frames**2, axis=1))
    f0s = []
    for frame in frames[rms > 0.2 * rms.max()]:
        frame = frame - frame.mean()
        ac = np.correlate(frame, frame, mode="full")[size - 1 :]
        if ac[0] <= 0:
            continue
        ac = ac / ac[0]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5:  # periodic enough to count as voiced
            f0s.append(sr / lag)
    assert len(f0s) > 10, "too few voiced frames to estimate F0"
    return float(np.median(f0s))


@pytest.fixture(scope="module")
def backend() -> EspeakBackend:
    return EspeakBackend()


def test_speaks_plausible_duration_at_native_rate(backend):
    out = speak(backend)
    assert out.sample_rate_hz == 22050
    assert out.samples.dtype == np.float32 and out.samples.ndim == 1
    assert np.abs(out.samples).max() <= 1.0
    # 16 words at 165 wpm is about 5.8 s of speech; allow for pauses and espeak's pacing
    assert 3.0 < out.duration_s < 9.0


def test_speaking_rate_changes_duration(backend):
    fast = speech_seconds(speak(backend, Style(speaking_rate=1.5)))
    slow = speech_seconds(speak(backend, Style(speaking_rate=0.7)))
    assert fast / slow < 0.65, (fast, slow)  # ideal ratio 0.7/1.5 = 0.47


def test_pitch_changes_f0(backend):
    high = median_f0(speak(backend, Style(pitch=1.5)))
    low = median_f0(speak(backend, Style(pitch=0.7)))
    assert high > low * 1.15, (high, low)


def test_emotion_presets_differ(backend):
    args = {e: backend.resolve(EN, Style(emotion=e)) for e in EMOTION_PRESETS}
    assert len(set(args.values())) == len(EMOTION_PRESETS)
    neutral = args["neutral"]
    assert args["happy"].rate_wpm > neutral.rate_wpm and args["happy"].pitch > neutral.pitch
    assert args["excited"].rate_wpm > args["happy"].rate_wpm
    assert args["sad"].rate_wpm < neutral.rate_wpm and args["sad"].pitch < neutral.pitch
    assert args["sad"].amplitude < neutral.amplitude
    assert args["angry"].amplitude > neutral.amplitude and args["angry"].rate_wpm > neutral.rate_wpm
    assert args["calm"].rate_wpm < neutral.rate_wpm
    sad = speak(backend, Style(emotion="sad"))
    excited = speak(backend, Style(emotion="excited"))
    assert speech_seconds(sad) > speech_seconds(excited) * 1.3
    assert np.sqrt(np.mean(sad.samples**2)) < np.sqrt(np.mean(excited.samples**2))


def test_unknown_emotion_is_neutral_and_counted():
    backend = EspeakBackend()
    assert backend.resolve(EN, Style(emotion="bemused")) == backend.resolve(EN, Style())
    assert backend.emotion_misses == 1


def test_dialect_switches_voice_keeping_variant(backend):
    voice = Voice("s", "en-us", engine_voice="en-us+f2")
    assert backend.resolve(voice, Style(dialect="en-gb")).voice == "en-gb+f2"
    assert backend.resolve(Voice("s", "es"), Style(dialect="es-mx")).voice == "es-419"
    assert backend.resolve(Voice("s", "pt"), Style(dialect="pt_BR")).voice == "pt-br"
    # another language or an unknown accent leaves the voice alone
    assert backend.resolve(voice, Style(dialect="fr-be")).voice == "en-us+f2"
    assert backend.resolve(voice, Style(dialect="en-mars")).voice == "en-us+f2"


def test_parse_voice_list_prefers_low_priority_alias():
    listing = (
        "Pty Language Age/Gender VoiceName File Other Languages\n"
        " 5  en-029  --/M  English_(Caribbean) gmw/en-029  (en 10)\n"
        " 2  en-gb   --/M  English_(GB)        gmw/en      (en 2)\n"
        " 5  es-419  --/M  Spanish_(LA)        roa/es-419  (es-mx 6)(es 6)\n"
        " 2  es      --/M  Spanish             roa/es\n"
    )
    voices = parse_voice_list(listing)
    assert voices["en"] == "en-gb" and voices["es-mx"] == "es-419" and voices["es"] == "es"


def test_failures_come_back_in_order(backend):
    requests = [
        TtsRequest("ok", "Hello there.", EN),
        TtsRequest("empty", "   ", EN),
        TtsRequest("badvoice", "Hello.", Voice("s", "xx-nosuchvoice")),
        TtsRequest("dash", "-v --help", EN),  # stdin text can never become a flag
    ]
    out = backend.synthesize(requests)
    assert isinstance(out[0], Synthesized) and isinstance(out[3], Synthesized)
    for failed in out[1:3]:
        assert isinstance(failed, TtsFailure) and failed.reason == "tts_failed"
    assert "empty" in out[1].detail


def test_missing_binary_fails_every_request():
    backend = EspeakBackend(exe=None)
    backend.exe = None  # as if espeak-ng were not on PATH
    out = backend.synthesize([TtsRequest("a", "Hi.", EN), TtsRequest("b", "Hi.", EN)])
    assert all(isinstance(o, TtsFailure) and "not found" in o.detail for o in out)


def test_deterministic_and_threads_keep_order():
    requests = [TtsRequest(f"k{i}", f"Line number {i}.", EN) for i in range(4)]
    one = EspeakBackend().synthesize(requests)
    two = EspeakBackend(workers=2).synthesize(requests)
    for a, b in zip(one, two, strict=True):
        assert isinstance(a, Synthesized) and isinstance(b, Synthesized)
        np.testing.assert_array_equal(a.samples, b.samples)
    assert len({len(o.samples) for o in one}) > 1  # distinct lines, not one repeated clip


def test_rejects_out_of_range_defaults():
    with pytest.raises(ValueError, match="default_pitch"):
        EspeakBackend(default_pitch=120)
