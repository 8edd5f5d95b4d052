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
    `source_key` is what identifies the audio wherever the corpus is mounted (see `source_key`);
    the layout readers' `settle` sets it, and `key` falls back to the URI when no reader did.
    """

    source_uri: str
    corpus: str
    item_key: str | None = None
    text: str | None = None
    language: str | None = None
    speaker: str | None = None
    task: str | None = None
    supervisions: list[Supervision] = field(default_factory=list)
    source_key: str | None = None

    @property
    def key(self) -> str:
        """The relocatable identity of this item's audio (recording ids and resume key on it)."""
        return self.source_key or source_key(self.corpus, None, self.source_uri)

    def to_row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SourceItem:
        data = dict(row)
        sups = data.pop("supervisions", None) or []
        supervisions = [s if isinstance(s, Supervision) else Supervision(**dict(s)) for s in sups]
        return cls(**data, supervisions=supervisions)


def source_key(corpus: str, root: str | None, uri: str) -> str:
    """`corpus:relative/path`: the audio's identity, independent of where the corpus is mounted.

    `root` is the listed source's root (the directory, or the directory of the listing file);
    a URI below it keys on its path relative to the root, so the same corpus re-mounted
    elsewhere, or copied from local disk to an object store, keeps its keys. A URI outside the
    root (a manifest pointing anywhere) keys on the whole URI: nothing else names it."""
    base = (root or "").rstrip("/")
    if base and uri.startswith(base + "/"):
        return f"{corpus}:{uri[len(base) + 1 :]}"
    return f"{corpus}:{uri}"
