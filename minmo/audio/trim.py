"""Where speech sits inside a clip, by frame energy: trim the silence around it, find its pauses.

Owns the energy rule (10 ms frames, relative to the clip's loudest frame, with an absolute floor)
used wherever synthesised speech is placed: the demo corpus places espeak-ng clips with it, the
synthesize step trims its turns and back-channels with it. Must not: decode, resample or
synthesise (callers bring float32 mono samples and their rate).
"""

from __future__ import annotations

import numpy as np

FRAME_S = 0.010  # energy frames for trimming and pause finding
SILENCE_DB = -40.0  # frames this far below the clip's loudest frame count as silence
ABS_FLOOR = 1e-4  # ... and anything below this RMS is silence whatever the clip's level
# Pauses use a stricter threshold: espeak-ng lets pitch and formants decay across a comma, which
# sits above SILENCE_DB for long enough to hide the pause.
PAUSE_DB = -30.0


def frame_length(rate_hz: int) -> int:
    return max(1, round(rate_hz * FRAME_S))


def frame_rms(audio: np.ndarray, rate_hz: int) -> np.ndarray:
    """RMS per FRAME_S frame; a trailing partial frame is zero-padded."""
    n = frame_length(rate_hz)
    padded = np.pad(audio, (0, (-len(audio)) % n))
    frames = padded.reshape(-1, n).astype(np.float64)
    return np.sqrt(np.mean(frames * frames, axis=1))


def voiced_frames(audio: np.ndarray, rate_hz: int, silence_db: float = SILENCE_DB) -> np.ndarray:
    """Boolean mask of frames that hold speech energy (relative to the clip's loudest frame)."""
    rms = frame_rms(audio, rate_hz)
    if len(rms) == 0:
        return np.zeros(0, dtype=bool)
    threshold = max(float(rms.max()) * 10 ** (silence_db / 20), ABS_FLOOR)
    return rms > threshold


def trim_silence(audio: np.ndarray, rate_hz: int, silence_db: float = SILENCE_DB) -> np.ndarray:
    """Cut leading and trailing silence at frame resolution.

    Done before a clip is placed so that reference turn boundaries sit where speech is, not
    where the synthesiser's padding happens to end. The result is a whole number of frames.
    """
    voiced = np.flatnonzero(voiced_frames(audio, rate_hz, silence_db))
    if len(voiced) == 0:
        raise ValueError("clip holds no speech above the silence threshold")
    n = frame_length(rate_hz)
    padded = np.pad(audio, (0, (-len(audio)) % n))
    return padded[voiced[0] * n : (voiced[-1] + 1) * n].astype(np.float32, copy=False)


def pauses(
    audio: np.ndarray, rate_hz: int, min_pause_s: float = 0.08, silence_db: float = PAUSE_DB
) -> list[int]:
    """Sample indices where internal silences of at least `min_pause_s` start.

    Used to cut an interrupted speaker at a phrase boundary, so the words spoken before the
    cut are known exactly. Leading and trailing silence are not internal and never reported.
    """
    voiced = voiced_frames(audio, rate_hz, silence_db)
    n = frame_length(rate_hz)
    min_frames = max(1, round(min_pause_s / FRAME_S))
    starts: list[int] = []
    run_start = -1
    seen_voice = False
    for i, is_voiced in enumerate(voiced):
        if is_voiced:
            if run_start >= 0 and i - run_start >= min_frames:
                starts.append(run_start * n)
            run_start = -1
            seen_voice = True
        elif seen_voice and run_start < 0:
            run_start = i
    return starts
