"""The model's input batch, and the collator that builds it from decoded shard samples.

A decoded shard sample (see README "For trainers") is a dict with `json` (the metadata dict),
`audio` (float32 (channels, samples) at 16 kHz, or None), `text_tokens`, and, as the stage has
them, `speech_tokens`, `labels` and `assistant_activity` (numpy arrays).

Audio: a stage-4 (duplex) sample's audio is already the user's stream, one channel
(schemas/duplex.py); it is never mixed, and a multi-channel one is refused, since its mix would
give both role samples of one call the same input. Multi-channel audio of other stages (none
today: stage-1..3 specs pick a channel) falls back to a mono mixdown.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

IGNORE = -100


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L) long, padded with 0
    input_lengths: torch.Tensor  # (B,)
    target_start: torch.Tensor  # (B,) text index where the assistant's output starts
    waves: torch.Tensor | None = None  # (B, T) float32 16 kHz
    wave_lengths: torch.Tensor | None = None  # (B,)
    speech_tokens: torch.Tensor | None = None  # (B, M) long, padded with 0
    speech_lengths: torch.Tensor | None = None  # (B,)
    labels: torch.Tensor | None = None  # (B, F) long duplex frame labels, IGNORE padded
    assistant_activity: torch.Tensor | None = None  # (B, F) long 0/1 per label frame, 0 padded
    tasks: tuple[str, ...] | None = None  # (B,) each sample's shard `task`; None if unnamed

    def to(self, device: torch.device | str) -> Batch:
        moved = {
            f.name: (v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v)
            for f in fields(self)
        }
        return Batch(**moved)

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


def _pad(arrays: list[np.ndarray], value: float | int, dtype: torch.dtype) -> torch.Tensor:
    length = max((a.shape[-1] for a in arrays), default=0)
    out = torch.full((len(arrays), length), value, dtype=dtype)
    for i, a in enumerate(arrays):
        out[i, : a.shape[-1]] = torch.as_tensor(a, dtype=dtype)
    return out


def _lengths(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.tensor([a.shape[-1] for a in arrays], dtype=torch.long)


def collate(samples: list[dict[str, Any]]) -> Batch:
    """Decoded shard samples -> one padded Batch (fields a stage lacks stay None)."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    text = [np.asarray(s["text_tokens"], dtype=np.int64) for s in samples]
    batch = Batch(
        input_ids=_pad(text, 0, torch.long),
        input_lengths=_lengths(text),
        target_start=torch.tensor([int(s["json"]["target_start"]) for s in samples]),
    )
    if all(s["json"].get("task") for s in samples):
        batch.tasks = tuple(str(s["json"]["task"]) for s in samples)
    if all(s.get("audio") is not None for s in samples):
        waves = [_one_channel(s) for s in samples]
        batch.waves, batch.wave_lengths = _pad(waves, 0.0, torch.float32), _lengths(waves)
    if all(s.get("speech_tokens") is not None for s in samples):
        codes = [np.asarray(s["speech_tokens"], dtype=np.int64) for s in samples]
        batch.speech_tokens, batch.speech_lengths = _pad(codes, 0, torch.long), _lengths(codes)
    if all(s.get("labels") is not None for s in samples):
        labels = [np.asarray(s["labels"], dtype=np.int64) for s in samples]
        batch.labels = _pad(labels, IGNORE, torch.long)
    if all(s.get("assistant_activity") is not None for s in samples):
        activity = [np.asarray(s["assistant_activity"], dtype=np.int64) for s in samples]
        batch.assistant_activity = _pad(activity, 0, torch.long)
    return batch


def _one_channel(sample: dict[str, Any]) -> np.ndarray:
    """A sample's audio as one channel: a duplex sample's as it is (refused when it has several),
    any other's mixed down."""
    audio = np.asarray(sample["audio"], dtype=np.float32)
    audio = audio.reshape(-1, audio.shape[-1])
    if audio.shape[0] == 1:
        return audio[0]
    if sample["json"].get("stage") == "stage4":
        key = sample.get("key") or sample["json"].get("key")
        raise ValueError(
            f"duplex sample {key}: {audio.shape[0]}-channel audio; stage 4 takes the user's "
            "channel only (shards built before the user's stream: rebuild stage 4)"
        )
    return audio.mean(axis=0)
