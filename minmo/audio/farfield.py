"""Far-field simulation: what a room, a distant microphone and background noise do to speech.

Owns: a synthetic room impulse response, and turning close-talk speaker tracks into one quiet,
reverberant, noisy far-field recording at a chosen level and SNR. Used to make far-field
variants of the demo conversations and of real recordings (the demo's far-field call, the
diarization tests and `bench/diarize.py`), so that VAD and diarization are checked on the audio
meeting corpora such as AliMeeting actually hold: RMS near -40 dBFS, reverberant, noisy.

Must not: decode, resample, or measure speech (callers bring 16 kHz float tracks).

The impulse response is the textbook statistical model (Polack): a direct-path impulse after the
propagation delay, then exponentially decaying Gaussian noise whose decay gives the chosen RT60
(-60 dB after rt60_s), its energy set against the direct path by the direct-to-reverberant
ratio (DRR). A few metres from the talker in a meeting room: RT60 0.3-0.8 s, DRR -3 to +6 dB.
Each speaker gets an impulse response of their own (they stand at different places), so the
mix's voices are coloured differently, as in a real room. The noise has a 1/f (pink) spectrum,
like fans and air-conditioning, rather than white hiss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve

from schemas.units import SAMPLE_RATE_HZ, Seconds

_REVERB_ONSET_S = 0.002  # the diffuse tail starts just after the direct sound
_LN_MILLION = np.log(1e6)  # RT60: energy falls by 60 dB = a factor of 1e6


@dataclass(frozen=True)
class FarFieldSpec:
    """One far-field rendering. Level and SNR are over the whole recording: level_dbfs is the
    RMS of the reverberant speech mix, pauses included; the noise's RMS is snr_db below it."""

    level_dbfs: float = -35.0
    snr_db: float = 15.0
    rt60_s: Seconds = 0.5
    drr_db: float = 0.0
    delay_s: Seconds = 0.006  # about 2 m of air

    def __post_init__(self) -> None:
        if not self.level_dbfs < 0:
            raise ValueError(f"level_dbfs must be below full scale, got {self.level_dbfs}")
        if self.rt60_s <= 0 or self.delay_s < 0:
            raise ValueError(f"rt60_s must be > 0 and delay_s >= 0, got {self}")

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        level_dbfs: tuple[float, float] = (-40.0, -25.0),
        snr_db: tuple[float, float] = (10.0, 20.0),
        rt60_s: tuple[float, float] = (0.3, 0.8),
        drr_db: tuple[float, float] = (-3.0, 6.0),
    ) -> FarFieldSpec:
        """A random spec within meeting-room ranges (the defaults: the issue's test ranges)."""
        return cls(
            level_dbfs=float(rng.uniform(*level_dbfs)),
            snr_db=float(rng.uniform(*snr_db)),
            rt60_s=float(rng.uniform(*rt60_s)),
            drr_db=float(rng.uniform(*drr_db)),
        )


def room_impulse_response(
    spec: FarFieldSpec, rng: np.random.Generator, rate_hz: int = SAMPLE_RATE_HZ
) -> np.ndarray:
    """(taps,) float64: direct impulse at delay_s, then a decaying noise tail of length rt60_s
    whose energy is drr_db below the direct path's (unit) energy."""
    delay = round(spec.delay_s * rate_hz)
    onset = delay + max(1, round(_REVERB_ONSET_S * rate_hz))
    length = round(spec.rt60_s * rate_hz)
    t = np.arange(length) / rate_hz
    tail = rng.standard_normal(length) * np.exp(-0.5 * _LN_MILLION * t / spec.rt60_s)
    tail *= np.sqrt(10 ** (-spec.drr_db / 10) / np.sum(tail**2))
    rir = np.zeros(onset + length)
    rir[delay] = 1.0
    rir[onset:] += tail
    return rir


def pink_noise(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """(num_samples,) float64 noise with a 1/f power spectrum, unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    frequency = np.arange(spectrum.size, dtype=np.float64)
    spectrum /= np.sqrt(np.maximum(frequency, 1.0))
    noise = np.fft.irfft(spectrum, n=num_samples)
    return noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)


def far_field_mix(
    tracks: Mapping[str, np.ndarray] | np.ndarray,
    spec: FarFieldSpec,
    rng: np.random.Generator,
    rate_hz: int = SAMPLE_RATE_HZ,
) -> np.ndarray:
    """Close-talk speaker tracks (equal-length 1-D arrays, one per speaker; or one array) ->
    one mono far-field recording (samples,) float32, as long as the tracks.

    Each track is convolved with its own room impulse response (the reverberant tail past the
    end is cut), the sum is scaled to spec.level_dbfs RMS, and pink noise spec.snr_db below that
    level is added. Raises ValueError on silent or mismatched tracks.
    """
    arrays = (
        [np.asarray(tracks, np.float64)]
        if isinstance(tracks, np.ndarray)
        else [np.asarray(track, np.float64) for track in tracks.values()]
    )
    if not arrays or any(a.ndim != 1 or a.shape != arrays[0].shape for a in arrays):
        raise ValueError("far_field_mix needs equal-length 1-D tracks")
    n = arrays[0].size
    mix = np.zeros(n)
    for track in arrays:
        mix += fftconvolve(track, room_impulse_response(spec, rng, rate_hz))[:n]
    rms = float(np.sqrt(np.mean(mix**2)))
    if rms == 0.0:
        raise ValueError("cannot render silent tracks far-field")
    mix *= 10 ** (spec.level_dbfs / 20) / rms
    noise_rms = 10 ** ((spec.level_dbfs - spec.snr_db) / 20)
    mix += noise_rms * pink_noise(n, rng)
    return np.clip(mix, -1.0, 1.0).astype(np.float32)
