"""Tests for the `channels` backend: accuracy on the demo stereo conversations, crosstalk removal,
refusals, and sane behaviour on a real 8 kHz call.

Times below are pyannote DER with collar=0.25 (total width) via minmo.diarization.metrics.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from minmo.audio.decode import decode_audio
from minmo.audio.resample import resample
from minmo.diarization.channels import ChannelDiarizer, ChannelDiarizerConfig
from minmo.diarization.metrics import Turn, read_rttm, score
from minmo.diarization.types import DiarizationRejected, SpeakerHints, SpeakerSegment

STEREO_DEMOS = ("en_weekend_hike", "de_umzug", "zh_zhoumo")
DEMO_LABELS = {"A": "ch0", "B": "ch1"}
CALL_DIR = "stereo_aws_lca_autorepairs40"
CALL_STEM = "Auto_Repairs_40_UTC_stereo"
CALL_LABELS = {"caller": "ch0", "agent": "ch1"}  # left = caller, right = agent (README.txt)
HINTS = SpeakerHints()
# A speaker's time inside the other's solo speech is only counted this far from the reference
# boundaries: the collar DER forgives, plus VAD padding and 32 ms window rounding.
BOUNDARY_S = 0.25


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def diarizer() -> ChannelDiarizer:
    return ChannelDiarizer()


@pytest.fixture(scope="module")
def no_leak_removal(diarizer: ChannelDiarizer) -> ChannelDiarizer:
    """Crosstalk suppression switched off (an impossible margin), sharing the loaded VAD."""
    return ChannelDiarizer(ChannelDiarizerConfig(leakage_margin_db=1000.0), vad=diarizer.vad)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[np.ndarray, list[Turn]]]:
    """stem -> ((2, samples) float32 at 16 kHz, reference turns labelled ch0 / ch1)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed: apt-get install espeak-ng")
    from minmo.demo import build_demo_corpus

    out = tmp_path_factory.mktemp("demo")
    build_demo_corpus(out, seed=0, progress=False)
    conversations = {}
    for stem in STEREO_DEMOS:
        audio = _load(out / "conversations" / f"{stem}.wav")
        assert audio.shape[0] == 2, f"{stem} is expected to be stereo"
        turns = read_rttm(out / "conversations" / f"{stem}.rttm")[stem]
        conversations[stem] = (audio, [(DEMO_LABELS[s], a, b) for s, a, b in turns])
    return conversations


@pytest.fixture(scope="module")
def call(shared_data: Path) -> tuple[np.ndarray, list[Turn]]:
    """The real stereo call resampled to 16 kHz, and its weak energy-VAD 'reference'."""
    folder = shared_data / CALL_DIR
    audio = _load(folder / f"{CALL_STEM}.wav")
    turns = read_rttm(folder / f"{CALL_STEM}.energyvad.rttm")[CALL_STEM]
    return audio, [(CALL_LABELS[s], a, b) for s, a, b in turns]


def _load(path: Path) -> np.ndarray:
    decoded = decode_audio(path.read_bytes(), "wav")
    return resample(decoded.samples, decoded.sample_rate_hz)


def _noise(shape: tuple[int, ...], dbfs: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (10 ** (dbfs / 20) * rng.standard_normal(shape)).astype(np.float32)


def _delayed(x: np.ndarray, gain_db: float, delay_s: float) -> np.ndarray:
    """x attenuated by gain_db and delayed: what a channel picks up of another (echo)."""
    k = round(delay_s * 16_000)
    out = np.zeros_like(x)
    out[k:] = x[: x.size - k]
    return (10 ** (gain_db / 20) * out).astype(np.float32)


def _spans(turns: list[Turn], speaker: str) -> list[tuple[float, float]]:
    """Union of one speaker's turns, sorted."""
    spans: list[tuple[float, float]] = []
    for a, b in sorted((a, b) for s, a, b in turns if s == speaker):
        if spans and a <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], b))
        else:
            spans.append((a, b))
    return spans


def _minus(spans: list[tuple[float, float]], cut: list[tuple[float, float]]):
    out = []
    for a, b in spans:
        pieces = [(a, b)]
        for c, d in cut:
            pieces = [p for x, y in pieces for p in ((x, min(y, c)), (max(x, d), y)) if p[1] > p[0]]
        out.extend(pieces)
    return out


def _intersect(spans, others) -> float:
    """Seconds in both span lists (each sorted and non-overlapping)."""
    return sum(max(0.0, min(b, d) - max(a, c)) for a, b in spans for c, d in others)


def _solo(turns: list[Turn], speaker: str, other: str) -> list[tuple[float, float]]:
    """Where only `speaker` talks, shrunk by BOUNDARY_S at both ends."""
    solo = _minus(_spans(turns, speaker), _spans(turns, other))
    return [(a + BOUNDARY_S, b - BOUNDARY_S) for a, b in solo if b - a > 2 * BOUNDARY_S]


def _hyp_spans(segments: list[SpeakerSegment], speaker: str) -> list[tuple[float, float]]:
    return _spans([(s.speaker, s.start_s, s.end_s) for s in segments], speaker)


def _overlap(turns: list[Turn]) -> list[tuple[float, float]]:
    a, b = _spans(turns, "ch0"), _spans(turns, "ch1")
    return [(max(x, u), min(y, v)) for x, y in a for u, v in b if min(y, v) > max(x, u)]


def _check_speakers_in_place(turns: list[Turn], segments: list[SpeakerSegment]) -> None:
    """Each channel stays out of the other party's solo speech and keeps every overlap."""
    for speaker, other in (("ch0", "ch1"), ("ch1", "ch0")):
        intruding = _intersect(_hyp_spans(segments, speaker), _solo(turns, other, speaker))
        assert intruding == 0.0, f"{speaker} heard for {intruding:.2f} s inside {other}'s solo"
    overlap = _overlap(turns)
    assert sum(b - a for a, b in overlap) > 1.0, "the fixture should contain real overlap"
    for speaker in ("ch0", "ch1"):
        kept = _intersect(overlap, _hyp_spans(segments, speaker))
        assert kept >= 0.9 * sum(b - a for a, b in overlap), f"{speaker} lost overlapped speech"


# ---------------------------------------------------------------- accuracy


@pytest.mark.parametrize("stem", STEREO_DEMOS)
def test_demo_conversations_der_at_most_3_percent(diarizer, demo, stem: str) -> None:
    audio, turns = demo[stem]
    segments = diarizer(audio, HINTS)
    # Measured 0.00 % on all three (2.35 % on en with min_speech_s=0.25, where a 0.61 s pause
    # between two sentences of one turn stays unmerged).
    assert score(turns, segments, collar=0.25).der <= 0.03
    assert {s.speaker for s in segments} == {"ch0", "ch1"}
    assert all(s.channel == int(s.speaker[2:]) for s in segments)
    assert all(0.0 <= s.confidence <= 1.0 and s.end_s > s.start_s for s in segments)
    assert segments == sorted(segments, key=lambda s: (s.start_s, s.speaker))
    _check_speakers_in_place(turns, segments)


@pytest.mark.parametrize(("attenuation_db", "delay_s"), [(25.0, 0.0), (30.0, 0.02)])
def test_crosstalk_is_not_a_speaker(
    diarizer, no_leak_removal, demo, attenuation_db: float, delay_s: float
) -> None:
    """Channel 1 also carries channel 0 at -25..-30 dB (a handset mix, or an echo 20 ms late)."""
    for audio, turns in demo.values():
        leaky = audio.copy()
        leaky[1] += _delayed(audio[0], -attenuation_db, delay_s)
        # Without suppression the leak is heard as ch1 speech (measured 4-18 s per file) ...
        unsuppressed = _hyp_spans(no_leak_removal(leaky, HINTS), "ch1")
        assert _intersect(unsuppressed, _solo(turns, "ch0", "ch1")) > 2.0
        # ... with it, ch1 is silent in ch0's solo speech and genuine overlaps keep both.
        segments = diarizer(leaky, HINTS)
        _check_speakers_in_place(turns, segments)
        assert score(turns, segments, collar=0.25).der <= 0.03


def test_quiet_party_over_a_loud_one_is_kept(diarizer, demo) -> None:
    """Party B 20 dB quieter than A, and no leakage: B's overlapping speech passes the 15 dB
    margin test for crosstalk but is far above the measured coupling (ch1's noise floor)."""
    for audio, turns in demo.values():
        quiet = audio.copy()
        quiet[1] *= 10 ** (-20 / 20)
        segments = diarizer(quiet, HINTS)
        _check_speakers_in_place(turns, segments)
        assert score(turns, segments, collar=0.25).der <= 0.03


def test_more_than_two_channels_one_speaker_each(diarizer, demo) -> None:
    """A third line that only picks up the other two (-27 dB) yields no speaker of its own."""
    audio, turns = demo["de_umzug"]
    third = _delayed(audio[0] + audio[1], -27.0, 0.0) + _noise(audio[0].shape, -62.0)
    segments = diarizer(np.stack([audio[0], audio[1], third]), HINTS)
    assert {s.speaker for s in segments} == {"ch0", "ch1"}
    assert score(turns, segments, collar=0.25).der <= 0.03


def test_real_call_against_its_energy_vad(diarizer, no_leak_removal, call) -> None:
    """A real 8 kHz call. Its RTTM is a per-channel energy VAD, not a human reference, so only
    loose bounds: measured DER 3.5 % against it, and per-channel speech +9 % (caller) and
    +5 % (agent) above it (our 30 ms padding and 0.5 s merges vs its 0.3 s merges)."""
    audio, turns = call
    segments = diarizer(audio, HINTS)
    assert {s.speaker for s in segments} == {"ch0", "ch1"}
    assert score(turns, segments, collar=0.25).der <= 0.10
    for speaker in ("ch0", "ch1"):
        ours = sum(s.duration_s for s in segments if s.speaker == speaker)
        theirs = sum(b - a for s, a, b in turns if s == speaker)
        assert 0.75 * theirs <= ours <= 1.25 * theirs, (speaker, ours, theirs)
    # The call has no audible leakage (each channel sits at its noise floor while the other
    # talks: -64 dBFS caller, about -95 dBFS agent), so suppression must change next to nothing.
    unsuppressed = no_leak_removal(audio, HINTS)
    assert abs(sum(s.duration_s for s in unsuppressed) - sum(s.duration_s for s in segments)) < 1.0


def test_deterministic(diarizer, demo) -> None:
    audio, _ = demo["zh_zhoumo"]
    first = diarizer(audio, HINTS)
    assert diarizer(audio.copy(), HINTS) == first
    assert ChannelDiarizer(vad=diarizer.vad)(audio, HINTS) == first


# ---------------------------------------------------------------- refusals


def _reason(diarizer: ChannelDiarizer, audio: np.ndarray) -> str:
    with pytest.raises(DiarizationRejected) as info:
        diarizer(audio, HINTS)
    return info.value.reason


def test_refuses_one_channel(diarizer, demo) -> None:
    audio, _ = demo["en_weekend_hike"]
    assert _reason(diarizer, audio[:1]) == "not_multichannel"
    assert _reason(diarizer, audio[0]) == "not_multichannel"  # 1-D: mono without a channel axis


def test_refuses_no_speech(diarizer) -> None:
    assert _reason(diarizer, _noise((2, 5 * 16_000), -60.0)) == "no_speech"
    assert _reason(diarizer, np.zeros((2, 16_000), np.float32)) == "no_speech"


def test_refuses_single_speaker(diarizer, demo) -> None:
    audio, _ = demo["de_umzug"]
    floor = _noise(audio[0].shape, -62.0)
    assert _reason(diarizer, np.stack([audio[0], floor])) == "single_speaker"
    # Channel 1 only carries channel 0's crosstalk: still one speaker.
    leak_only = floor + _delayed(audio[0], -27.0, 0.0)
    assert _reason(diarizer, np.stack([audio[0], leak_only])) == "single_speaker"


@pytest.mark.parametrize(
    "bad",
    [
        {"threshold": 1.0},
        {"merge_gap_s": -0.1},
        {"leakage_margin_db": 0.0},
        {"leakage_excess_db": -1.0},
        {"leakage_smooth_s": -0.01},
    ],
)
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        ChannelDiarizerConfig(**bad)
