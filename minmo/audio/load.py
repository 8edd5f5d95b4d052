"""Read a recording's audio from its `source_uri`: one file, or one file per channel, stacked.

Owns: turning a source URI (minmo/io/channel_uri.py) into one `DecodedAudio`, and the rule for
multi-source recordings: every channel file decodes on its own; they must share one sample
rate, and their lengths may differ by at most a tolerance; shorter files are padded with
silence to the longest (nothing a channel holds is cut). Ingest (with the tolerance) and every
later reader of source audio (pipelines/audio_source.py, without it: ingest already vetted the
files) go through `load_source`, so all of them see the same samples.

Must not: resample, fold or measure (callers do, as for a single file).

Why pad, not trim: two-track call exports and telephone corpora differ by a few milliseconds
of codec padding at the end; padding keeps every sample of the longer side, and the padded
tail is silence either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from minmo.audio.decode import DecodedAudio, DecodeError, container_of, decode_audio
from minmo.io.channel_uri import channel_uris, is_multi_source
from minmo.io.fs import read_source
from schemas.quarantine import ReasonCode, Rejected


@dataclass
class LoadedSource:
    """A recording's decoded audio and what reading it took."""

    audio: DecodedAudio
    """(channels, frames): the files' channels in order, padded to the longest file."""
    bytes: int
    """Stored bytes of all its files."""
    padded: dict[str, float]
    """Channel file URI -> seconds of silence appended to it (only files that were padded)."""


def load_source(
    uri: str, storage_options: dict[str, Any], tolerance_s: float | None = None
) -> LoadedSource:
    """Read and decode the recording at `uri`.

    Raises `Rejected` (missing or unreadable file, an empty file, or, for a multi-source
    recording, sample rates that differ or lengths that differ by more than `tolerance_s`:
    `channel_length_mismatch`) and `DecodeError` (bytes no decoder reads; a multi-source
    recording's error names the file). `tolerance_s=None` stacks whatever lengths it finds."""
    if not is_multi_source(uri):
        data = _read(uri, storage_options, "the file")
        return LoadedSource(decode_audio(data, container_of(uri)), len(data), {})
    parts: list[DecodedAudio] = []
    total = 0
    for part in channel_uris(uri):
        data = _read(part, storage_options, f"channel file {part}")
        total += len(data)
        try:
            parts.append(decode_audio(data, container_of(part)))
        except DecodeError as exc:
            raise DecodeError(f"channel file {part}: {exc}") from exc
    audio, padded = stack_channels(channel_uris(uri), parts, tolerance_s)
    return LoadedSource(audio, total, padded)


def stack_channels(
    names: list[str], parts: list[DecodedAudio], tolerance_s: float | None = None
) -> tuple[DecodedAudio, dict[str, float]]:
    """One recording of `parts` (named `names` in refusals), their channels in order, padded to
    the longest; and the seconds each padded part gained. See `load_source` for the refusals."""
    rates = {p.sample_rate_hz for p in parts}
    if len(rates) > 1:
        listed = ", ".join(f"{n} {p.sample_rate_hz} Hz" for n, p in zip(names, parts, strict=True))
        raise Rejected(
            ReasonCode.CHANNEL_LENGTH_MISMATCH, f"channel files differ in sample rate: {listed}"
        )
    frames = max(p.frames for p in parts)
    rate = parts[0].sample_rate_hz
    spread_s = (frames - min(p.frames for p in parts)) / rate
    if tolerance_s is not None and spread_s > tolerance_s:
        listed = ", ".join(f"{n} {p.duration_s:.3f} s" for n, p in zip(names, parts, strict=True))
        raise Rejected(
            ReasonCode.CHANNEL_LENGTH_MISMATCH,
            f"channel files differ in length by {spread_s:.3f} s (tolerance {tolerance_s} s): "
            f"{listed}",
        )
    padded = {n: (frames - p.frames) / rate for n, p in zip(names, parts, strict=True)}
    samples = np.concatenate(
        [np.pad(p.samples, ((0, 0), (0, frames - p.frames))) for p in parts], axis=0
    )
    bits = {p.bits for p in parts}
    containers = list(dict.fromkeys(p.container for p in parts))
    audio = DecodedAudio(
        samples=np.ascontiguousarray(samples, dtype=np.float32),
        sample_rate_hz=rate,
        container="+".join(containers),
        bits=bits.pop() if len(bits) == 1 else None,
    )
    return audio, {n: s for n, s in padded.items() if s > 0}


def _read(uri: str, storage_options: dict[str, Any], what: str) -> bytes:
    data = read_source(uri, storage_options)
    if not data:
        raise Rejected(ReasonCode.EMPTY_AUDIO, f"{what} is 0 bytes long")
    return data
