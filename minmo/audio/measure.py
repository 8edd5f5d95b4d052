"""Level, clipping, identity and SNR measurements of decoded audio.

Owns: numbers that describe how a recording sounds, computed from samples alone (the speech
probabilities needed for SNR come in from the caller). Must not: decode or run models.
"""

from __future__ import annotations

import hashlib

import numpy as np

# |x| at or above this is treated as clipped: the top code of 16-bit PCM is 32767/32768.
CLIP_LEVEL = 32766 / 32768
# Digital silence would make SNR infinite; noise power is floored at -100 dBFS, capping SNR.
NOISE_FLOOR_POWER = 1e-10
# Channels whose difference is this far below the louder channel are one voice recorded twice
# (dual mono, e.g. jfk.flac at -31.5 dB); one speaker per channel measures around +2 dB.
DUAL_MONO_DIFFERENCE_DB = -25.0


def dbfs(power_or_amplitude: float, *, power: bool) -> float:
    """Decibels relative to full scale; -inf for exact zero is returned as -200 dB."""
    value = max(float(power_or_amplitude), 1e-20)
    return (10.0 if power else 20.0) * float(np.log10(value))


def peak_dbfs(samples: np.ndarray) -> float:
    return dbfs(float(np.max(np.abs(samples))) if samples.size else 0.0, power=False)


def rms_dbfs(samples: np.ndarray) -> float:
    power = float(np.mean(np.square(samples, dtype=np.float64))) if samples.size else 0.0
    return dbfs(power, power=True)


def clipping_ratio(samples: np.ndarray) -> float:
    """Share of samples at full scale: more than ~1e-4 usually means audible distortion."""
    return (
        float(np.count_nonzero(np.abs(samples) >= CLIP_LEVEL) / samples.size)
        if samples.size
        else 0.0
    )


def has_non_finite(samples: np.ndarray) -> bool:
    return not bool(np.isfinite(samples).all())


def content_sha1(samples: np.ndarray, sample_rate_hz: int) -> str:
    """Hash of the decoded PCM and its rate, so the same sound in another container (wav vs
    flac) is recognised as a duplicate, while a re-encode with different samples is not."""
    digest = hashlib.sha1(str(sample_rate_hz).encode())
    digest.update(np.ascontiguousarray(samples, dtype="<f4").tobytes())
    return digest.hexdigest()


def fold_dual_mono(samples: np.ndarray) -> np.ndarray:
    """(C, T) -> (1, T) mean of channels when every channel repeats channel 0 (a "stereo" file of
    one voice); real multi-channel audio (one speaker per channel) is kept as it is."""
    if samples.shape[0] < 2:
        return samples
    first = samples[0].astype(np.float64)
    for c in range(1, samples.shape[0]):
        other = samples[c].astype(np.float64)
        loudest = max(np.mean(first**2), np.mean(other**2))
        difference = np.mean((first - other) ** 2)
        if loudest > 0 and difference > loudest * 10 ** (DUAL_MONO_DIFFERENCE_DB / 10):
            return samples
    return samples.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)


def frame_powers(channel: np.ndarray, frame_samples: int) -> np.ndarray:
    """Mean power per frame of `frame_samples` (last partial frame zero-padded), float64.

    One pass over the samples with float64 accumulation and no padded copy: every VAD call
    runs this on whole recordings (`minmo.audio.vad.vad_gain`), so it must cost little next to
    the VAD itself.
    """
    samples = np.asarray(channel)
    n_full, rest = divmod(samples.size, frame_samples)
    full = samples[: n_full * frame_samples].reshape(n_full, frame_samples)
    powers = np.einsum("ij,ij->i", full, full, dtype=np.float64)
    if rest:
        tail = samples[n_full * frame_samples :].astype(np.float64)
        powers = np.append(powers, tail @ tail)
    return powers / frame_samples


def snr_db(powers: np.ndarray, is_speech: np.ndarray) -> float | None:
    """SNR estimate from frame powers split by a VAD: (speech power - noise power) / noise power.

    None when the audio has no speech frames or no pause frames to measure noise in; that is
    an honest "unknown", not a number made up from percentiles.
    """
    if powers.size == 0 or not is_speech.any() or is_speech.all():
        return None
    noise = max(float(np.mean(powers[~is_speech])), NOISE_FLOOR_POWER)
    speech = float(np.mean(powers[is_speech]))
    signal = max(speech - noise, NOISE_FLOOR_POWER)
    return 10.0 * float(np.log10(signal / noise))
