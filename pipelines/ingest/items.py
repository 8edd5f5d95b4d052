"""What a source layout reader hands to ingest: one `SourceItem` per audio file to decode.

Owns: the plain-data types passed from the layout readers (sources.py) into the Ray Data
stages, and their conversion to/from Ray rows (dicts of Python scalars and lists), and how a
segment's label cells are layered from its supervision and its recording (`label_cells`).
Must not: read audio or touch the filesystem, or parse label values (the readers do, through
schemas.labels, before anything reaches these types).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from minmo.io.channel_uri import map_channels
from schemas.labels import LABEL_NAMES

Labels = dict[str, Any]
"""Normalised label values by schemas.labels LABEL_NAMES (absent: no label). JSON-safe: str,
int, list of str, list of {language, text}, exactly as the parsers return them."""


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
    labels: Labels = field(default_factory=dict)  # this stretch's own labels


@dataclass
class LabelProblem:
    """A label value the source gave that its parser refused. The reader records it on the
    item instead of yielding a quarantine row of its own, so the `bad_label` row is written by
    the same unit (and under the same source key) as the recording, which is still ingested
    without that label: a separate listing row could land in an earlier unit and make resume
    take the recording for already committed."""

    item_key: str | None
    detail: str  # `<file>#line N: <column>: <why>`, naming the value


@dataclass
class SourceItem:
    """One recording to ingest (an audio file, or one file per channel), with whatever metadata
    its layout gave.

    `source_uri` is the canonical URI of the audio: an absolute local path or an object-store
    URI such as `s3://bucket/key.flac`, or for a recording stored one file per channel the
    `channels:[...]` form of minmo/io/channel_uri.py. `task` is free text from the source (e.g. "asr").
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
    labels: Labels = field(default_factory=dict)
    """The whole file's labels: every segment of the file inherits them (see `label_cells`)."""
    label_problems: list[LabelProblem] = field(default_factory=list)

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
        problems = [
            p if isinstance(p, LabelProblem) else LabelProblem(**dict(p))
            for p in data.pop("label_problems", None) or []
        ]
        return cls(**data, supervisions=supervisions, label_problems=problems)


def label_cells(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """The label columns of a table row: per column, the first layer that has a value (a
    segment passes its supervision's labels, then its recording's: a whole-file label covers
    every segment of the file unless the segment says otherwise). Every column is present."""
    cells: dict[str, Any] = dict.fromkeys(LABEL_NAMES)
    for layer in layers:
        for name in LABEL_NAMES:
            if cells[name] is None and layer and layer.get(name) is not None:
                cells[name] = layer[name]
    return cells


def source_key(corpus: str, root: str | None, uri: str) -> str:
    """`corpus:relative/path`: the audio's identity, independent of where the corpus is mounted.

    `root` is the listed source's root (the directory, or the directory of the listing file);
    a URI below it keys on its path relative to the root, so the same corpus re-mounted
    elsewhere, or copied from local disk to an object store, keeps its keys. A URI outside the
    root (a manifest pointing anywhere) keys on the whole URI: nothing else names it. A
    multi-source recording (minmo/io/channel_uri.py) keys each of its files that way, in the
    same `channels:[...]` form."""
    base = (root or "").rstrip("/")

    def relative(part: str) -> str:
        return part[len(base) + 1 :] if base and part.startswith(base + "/") else part

    return f"{corpus}:{map_channels(uri, relative)}"
