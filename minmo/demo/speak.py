"""Text to audio for the demo corpus: each distinct phrase spoken once by espeak-ng.

Owns how a phrase in a demo voice becomes a float32 clip at espeak's rate, and the corpus's
failure message when espeak-ng is missing. The espeak-ng command line and WAV decoding are the
TTS backend's (`minmo.tts.espeak`); trimming and pauses are `minmo.audio.trim`'s. It must not
decide what is said (`script.py`) or where a clip is placed (`conversation.py`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from minmo.demo.script import Voice
from minmo.tts.espeak import INSTALL_HINT, EspeakArgs, decode_piped_wav, run_espeak


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

    Through the TTS backend's command line (`minmo.tts.espeak.run_espeak`) with no amplitude
    flag: the corpus was built with espeak-ng's default amplitude, and its audio must not change.
    """
    args = EspeakArgs(voice=voice.espeak_voice, rate_wpm=voice.rate_wpm, pitch=voice.pitch)
    proc = run_espeak(exe or espeak_binary(), args, text)
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
    try:
        return decode_piped_wav(data)
    except ValueError as exc:
        raise EspeakError(f"espeak-ng: {exc}") from exc


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
