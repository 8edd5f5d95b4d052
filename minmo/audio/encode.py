"""Audio -> file bytes: the one place FLAC (and PCM16 WAV) bytes are made.

Two quantisations, kept apart on purpose because the bytes differ: `flac_bytes` hands clipped
float samples to libsndfile, which quantises them (the shards' and synthesized audio's FLAC);
`pcm16_bytes` rounds to int16 here first, so the bytes depend only on the samples and not on
the libsndfile build (the demo's files).

Must not: resample or normalise; the caller gives samples at the rate it names.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from schemas.units import SAMPLE_RATE_HZ


def _pcm16(data: np.ndarray, rate_hz: int, container: str) -> bytes:
    """`data` ((samples,) or (samples, channels), float or int16) as 16-bit `container` bytes."""
    buf = io.BytesIO()
    sf.write(buf, data, rate_hz, format=container, subtype="PCM_16")
    return buf.getvalue()


def flac_bytes(audio: np.ndarray, rate_hz: int = SAMPLE_RATE_HZ) -> bytes:
    """(channels, samples) or (samples,) float32 (16 kHz unless `rate_hz` says otherwise) ->
    16-bit FLAC bytes, clipped to [-1, 1]."""
    data = audio.T if audio.ndim == 2 else audio
    return _pcm16(np.clip(data, -1.0, 1.0), rate_hz, "FLAC")


def pcm16_bytes(audio: np.ndarray, rate_hz: int, container: str) -> bytes:
    """(samples,) float -> PCM16 WAV or FLAC bytes (`container`: "wav" / "flac", any case).
    Quantised here (round, clip) rather than in libsndfile so the bytes depend only on the
    samples."""
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
    return _pcm16(pcm, rate_hz, container.upper())
