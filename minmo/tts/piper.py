"""Piper (VITS exported to ONNX, `piper-tts` package) as a `TtsBackend`: neural voices on CPU.

Owns: loading each voice model once (cached per path), mapping style to Piper's synthesis
settings, and concatenating its per-sentence chunks into float32 mono at the model's rate (from
the voice's JSON config, usually 22050 Hz). Must not: download voices (none can be fetched where
the corpus is built: install them beside the job), resample, or raise for one bad request.

Voice: `Voice.engine_voice` is a local `.onnx` path, with its config at `<path>.json`; else
`model_paths[Voice.language]` (or `model_paths[Voice.voice_id]`) from the constructor.
A "#<n>" suffix on the path picks speaker n of a multi-speaker model.

Style mapping: speaking_rate r -> length_scale = model default / r (phoneme durations);
pitch is not controllable in Piper and is ignored; emotion and dialect are ignored (a Piper
model is one speaker in one accent: pick a different model path for a dialect); amplitude from
an emotion is not applied either. Counts of ignored fields are in `ignored_style`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from minmo.tts.base import Synthesized, TtsFailure, TtsRequest

TTS_FAILED = "tts_failed"  # schemas.quarantine.ReasonCode.TTS_FAILED
INSTALL_HINT = "install it: pip install 'piper-tts>=1.3'"
MIN_RATE, MAX_RATE = 0.25, 4.0


class PiperBackend:
    """One instance per Ray actor; voices load on first use and stay loaded."""

    name = "piper"

    def __init__(self, model_paths: dict[str, str] | None = None, use_cuda: bool = False) -> None:
        self.model_paths = dict(model_paths or {})
        self.use_cuda = use_cuda
        self._voices: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.ignored_style: dict[str, int] = {"pitch": 0, "emotion": 0, "dialect": 0}

    def synthesize(self, requests: Sequence[TtsRequest]) -> list[Synthesized | TtsFailure]:
        return [self._one(r) for r in requests]

    def _model_path(self, request: TtsRequest) -> str | None:
        voice = request.voice
        return (
            voice.engine_voice
            or self.model_paths.get(voice.voice_id)
            or self.model_paths.get(voice.language)
        )

    def _load(self, model_path: str) -> Any:
        with self._lock:
            if model_path in self._voices:
                return self._voices[model_path]
        try:
            from piper import PiperVoice
        except ImportError as exc:
            raise RuntimeError(f"piper-tts is not installed; {INSTALL_HINT}") from exc
        if not os.path.isfile(model_path):
            raise RuntimeError(f"piper model {model_path!r} not found (no voices are downloaded)")
        config_path = model_path + ".json"
        if not os.path.isfile(config_path):
            raise RuntimeError(f"piper config {config_path!r} not found beside the model")
        voice = PiperVoice.load(model_path, config_path=config_path, use_cuda=self.use_cuda)
        with self._lock:
            self._voices[model_path] = voice
        return voice

    def _one(self, request: TtsRequest) -> Synthesized | TtsFailure:
        if not request.text.strip():
            return TtsFailure(TTS_FAILED, f"{request.key}: empty text")
        spec = self._model_path(request)
        if not spec:
            return TtsFailure(
                TTS_FAILED,
                f"{request.key}: no piper model: set Voice.engine_voice to a .onnx path or pass "
                f"model_paths={{{request.voice.language!r}: path}}",
            )
        model_path, _, speaker = spec.partition("#")
        try:
            voice = self._load(model_path)
            from piper import SynthesisConfig

            style = request.style
            for name in self.ignored_style:
                if getattr(style, name) not in (None, 1.0):
                    with self._lock:
                        self.ignored_style[name] += 1
            rate = float(np.clip(style.speaking_rate or 1.0, MIN_RATE, MAX_RATE))
            config = SynthesisConfig(
                speaker_id=int(speaker) if speaker else None,
                length_scale=voice.config.length_scale / rate,
            )
            chunks = [c.audio_float_array for c in voice.synthesize(request.text, config)]
            rate_hz = int(voice.config.sample_rate)
        except Exception as exc:  # one bad request must not sink the batch
            return TtsFailure(TTS_FAILED, f"{request.key}: piper {model_path!r}: {exc}")
        if not chunks:
            return TtsFailure(TTS_FAILED, f"{request.key}: piper produced no audio")
        samples = np.concatenate(chunks).astype(np.float32, copy=False)
        if len(samples) == 0:
            return TtsFailure(TTS_FAILED, f"{request.key}: piper produced no audio")
        return Synthesized(samples=np.clip(samples, -1.0, 1.0), sample_rate_hz=rate_hz)
