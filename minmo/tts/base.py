"""The one interface every TTS backend implements, and the style vocabulary they share.

A backend is built once per Ray actor and called with batches of `TtsRequest`s; it returns, per
request, either `Synthesized` audio or a `TtsFailure` (a reason the step quarantines). Backends
never raise for one bad request: a batch always comes back whole, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Style:
    """How a line is to be spoken. Every field is optional; None means the voice's default.

    speaking_rate: multiplier of the normal rate (1.0 normal, 1.3 fast, 0.8 slow).
    pitch: multiplier of the voice's normal pitch (1.0 normal).
    emotion: a word such as "happy", "sad", "angry", "calm", "excited" (backends map it to
    rate/pitch/volume, or pass it to an instruct model).
    dialect: a language/accent tag such as "en-gb" or "es-419" (backends that can, switch voice).
    instruction: the original free-text instruction, for instruct-capable models.
    """

    speaking_rate: float | None = None
    pitch: float | None = None
    emotion: str | None = None
    dialect: str | None = None
    instruction: str | None = None


@dataclass(frozen=True)
class Voice:
    """Who speaks. `engine_voice` is backend specific: an espeak-ng voice name ("en-us+m3"), a
    piper model path, or a server-side speaker id. Zero-shot backends use `prompt_wav` (a local
    path or URI of a short clip of the target speaker) with its `prompt_text`."""

    voice_id: str
    language: str
    engine_voice: str | None = None
    prompt_wav: str | None = None
    prompt_text: str | None = None


@dataclass(frozen=True)
class TtsRequest:
    key: str  # stable id of the line, e.g. "<dialogue_id>-t003"; used for seeding and logs
    text: str
    voice: Voice
    style: Style = Style()


@dataclass(frozen=True)
class Synthesized:
    samples: np.ndarray  # float32 mono, in [-1, 1]
    sample_rate_hz: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate_hz


@dataclass(frozen=True)
class TtsFailure:
    """A request that could not be synthesised; `reason` is a quarantine ReasonCode value."""

    reason: str
    detail: str


class TtsBackend(Protocol):
    name: str

    def synthesize(self, requests: Sequence[TtsRequest]) -> list[Synthesized | TtsFailure]: ...
