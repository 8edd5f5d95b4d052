"""Text to audio for the demo corpus: espeak-ng calls, WAV decoding, resampling, energy trimming.

Owns how a phrase becomes a float32 clip and where speech sits inside a clip (trim, pauses). It
must not decide what is said (`script.py`) or where a clip is placed (`conversation.py`).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soxr

from minmo.demo.script import Voice

FRAME_S = 0.010  # energy frames for trimming and pause finding
SILENCE_DB = -40.0  # frames this far below the clip's loudest frame count as silence
ABS_FLOOR = 1e-4  # ... and anything below this RMS is silence whatever the clip's level
# Pauses use a stricter threshold: espeak-ng lets pitch and formants decay across a comma, which
# sits above SILENCE_DB for long enough to hide the pause.
PAUSE_DB = -30.0

INSTALL_HINT = "install it: apt-get install espeak-ng"


class EspeakError(RuntimeError):
    """espeak-ng is missing or failed; the message says which and how to fix it."""


def espeak_binary() -> str:
    """Path of espeak-ng, or a clear error: the demo corpus cannot be built without it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise EspeakError(f"espeak-ng was not found on PATH; {INSTALL_HINT}")
    return exe


def synthesize(text: str, voice: Voice, exe: str | None = None) -> tuple[np.ndarray, int]:
    """Speak `text` with `voice`; returns mono float32 samples and their rate (22050 Hz).

    Text goes through stdin as UTF-8 (`-b 1`) so neither the shell locale nor a leading dash
    in the text can change what is spoken.
    """
    cmd = [
        exe or espeak_binary(),
        "-v",
        voice.espeak_voice,
        "-s",
        str(voice.rate_wpm),
        "-p",
        str(voice.pitch),
        "-b",
        "1",
        "--stdin",
        "--stdout",
    ]
    proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, check=False)
    if proc.returncode != 0 or len(proc.stdout) <= 44:
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise EspeakError(
            f"espeak-ng failed for voice {voice.espeak_voice!r} (rc={proc.returncode}): {err}; "
            f"check `espeak-ng --voices` lists it, or {INSTALL_HINT}"
        )
    return decode_streamed_wav(proc.stdout)


def decode_streamed_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode a WAV espeak-ng wrote to a pipe (placeholder sizes patched, see
    `minmo.tts.espeak.decode_piped_wav`), as this module's EspeakError on bad output."""
    from minmo.tts.espeak import decode_piped_wav

    try:
        return decode_piped_wav(data)
    except ValueError as exc:
        raise EspeakError(f"espeak-ng: {exc}") from exc


def resample(audio: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Band-limited resampling; soxr is deterministic, which the byte-identical rebuild needs."""
    if from_hz == to_hz:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio, from_hz, to_hz, quality="HQ").astype(np.float32, copy=False)


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


SpeakRequest = tuple[str, Voice]


def synthesize_many(
    requests: Sequence[SpeakRequest],
    workers: int = 2,
    on_done: Callable[[], None] | None = None,
) -> dict[SpeakRequest, tuple[np.ndarray, int]]:
    """Synthesize each distinct (text, voice) once, on a small thread pool.

    espeak-ng runs as a subprocess, so threads give real parallelism; results are keyed by
    request, so completion order cannot change any output byte.
    """
    exe = espeak_binary()
    unique = list(dict.fromkeys(requests))

    def run(req: SpeakRequest) -> tuple[np.ndarray, int]:
        out = synthesize(req[0], req[1], exe)
        if on_done is not None:
            on_done()
        return out

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(run, unique))
    return dict(zip(unique, results, strict=True))
