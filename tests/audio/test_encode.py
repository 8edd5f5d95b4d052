"""FLAC / PCM16 bytes: they decode back to the samples, within 16-bit quantisation."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from minmo.audio.encode import flac_bytes, pcm16_bytes


def test_flac_bytes_round_trip_mono_and_channels_first() -> None:
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal((2, 1600)) * 0.2).astype(np.float32)
    data, rate = sf.read(io.BytesIO(flac_bytes(audio)), dtype="float32", always_2d=True)
    assert rate == 16_000 and data.shape == (1600, 2)
    assert np.abs(data.T - audio).max() < 1e-4
    assert flac_bytes(audio[0]) == flac_bytes(audio[:1])  # (samples,) is one channel


def test_pcm16_bytes_quantise_before_libsndfile() -> None:
    audio = np.array([0.0, 0.5, -1.5, 1.0], dtype=np.float32)
    data, rate = sf.read(io.BytesIO(pcm16_bytes(audio, 24_000, "wav")), dtype="int16")
    assert rate == 24_000
    assert data.tolist() == [0, round(0.5 * 32767), -32768, 32767]
