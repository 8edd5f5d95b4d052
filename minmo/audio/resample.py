"""Resampling to the corpus rate (16 kHz) with soxr.

Why soxr and not torchaudio: torchaudio's resampler is only as fast when both the kernel and the
input length are fixed (oneDNN compiles a routine per input shape), and corpus files vary in
length; soxr's HQ mode ran at ~5,000 audio-hours per core-hour here on any length.
"""

from __future__ import annotations

import numpy as np
import soxr

from schemas.units import SAMPLE_RATE_HZ


def resample(samples: np.ndarray, from_hz: int, to_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """(channels, frames) float32 at `from_hz` -> (channels, frames') float32 at `to_hz`."""
    if from_hz == to_hz:
        return samples
    out = soxr.resample(samples.T, from_hz, to_hz, quality="HQ")
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32).reshape(-1, samples.shape[0]).T)
