"""Read the build's tables for the sample builders, one column set at a time.

Owns table access for the builders: small lookups keyed by id (recordings, synthesized turns,
model labels, side-input labels; cached per process, since every unit task of a worker uses the
same ones) and streaming iteration over the big tables (segments, frame labels) in record
batches. A known table (schemas.CONTRACTS) is read with its current contract's schema, so a build
written by an older version (segments v1 without the label columns) or a mix of versions reads
with the newer columns null instead of failing or losing them. Must not: decide what a label
means for a task (pipelines/samples/builders.py) or whether a sample is good enough
(pipelines/samples/filters.py).

`TableView` restricts every read to the part files of one work unit (`<step>~<unit>_<n>.parquet`
across the tables that one committed unit wrote). The shard planner builds specs unit by unit in
Ray tasks, so no process ever holds more than one unit's rows, and a unit's specs depend only on
that unit (plus its recordings, looked up by a distributed join where they live elsewhere).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads

from minmo.io.channel_uri import map_channels
from pipelines.build import BuildDir
from schemas import CONTRACTS
from schemas.duplex import EventType

BATCH_ROWS = 8192


# A view: table -> the part files to read. None reads whole tables.
TableView = dict[str, list[str]] | None


def table_files(build: BuildDir, table: str, view: TableView = None) -> list[str]:
    if view is not None:
        return sorted(view.get(table, []))
    return build.files(build.table_dir(table), ".parquet")


def open_dataset(build: BuildDir, table: str, files: list[str]) -> pads.Dataset:
    """The part files as one dataset, under the table's current contract where it has one: a
    column an older file lacks reads as null (a v1 segments file has no label columns), and
    files of several versions read together. Unknown tables keep the first file's schema."""
    contract = CONTRACTS.get(table)
    schema = None if contract is None else contract.schema
    return pads.dataset(files, schema=schema, filesystem=build.fs, format="parquet")


def iter_rows(
    build: BuildDir, table: str, columns: list[str] | None = None, view: TableView = None
) -> Iterator[dict[str, Any]]:
    """Stream a table's rows in file order (deterministic: part files are sorted by name)."""
    files = table_files(build, table, view)
    if not files:
        return
    dataset = open_dataset(build, table, files)
    wanted = None if columns is None else [c for c in columns if c in dataset.schema.names]
    for batch in dataset.to_batches(columns=wanted, batch_size=BATCH_ROWS):
        yield from batch.to_pylist()


def read_table(
    build: BuildDir, table: str, columns: list[str], view: TableView = None
) -> pa.Table | None:
    files = table_files(build, table, view)
    if not files:
        return None
    return open_dataset(build, table, files).to_table(columns=columns)


@dataclass(frozen=True)
class RecordingInfo:
    """What the builders need of one recording: where its audio is, and the whole-file measures
    and labels that the quality filters and the speaker questions read (None: not measured /
    no label, as in a build from before the column existed)."""

    source_uri: str
    source_key: str  # relocatable (pipelines/ingest/items.py); the URI for rows without one
    channels: int
    corpus: str
    duration_s: float
    task: str | None
    duplicate: bool
    snr_db: float | None = None
    clipping_ratio: float | None = None
    speech_ratio: float | None = None
    speaker: str | None = None
    gender: str | None = None
    age: int | None = None


RECORDING_COLUMNS = [
    "recording_id",
    "source_uri",
    "source_key",
    "channels",
    "corpus",
    "duration_s",
    "task",
    "dup_of",
    "snr_db",
    "clipping_ratio",
    "speech_ratio",
    "speaker",
]
"""The recordings columns every build since v2 has (safe for a bare Parquet read, as the shards
planner's distributed join does)."""
RECORDING_LABEL_COLUMNS = ["gender", "age"]
"""The whole-file labels `RecordingInfo` reads too, from recordings v3 on: read them through
`iter_rows` / `open_dataset` (the contract's schema gives an older file nulls). A row without
them (the join) still works: segments carry their recording's labels (schemas/segments.py)."""


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def recording_info(row: dict[str, Any]) -> RecordingInfo:
    """A recordings row (any version: a missing column reads as None) -> RecordingInfo."""
    age = row.get("age")
    return RecordingInfo(
        source_uri=row["source_uri"],
        source_key=row.get("source_key") or row["source_uri"],
        channels=int(row["channels"]),
        corpus=row["corpus"],
        duration_s=float(row["duration_s"]),
        task=row.get("task"),
        duplicate=row.get("dup_of") is not None,
        snr_db=_float(row.get("snr_db")),
        clipping_ratio=_float(row.get("clipping_ratio")),
        speech_ratio=_float(row.get("speech_ratio")),
        speaker=row.get("speaker"),
        gender=row.get("gender"),
        age=None if age is None else int(age),
    )


def recordings(build: BuildDir, view: TableView = None) -> dict[str, RecordingInfo]:
    return {
        r["recording_id"]: recording_info(r)
        for r in iter_rows(build, "recordings", RECORDING_COLUMNS + RECORDING_LABEL_COLUMNS, view)
    }


def channels_by_uri(recs: dict[str, RecordingInfo]) -> dict[str, int]:
    return {r.source_uri: r.channels for r in recs.values()}


def keys_by_uri(recs: dict[str, RecordingInfo]) -> dict[str, str]:
    """Audio URI -> relocatable key, for provenance of rows that name audio by URI (s2s)."""
    return {r.source_uri: r.source_key for r in recs.values()}


@dataclass(frozen=True)
class TurnStyle:
    """What the dialogues table says about how one synthesized line was spoken."""

    instruction: str | None
    emotion: str | None


def styles_by_audio(build: BuildDir, view: TableView = None) -> dict[str, TurnStyle]:
    """Audio URI of each synthesized line -> its style, from s2s_samples joined with dialogues."""
    dialogue_rows = {
        (r["dialogue_id"], r["turn_index"]): r
        for r in iter_rows(
            build, "dialogues", ["dialogue_id", "turn_index", "style_instruction", "emotion"], view
        )
    }
    out: dict[str, TurnStyle] = {}
    for s in iter_rows(
        build,
        "s2s_samples",
        ["dialogue_id", "turn_index", "recipe", "user_audio_uri", "assistant_audio_uri"],
        view,
    ):
        turns = [(s["assistant_audio_uri"], s["turn_index"])]
        if s["recipe"] == "tts_dialogue":  # the user line is synthesized too, one turn earlier
            turns.append((s["user_audio_uri"], s["turn_index"] - 1))
        for uri, index in turns:
            row = dialogue_rows.get((s["dialogue_id"], index))
            if row and (row.get("style_instruction") or row.get("emotion")):
                out[uri] = TurnStyle(row.get("style_instruction"), row.get("emotion"))
    return out


@dataclass(frozen=True)
class ModelLabels:
    """One segment's pseudo-labels from the `annotations` table (schemas/annotations.py)."""

    model: str
    model_version: str
    transcript: str | None
    language: str | None
    emotion: str | None
    audio_events: tuple[str, ...]
    confidence: dict[str, float | None]
    """Label name (transcript, language, emotion, audio_events) -> the model's confidence."""


ANNOTATION_LABELS = ("transcript", "language", "emotion", "audio_events")


def model_labels(build: BuildDir, view: TableView = None) -> dict[str, ModelLabels]:
    """segment_id -> its pseudo-labels. Where several model versions labelled a segment, the
    greatest (model, model_version) wins: an arbitrary but fixed choice, so that a sample does
    not depend on the order files were written in."""
    cols = ["segment_id", "model", "model_version"]
    cols += [c for name in ANNOTATION_LABELS for c in (name, f"{name}_confidence")]
    out: dict[str, ModelLabels] = {}
    for row in iter_rows(build, "annotations", cols, view):
        sid = row["segment_id"]
        old = out.get(sid)
        if old is not None and (old.model, old.model_version) >= (
            row["model"],
            row["model_version"],
        ):
            continue
        text = (row.get("transcript") or "").strip()
        out[sid] = ModelLabels(
            model=row["model"],
            model_version=row["model_version"],
            transcript=text or None,
            language=row.get("language") or None,
            emotion=row.get("emotion") or None,
            audio_events=tuple(row.get("audio_events") or ()),
            confidence={name: _float(row.get(f"{name}_confidence")) for name in ANNOTATION_LABELS},
        )
    return out


def backchannel_times(build: BuildDir, view: TableView = None) -> dict[str, list[float]]:
    """Duplex sample_id -> the times (s, ascending) of its user back-channels, from the events
    table: the frame labels carry no trace of them (they lie inside keep_speaking), so a
    stage-4 sample takes them along for `minmo eval`'s back-channel accuracy."""
    out: dict[str, list[float]] = {}
    for row in iter_rows(build, "events", ["sample_id", "event_type", "time_s"], view):
        if row["event_type"] == EventType.USER_BACKCHANNEL.value:
            out.setdefault(row["sample_id"], []).append(round(float(row["time_s"]), 3))
    return {sid: sorted(times) for sid, times in out.items()}


def _resolve(uri: str, base: Path) -> str:
    if "://" in uri:
        return uri
    path = Path(uri)
    return os.path.realpath(path if path.is_absolute() else base / path)


def normalise_uri(uri: str) -> str:
    """A local path made absolute and real, for side-input lookups (each file of a recording
    stored one file per channel alike, minmo/io/channel_uri.py)."""
    return map_channels(uri, lambda part: part if "://" in part else os.path.realpath(part))


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, json.loads(line)


@functools.lru_cache(maxsize=4)
def audio_events(path: str | Path | None) -> dict[str, list[str]]:
    """Side input: JSONL of {"source_uri", "events": [..]} per recording (paths relative to the
    file), the labels of the audio-event task. Keyed by the normalised source URI."""
    if not path:
        return {}
    base = Path(path).resolve().parent
    out: dict[str, list[str]] = {}
    for number, row in read_jsonl(path):
        uri, events = row.get("source_uri"), row.get("events")
        if not isinstance(uri, str) or not isinstance(events, list) or not events:
            raise ValueError(f"{path}:{number}: need 'source_uri' and a non-empty 'events' list")
        out[_resolve(uri, base)] = [str(e) for e in events]
    return out


@functools.lru_cache(maxsize=4)
def translations(paths: tuple[str, ...] | None) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """Side input: JSONL of {"language", "text", "target_language", "translation"}; an utterance
    whose (language, transcript) matches gets a speech-translation sample per target language."""
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for path in paths or []:
        for number, row in read_jsonl(path):
            fields = ("language", "text", "target_language", "translation")
            if not all(isinstance(row.get(f), str) and row[f].strip() for f in fields):
                raise ValueError(f"{path}:{number}: need non-empty {', '.join(fields)}")
            key = (row["language"], normalise_text(row["text"]))
            out.setdefault(key, []).append((row["target_language"], row["translation"].strip()))
    return out


def normalise_text(text: str) -> str:
    return " ".join(text.split())
