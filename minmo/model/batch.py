"""The model's input batch, and the collator that builds it from decoded shard samples.

A decoded shard sample (see README "For trainers") is a dict with `json` (the metadata dict),
`audio` (float32 (channels, samples) at 16 kHz, or None), `text_tokens`, and, as the stage has
them, `speech_tokens` and `labels` (numpy arrays). Multi-channel audio (stage-4 calls) is mixed
down to mono: the predictor hears both sides, as it would hear itself plus the user in a call.
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
    if all(s.get("audio") is not None for s in samples):
        waves = [
            np.asarray(s["audio"], dtype=np.float32)
            .reshape(-1, np.shape(s["audio"])[-1])
            .mean(axis=0)
            for s in samples
        ]
        batch.waves, batch.wave_lengths = _pad(waves, 0.0, torch.float32), _lengths(waves)
    if all(s.get("speech_tokens") is not None for s in samples):
        codes = [np.asarray(s["speech_tokens"], dtype=np.int64) for s in samples]
        batch.speech_tokens, batch.speech_lengths = _pad(codes, 0, torch.long), _lengths(codes)
    if all(s.get("labels") is not None for s in samples):
        labels = [np.asarray(s["labels"], dtype=np.int64) for s in samples]
        batch.labels = _pad(labels, IGNORE, torch.long)
    return batch
