"""What a source layout reader hands to ingest: one `SourceItem` per audio file to decode.

Owns: the plain-data types passed from the layout readers (sources.py) into the Ray Data
stages, and their conversion to/from Ray rows (dicts of Python scalars and lists).
Must not: read audio or touch the filesystem.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Supervision:
    """A stretch of the source's audio that the source itself describes (Kaldi segment, Lhotse
    supervision, or a whole transcribed file). `end_s=None` means "to the end of the audio";
    `channel=None` means every kept channel (mono sources: channel 0)."""

    start_s: float
    end_s: float | None = None
    channel: int | None = None
    text: str | None = None
    speaker: str | None = None
    language: str | None = None
    item_key: str | None = None  # utterance id in the source, for quarantine rows


@dataclass
class SourceItem:
    """One audio file (URI) to ingest, with whatever metadata its layout gave.

    `source_uri` is the canonical URI of the audio: an absolute local path or an object-store
    URI such as `s3://bucket/key.flac`. `task` is free text from the source (e.g. "asr").
    """

    source_uri: str
    corpus: str
    item_key: str | None = None
    text: str | None = None
    language: str | None = None
    speaker: str | None = None
    task: str | None = None
    supervisions: list[Supervision] = field(default_factory=list)

    def to_row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SourceItem:
        data = dict(row)
        sups = data.pop("supervisions", None) or []
        supervisions = [s if isinstance(s, Supervision) else Supervision(**dict(s)) for s in sups]
        return cls(**data, supervisions=supervisions)


def quarantine_row(
    source_uri: str,
    reason_code: str,
    detail: str,
    step: str = "ingest",
    item_key: str | None = None,
) -> dict[str, Any]:
    """A row of the quarantine table (schemas.quarantine.QUARANTINE)."""
    return {
        "source_uri": source_uri,
        "step": step,
        "reason_code": reason_code,
        "detail": detail,
        "item_key": item_key,
    }
