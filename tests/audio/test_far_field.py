"""Far-field simulation (minmo.audio.farfield) and the VAD's level normalisation on it.

The recall test is the issue's acceptance check: on real speech with reference boundaries, made
far-field (synthetic room, -15 to -45 dBFS, pink noise 10-20 dB below), the VAD's speech recall
stays >= 0.9 of its clean recall. Measured when written (recall far / clean): 1.00 on the
pyannote call and 0.98-1.02 on the speechbrain VAD clips at every level; without the level
normalisation the call's recall fell to 0.71 at -35 dBFS and 0.00 at -45 dBFS.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from minmo.audio.farfield import FarFieldSpec, far_field_mix, pink_noise, room_impulse_response
from minmo.audio.measure import rms_dbfs
from minmo.audio.vad import (
    VAD_LEVEL_DBFS,
    BatchedSileroVad,
    level_normalized,
    speech_timestamps,
    vad_gain,
)
from minmo.diarization.metrics import read_rttm
from schemas.units import SAMPLE_RATE_HZ

RATE = SAMPLE_RATE_HZ
LEVELS_DBFS = (-15.0, -25.0, -35.0, -45.0)


# ---------------------------------------------------------------- the simulation


def test_impulse_response_has_the_asked_decay_and_direct_to_reverberant_ratio() -> None:
    spec = FarFieldSpec(rt60_s=0.6, drr_db=3.0, delay_s=0.005)
    rir = room_impulse_response(spec, np.random.default_rng(0))
    delay = round(spec.delay_s * RATE)
    assert rir[delay] == 1.0 and not rir[:delay].any()
    tail = rir[delay + 1 :]
    assert 10 * np.log10(1.0 / np.sum(tail**2)) == pytest.approx(3.0, abs=1e-6)
    # Schroeder backward integration: the energy decay from -5 to -25 dB, extrapolated to 60 dB.
    decay = 10 * np.log10(np.cumsum(tail[::-1] ** 2)[::-1] / np.sum(tail**2))
    t5, t25 = np.argmax(decay <= -5) / RATE, np.argmax(decay <= -25) / RATE
    assert 3 * (t25 - t5) == pytest.approx(0.6, rel=0.15)


def test_mix_has_the_asked_level_and_snr() -> None:
    rng = np.random.default_rng(1)
    speech = np.zeros(4 * RATE, np.float32)
    speech[: RATE // 2] = 0.3 * rng.standard_normal(RATE // 2)  # a burst, then 3.5 s of room
    spec = FarFieldSpec(level_dbfs=-35.0, snr_db=15.0, rt60_s=0.4)
    out = far_field_mix(speech, spec, np.random.default_rng(2))
    assert out.dtype == np.float32 and out.shape == speech.shape
    noise_only = out[2 * RATE :]  # the reverberant tail has died out (-60 dB after 0.4 s)
    assert rms_dbfs(noise_only) == pytest.approx(-50.0, abs=0.5)
    expected_total = 10 * np.log10(10 ** (-35 / 10) + 10 ** (-50 / 10))
    assert rms_dbfs(out) == pytest.approx(expected_total, abs=0.5)


def test_each_speaker_gets_a_room_of_their_own_and_the_same_seed_gives_the_same_audio() -> None:
    rng = np.random.default_rng(3)
    tracks = {"A": rng.standard_normal(RATE), "B": rng.standard_normal(RATE)}
    spec = FarFieldSpec()
    once = far_field_mix(tracks, spec, np.random.default_rng(4))
    again = far_field_mix(tracks, spec, np.random.default_rng(4))
    np.testing.assert_array_equal(once, again)
    first = room_impulse_response(spec, np.random.default_rng(5))
    second = room_impulse_response(spec, np.random.default_rng(6))
    assert not np.allclose(first, second)


def test_pink_noise_falls_3_db_per_octave() -> None:
    noise = pink_noise(2**18, np.random.default_rng(7))
    power = np.abs(np.fft.rfft(noise)) ** 2
    low = power[1000:2000].mean()  # an octave, then the octave three octaves up
    high = power[8000:16000].mean()
    assert 10 * np.log10(low / high) == pytest.approx(9.0, abs=1.0)


def test_bad_specs_and_tracks_are_errors() -> None:
    with pytest.raises(ValueError, match="level_dbfs"):
        FarFieldSpec(level_dbfs=3.0)
    with pytest.raises(ValueError, match="rt60_s"):
        FarFieldSpec(rt60_s=0.0)
    with pytest.raises(ValueError, match="equal-length"):
        far_field_mix({"A": np.ones(10), "B": np.ones(11)}, FarFieldSpec(), np.random.default_rng())
    with pytest.raises(ValueError, match="silent"):
        far_field_mix(np.zeros(100), FarFieldSpec(), np.random.default_rng())


# ---------------------------------------------------------------- level normalisation


def test_vad_gain_brings_loud_frames_to_one_level_within_limits() -> None:
    rng = np.random.default_rng(8)
    burst = np.zeros(10 * RATE, np.float32)
    burst[: RATE // 2] = rng.standard_normal(RATE // 2)  # speech-like 5 % of the file
    for level in (-10.0, -30.0, -50.0):
        scaled = burst * 10 ** (level / 20)
        (normalized,) = level_normalized([scaled])
        assert rms_dbfs(normalized[: RATE // 2]) == pytest.approx(VAD_LEVEL_DBFS, abs=0.5)
        np.testing.assert_array_equal(scaled, burst * 10 ** (level / 20))  # input untouched
    assert vad_gain([burst * 1e-4]) == pytest.approx(10 ** (40 / 20))  # capped at +40 dB
    assert vad_gain([np.zeros(RATE, np.float32)]) == 1.0
    assert vad_gain([1e-6 * burst]) == 1.0  # -120 dBFS: dither, not speech
    assert vad_gain([]) == 1.0
    # One gain for all channels: the quiet channel keeps its distance below the loud one.
    loud, quiet = level_normalized([burst, 0.01 * burst])
    assert rms_dbfs(loud) - rms_dbfs(quiet) == pytest.approx(40.0, abs=0.01)


# ---------------------------------------------------------------- speech recall, far-field


def _read(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32")
    assert rate == RATE and audio.ndim == 1
    return audio


def _references(shared_data: Path) -> list[tuple[str, np.ndarray, list[tuple[float, float]]]]:
    """Real speech with reference speech boundaries: the pyannote call (its RTTM) and the
    speechbrain VAD examples (their JSON)."""
    folder = shared_data / "diar_pyannote_sample"
    (turns,) = read_rttm(folder / "sample.rttm").values()
    items = [("call", _read(folder / "sample.wav"), [(a, b) for _, a, b in turns])]
    vad_folder = shared_data / "vad_speechbrain"
    for name, example in json.loads((vad_folder / "VAD_train.json").read_text()).items():
        wav = _read(vad_folder / Path(example["wav"]["file"]).name)
        segment = wav[example["wav"]["start"] : example["wav"]["stop"]]
        bounds = [float(x) for x in example["speech"].split()]
        if bounds:
            items.append((name, segment, list(zip(bounds[::2], bounds[1::2], strict=True))))
    return items


def _recall(vad: BatchedSileroVad, audio: np.ndarray, reference: list[tuple[float, float]]):
    (probs,) = vad.speech_probs(level_normalized([audio]))
    found = speech_timestamps(probs, audio.size, time_resolution=3)
    frames = audio.size // 160 + 1
    truth, hit = np.zeros(frames, bool), np.zeros(frames, bool)
    for a, b in reference:
        truth[round(a * 100) : round(b * 100)] = True
    for a, b in found:
        hit[round(a * 100) : round(b * 100)] = True
    return (truth & hit).sum() / truth.sum()


@pytest.mark.parametrize("snr_db", [10.0, 20.0])
def test_speech_recall_holds_far_field_from_minus_15_to_minus_45_dbfs(
    shared_data: Path, snr_db: float
) -> None:
    vad = BatchedSileroVad()
    items = _references(shared_data)
    assert len(items) >= 3
    for name, audio, reference in items:
        clean = _recall(vad, audio, reference)
        assert clean > 0.6, (name, clean)
        for level in LEVELS_DBFS:
            spec = FarFieldSpec(level_dbfs=level, snr_db=snr_db, rt60_s=0.5, drr_db=0.0)
            far = far_field_mix(audio, spec, np.random.default_rng(9))
            recall = _recall(vad, far, reference)
            assert recall >= 0.9 * clean, (name, level, snr_db, recall, clean)
