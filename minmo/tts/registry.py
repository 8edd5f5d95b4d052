"""Backend names -> constructors, so job specs can say `tts: {backend: espeak, ...}`.

Owns only the mapping; each backend validates its own options. Imports are lazy so that choosing
espeak never imports piper or opens a socket.
"""

from __future__ import annotations

import difflib
from typing import Any

from minmo.tts.base import TtsBackend

BACKENDS = ("espeak", "piper", "http")


def make_backend(name: str, **options: Any) -> TtsBackend:
    """Build the backend called `name` with its constructor options.

    espeak: default_rate_wpm, default_pitch, default_amplitude, workers, timeout_s, exe.
    piper: model_paths, use_cuda.
    http: base_url (required), api, max_in_flight, retries, backoff_s, timeout_s,
    sample_rate_hz, use_instruct, default_spk_id.
    """
    if name == "espeak":
        from minmo.tts.espeak import EspeakBackend

        return EspeakBackend(**options)
    if name == "piper":
        from minmo.tts.piper import PiperBackend

        return PiperBackend(**options)
    if name == "http":
        from minmo.tts.http import HttpTtsBackend

        return HttpTtsBackend(**options)
    near = difflib.get_close_matches(name, BACKENDS, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ValueError(f"unknown TTS backend {name!r}: use one of {BACKENDS}{hint}")
