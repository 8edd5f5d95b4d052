"""The sample spec: one training example described by reference, before audio and tokens exist.

Owns the spec's layout and its key. A spec is a plain JSON-able dict so that it can travel
through Ray Data as one string column:

    key            shard key: "<task>-<24 hex>", ASCII, no dots (webdataset splits at the first dot)
    stage, task, language
    messages       ChatML; the user's audio sits where SPEECH_PLACEHOLDER is
    input_audio    AudioRef or None: the audio the model hears (-> <key>.flac)
    target_speech  AudioRef or None: the speech the model says (-> <key>.speech_tokens.npy)
    labels         list[int] or None: duplex frame labels (-> <key>.labels.npy)
    assistant_activity  list[int] (0/1) or None: per label frame, the assistant side talks
                   (-> <key>.assistant_activity.npy; stage 4, schemas/duplex.py)
    meta           provenance (recording / segment / sample ids, source keys, corpus) and
                   task fields (hotwords, translation language, instruction, label hop)
"""

from __future__ import annotations

import hashlib
from typing import Any, TypedDict

from schemas.units import SAMPLE_RATE_HZ


class AudioRef(TypedDict):
    """A span of one source file: which channel (None = mix all channels) from start to end."""

    uri: str
    channels: int  # channels the recording has after ingest (dual mono folded)
    channel: int | None
    start_s: float
    end_s: float


def audio_ref(
    uri: str, channels: int, channel: int | None, start_s: float, end_s: float
) -> AudioRef:
    return {
        "uri": uri,
        "channels": int(channels),
        "channel": None if channel is None else int(channel),
        "start_s": round(float(start_s), 3),
        "end_s": round(float(end_s), 3),
    }


def sample_key(task: str, source_id: str) -> str:
    """Stable, unique per (task, source): the same input always gets the same key."""
    digest = hashlib.sha256(f"{task}\0{source_id}".encode()).hexdigest()[:24]
    return f"{task}-{digest}"


def make_spec(
    *,
    stage: str,
    task: str,
    source_id: str,
    language: str | None,
    messages: list[dict[str, str]],
    meta: dict[str, Any],
    input_audio: AudioRef | None = None,
    target_speech: AudioRef | None = None,
    labels: list[int] | None = None,
    assistant_activity: list[int] | None = None,
) -> dict[str, Any]:
    return {
        "key": sample_key(task, source_id),
        "stage": stage,
        "task": task,
        "language": language,
        "messages": messages,
        "input_audio": input_audio,
        "target_speech": target_speech,
        "labels": labels,
        "assistant_activity": assistant_activity,
        "meta": meta,
    }


def span_s(ref: AudioRef | None) -> float:
    return 0.0 if ref is None else max(0.0, ref["end_s"] - ref["start_s"])


def estimated_bytes(spec: dict[str, Any]) -> int:
    """Bytes the sample will take in a tar, before any audio is read (plans shard sizes).

    16-bit FLAC of speech runs at about 60 % of PCM (19 kB/s at 16 kHz); tokens are int32 npy.
    """
    audio = span_s(spec["input_audio"]) * SAMPLE_RATE_HZ * 2 * 0.6
    speech_tokens = span_s(spec["target_speech"]) * 25 * 4
    labels = len(spec["labels"] or []) + len(spec.get("assistant_activity") or [])
    text = sum(len(m["content"]) for m in spec["messages"]) * 2
    members = 2 + (spec["input_audio"] is not None) + (spec["target_speech"] is not None)
    members += spec.get("assistant_activity") is not None
    return int(audio + speech_tokens + labels + text + 1024 * members)
