"""Backend names -> constructors, so job specs can say `tts: {backend: espeak, ...}`.

Owns only the mapping; each backend validates its own options. Adding a backend is one module
(a `TtsBackend`) and one `BACKENDS` line.

The backend modules are imported here, at the top: each is light (standard library, numpy,
soundfile) and imports its own heavy optional dependency only when built (piper's voice
runtime, in minmo/tts/piper.py), so choosing espeak still never loads piper or opens a socket.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from minmo.tts.base import TtsBackend
from minmo.tts.espeak import EspeakBackend
from minmo.tts.http import HttpTtsBackend
from minmo.tts.piper import PiperBackend

BACKENDS: dict[str, Callable[..., TtsBackend]] = {
    "espeak": EspeakBackend,
    "piper": PiperBackend,
    "http": HttpTtsBackend,
}
"""Every TTS backend by name; the value takes the backend's options as keyword arguments."""


def make_backend(name: str, **options: Any) -> TtsBackend:
    """Build the backend called `name` with its constructor options.

    espeak: default_rate_wpm, default_pitch, default_amplitude, workers, timeout_s, exe.
    piper: model_paths, use_cuda.
    http: base_url (required), api, max_in_flight, retries, backoff_s, timeout_s,
    sample_rate_hz, use_instruct, default_spk_id.
    """
    if name not in BACKENDS:
        near = difflib.get_close_matches(name, BACKENDS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown TTS backend {name!r}: use one of {tuple(BACKENDS)}{hint}")
    return BACKENDS[name](**options)
