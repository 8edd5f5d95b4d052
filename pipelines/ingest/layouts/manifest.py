"""The `jsonl`, `csv` and `parquet` layouts: one manifest row per audio file.

Owns: streaming a manifest's rows (JSONL line by line, CSV/TSV row by row, Parquet batch by
batch) and turning each row into a pending item or a quarantine row.

Must not: hold a manifest in memory (a `.json` file holding one JSON array or object is the one
exception: JSON has no record boundaries to stream by), or check that audio exists (`settle`
does, in batches).

Columns (first present alias wins; a column not named here is ignored, and counted: the rows
that give it a value are tallied in `ReadContext.ignored`, which the ingest summary lists):
  path      `path`, `audio_filepath` (NeMo), `audio`, `wav`, `audio_path`; `audio` may also be
            a `{"path": ...}` object (Hugging Face style). Relative paths resolve against the
            manifest's directory, on the manifest's filesystem. A **list** of paths is one
            recording stored one file per channel (a two-track call: `["a.wav", "b.wav"]`,
            channel 0 first); in a CSV cell, write it as a JSON array. Ingest stacks the files
            into one multi-channel recording (minmo/io/channel_uri.py, minmo/audio/load.py).
  text      `text`, `txt`, `transcript`, `transcription`, `sentence`
  language  `language`, `lang`, `locale`    speaker `speaker`, `speaker_id`, `spk`
  task, corpus, id (`id`, `key`, `utt_id`)
  labels    `emotion`, `gender`, `age`, `audio_events` (or `events`), `translations`, `dialect`
            (schemas/labels.py says what each accepts; `audio_events` and `translations` may be
            a JSON list in a CSV cell). They label the whole file.
  `duration`/`duration_s` are read and unused (ingest measures audio itself). A row with a non-zero
  `offset`/`offset_s` describes a stretch of a file, which a per-file manifest cannot carry:
  it is quarantined as `unsupported_source` rather than silently taken as the whole file.

Refusals: a label value its parser refuses → `bad_label` (detail `<manifest name>#line N:
<column>: <why>`, the value included), written beside the recording, which is still ingested
without that label (see items.LabelProblem); no path → `bad_manifest_row`; JSON that does not parse, or a row that is not an
object → `bad_manifest_row`; a line that is not UTF-8 → `bad_transcript_encoding`; text that is
not a string → `bad_manifest_row`; blank text (an empty CSV cell included) → `empty_transcript`.
Each detail names the line (JSONL, CSV) or row (Parquet, JSON) number.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq

from minmo.io.channel_uri import join_channels
from minmo.io.fs import Location
from pipelines.ingest.items import SourceItem
from pipelines.ingest.layouts.common import (
    LABEL_KEYS,
    Pending,
    ReadContext,
    Refused,
    Row,
    decode_utf8,
    read_labels,
    reject,
    utf8_error,
    with_transcript,
)
from schemas.quarantine import ReasonCode

PATH_COLUMNS = ("path", "audio_filepath", "audio", "wav", "audio_path")
TEXT_COLUMNS = ("text", "txt", "transcript", "transcription", "sentence")
LANGUAGE_COLUMNS = ("language", "lang", "locale")
SPEAKER_COLUMNS = ("speaker", "speaker_id", "spk")
ID_COLUMNS = ("id", "key", "utt_id")
OFFSET_COLUMNS = ("offset", "offset_s")
DURATION_COLUMNS = ("duration", "duration_s")
KNOWN_COLUMNS = frozenset(
    (
        *PATH_COLUMNS,
        *TEXT_COLUMNS,
        *LANGUAGE_COLUMNS,
        *SPEAKER_COLUMNS,
        *ID_COLUMNS,
        *OFFSET_COLUMNS,
        *DURATION_COLUMNS,
        "task",
        "corpus",
        *LABEL_KEYS,
    )
)
"""Every column a manifest row may carry that ingest reads; any other is tallied as ignored."""
PARQUET_BATCH_ROWS = 4096


_RawRow = tuple[str, "dict[str, Any] | Refused"]  # (where in the file, fields | refusal)


def read_jsonl(src: str, ctx: ReadContext, **fs_options: Any) -> Iterator[Pending | Row]:
    manifest = Location.from_uri(src, **fs_options)
    rows = _json_document_rows(manifest) if _is_json_document(manifest) else _jsonl_rows(manifest)
    yield from _to_items(rows, manifest, ctx)


def read_csv(src: str, ctx: ReadContext, **fs_options: Any) -> Iterator[Pending | Row]:
    manifest = Location.from_uri(src, **fs_options)
    yield from _to_items(_csv_rows(manifest), manifest, ctx)


def read_parquet(src: str, ctx: ReadContext, **fs_options: Any) -> Iterator[Pending | Row]:
    manifest = Location.from_uri(src, **fs_options)
    yield from _to_items(_parquet_rows(manifest), manifest, ctx)


def _to_items(
    rows: Iterator[_RawRow], manifest: Location, ctx: ReadContext
) -> Iterator[Pending | Row]:
    for where, row in rows:
        yield row.row if isinstance(row, Refused) else _row_item(row, where, manifest, ctx)


def _is_json_document(manifest: Location) -> bool:
    name = manifest.name.lower()
    return name.endswith(".json") or name.endswith(".json.gz")


def _jsonl_rows(manifest: Location) -> Iterator[_RawRow]:
    for number, raw in enumerate(manifest.iter_lines(), start=1):
        where = f"line {number}"
        if not raw.strip():
            continue
        text = decode_utf8(raw)
        if text is None:
            yield (
                where,
                _refuse(
                    manifest, ReasonCode.BAD_TRANSCRIPT_ENCODING, f"{where}: {utf8_error(raw)}"
                ),
            )
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            yield (
                where,
                _refuse(manifest, ReasonCode.BAD_MANIFEST_ROW, f"{where}: not JSON ({err.msg})"),
            )
            continue
        yield where, row if isinstance(row, dict) else _not_object(manifest, where, row)


def _json_document_rows(manifest: Location) -> Iterator[_RawRow]:
    """Rows of a `.json` file: an array of row objects, or an object of id → row object (the
    id fills a missing `id`). A file that is not one JSON document is read as JSONL."""
    raw = manifest.read_bytes()
    text = decode_utf8(raw)
    if text is None:
        yield (
            "file",
            _refuse(manifest, ReasonCode.BAD_TRANSCRIPT_ENCODING, f"file: {utf8_error(raw)}"),
        )
        return
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        yield from _jsonl_rows(manifest)
        return
    if isinstance(document, dict):
        pairs = [(v if not isinstance(v, dict) else {"id": k, **v}) for k, v in document.items()]
    elif isinstance(document, list):
        pairs = document
    else:
        pairs = [document]
    for number, row in enumerate(pairs, start=1):
        where = f"row {number}"
        yield where, row if isinstance(row, dict) else _not_object(manifest, where, row)


def _csv_rows(manifest: Location) -> Iterator[_RawRow]:
    """CSV (`,`) or TSV (tab, no quoting) rows as string dicts, streamed.

    Decoded with `surrogateescape` so a row holding bytes that are not UTF-8 is found and
    refused alone instead of failing the whole file."""
    tsv = manifest.name.lower().removesuffix(".gz").endswith(".tsv")
    stream = io.TextIOWrapper(
        manifest.open_binary(), encoding="utf-8-sig", errors="surrogateescape", newline=""
    )
    with stream:
        if tsv:
            reader = csv.reader(stream, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(stream)
        header: list[str] | None = None
        for cells in reader:
            where = f"line {reader.line_num}"
            if not any(c.strip() for c in cells):
                continue
            bad = next((c for c in cells if _has_surrogates(c)), None)
            if bad is not None:
                raw = bad.encode("utf-8", "surrogateescape")
                detail = f"{where}: {utf8_error(raw)}"
                yield where, _refuse(manifest, ReasonCode.BAD_TRANSCRIPT_ENCODING, detail)
                continue
            if header is None:
                header = [c.strip() for c in cells]
                continue
            yield (
                where,
                {name: (cells[i] if i < len(cells) else None) for i, name in enumerate(header)},
            )


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text)


def _parquet_rows(manifest: Location) -> Iterator[_RawRow]:
    number = 0
    with manifest.fs.open_input_file(manifest.path) as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                number += 1
                yield f"row {number}", row


def _bad(manifest: Location, reason: ReasonCode, detail: str, key: str | None = None) -> Row:
    return reject(manifest.uri, reason, detail, key)


def _refuse(manifest: Location, reason: ReasonCode, detail: str) -> Refused:
    return Refused(_bad(manifest, reason, detail))


def _not_object(manifest: Location, where: str, row: object) -> Refused:
    kind = type(row).__name__
    return _refuse(manifest, ReasonCode.BAD_MANIFEST_ROW, f"{where}: a {kind}, not an object")


def _first(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    """The value of the first alias present and not null."""
    for name in names:
        value = row.get(name)
        if value is not None:
            return value
    return None


def _as_str(value: Any) -> str | None:
    """An optional label as text: speaker ids are often numbers in CSV/Parquet."""
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _is_zero(offset: Any) -> bool:
    """Whether an offset cell says "from the start" (absent, blank or a number equal to 0)."""
    if offset is None or offset == "":
        return True
    try:
        return float(offset) == 0.0
    except (TypeError, ValueError):
        return False


def _has_value(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _row_item(
    row: dict[str, Any], where: str, manifest: Location, ctx: ReadContext
) -> Pending | Row:
    ctx.ignored.add(
        str(name) for name, value in row.items() if name not in KNOWN_COLUMNS and _has_value(value)
    )
    key = _as_str(_first(row, ID_COLUMNS))
    path = _first(row, PATH_COLUMNS)
    if isinstance(path, dict):
        path = path.get("path")
    if isinstance(path, str) and path.lstrip().startswith("["):  # a CSV cell's JSON list
        with contextlib.suppress(json.JSONDecodeError):  # not JSON: a path beginning with [
            path = json.loads(path)
    if path is None or path == "" or path == []:
        detail = f"{where}: no audio path (looked for {', '.join(PATH_COLUMNS)})"
        return _bad(manifest, ReasonCode.BAD_MANIFEST_ROW, detail, key)
    paths = path if isinstance(path, list) else [path]
    wrong = next((p for p in paths if not isinstance(p, str) or not p), None)
    if wrong is not None:
        kind = "an empty string" if wrong == "" else f"a {type(wrong).__name__}"
        detail = (
            f"{where}: audio path is {kind}; give a path, or a list of paths (one file per channel)"
        )
        return _bad(manifest, ReasonCode.BAD_MANIFEST_ROW, detail, key)
    files = [manifest.parent.resolve(p) for p in paths]
    audio = files[0]
    uri = join_channels([f.uri for f in files])
    offset = _first(row, OFFSET_COLUMNS)
    if not _is_zero(offset):
        detail = f"{where}: offset {offset!r} marks a stretch of the file; per-file manifests carry whole files"
        return reject(uri, ReasonCode.UNSUPPORTED_SOURCE, detail, key)
    text = _first(row, TEXT_COLUMNS)
    if isinstance(text, bytes):  # a Parquet binary column
        decoded = decode_utf8(text)
        if decoded is None:
            return reject(
                uri,
                ReasonCode.BAD_TRANSCRIPT_ENCODING,
                f"{where}: text {utf8_error(text)}",
                key,
            )
        text = decoded
    if text is not None and not isinstance(text, str):
        detail = f"{where}: text is a {type(text).__name__}, not a string"
        return _bad(manifest, ReasonCode.BAD_MANIFEST_ROW, detail, key)
    if text is not None:
        text = text.strip()
        if not text:
            return reject(uri, ReasonCode.EMPTY_TRANSCRIPT, f"{where}: blank transcript", key)
    item = SourceItem(
        source_uri=uri,
        corpus=ctx.corpus_for(_as_str(row.get("corpus"))),
        item_key=key,
        text=text,
        language=_as_str(_first(row, LANGUAGE_COLUMNS)),
        speaker=_as_str(_first(row, SPEAKER_COLUMNS)),
        task=ctx.task_for(_as_str(row.get("task"))),
    )
    item.labels, item.label_problems = read_labels(row, f"{manifest.name}#{where}", ctx, key)
    channels = [[f] for f in files] if len(files) > 1 else None
    return Pending(with_transcript(item), [audio], channel_candidates=channels)
