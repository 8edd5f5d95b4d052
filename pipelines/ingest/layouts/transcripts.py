"""Keyed transcript files: Kaldi-style `text` (`<utt-id> <text>`) and `text.tsv` tables.

Owns: parsing one line of a keyed file into (key, transcript-or-problem), streamed, and reading a
directory's transcript table (`text` or `text.tsv`) into a key → entry map.

Must not: decide which audio a key names (the directory and Kaldi readers do), or touch the text
beyond trimming surrounding whitespace: zh/ja/ko/yue and every other script pass unchanged.

`text.tsv` is tab-separated. With a header naming a `text` column and a key column (`id`, `utt`,
`utt_id`, `key`, `file`, `filename`, `name`, `audio`, `path`) it may also carry `lang`/`language`
and `speaker`/`spk` columns; without such a header each line is `<key><TAB><text>`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from minmo.io.fs import Location
from pipelines.ingest.layouts.common import decode_utf8, utf8_error
from schemas.quarantine import ReasonCode

TABLE_NAMES = ("text", "text.tsv")  # a directory's transcript table, by precedence
_KEY_COLUMNS = ("id", "utt", "utt_id", "key", "file", "filename", "name", "audio", "path")
_LANGUAGE_COLUMNS = ("lang", "language")
_SPEAKER_COLUMNS = ("speaker", "spk", "speaker_id")


@dataclass(frozen=True)
class TextProblem:
    """Why a transcript cannot be used; becomes the quarantine row of the audio it belongs to."""

    reason: ReasonCode
    detail: str


@dataclass(frozen=True)
class Entry:
    """One transcript line: the text (or why there is none usable) and optional extras."""

    text: str | TextProblem
    line: int
    language: str | None = None
    speaker: str | None = None


def transcript_of(raw: bytes, where: str) -> str | TextProblem:
    """The transcript in `raw`, trimmed of surrounding whitespace and otherwise untouched."""
    text = decode_utf8(raw)
    if text is None:
        return TextProblem(ReasonCode.BAD_TRANSCRIPT_ENCODING, f"{where}: {utf8_error(raw)}")
    text = text.strip()
    if not text:
        return TextProblem(ReasonCode.EMPTY_TRANSCRIPT, f"{where}: blank transcript")
    return text


def split_keyed(raw: bytes) -> tuple[str, bytes] | None:
    """`<key> <rest>` of a Kaldi-style line (None for a blank line). The key is decoded leniently:
    ids are ASCII in practice, and a bad byte there must still name the row it spoiled."""
    stripped = raw.strip()
    if not stripped:
        return None
    parts = stripped.split(None, 1)
    key = parts[0].decode("utf-8", "replace")
    if key.startswith("\ufeff"):
        key = key[1:]
    return key, parts[1] if len(parts) > 1 else b""


def kaldi_text_entries(loc: Location) -> Iterator[tuple[str, Entry]]:
    """(utterance id, entry) per non-blank line of a Kaldi `text` file, streamed."""
    for number, raw in enumerate(loc.iter_lines(), start=1):
        split = split_keyed(raw)
        if split is None:
            continue
        key, rest = split
        where = f"{loc.name} line {number}"
        yield key, Entry(transcript_of(rest, where), number)


def tsv_entries(loc: Location) -> Iterator[tuple[str, Entry]]:
    """(key, entry) per data line of a `text.tsv` table, streamed; see the module docstring."""
    lines = enumerate(loc.iter_lines(), start=1)
    columns: dict[str, int] | None = None
    for number, raw in lines:
        if raw.strip():
            columns = _header_columns(raw)
            if columns is None:
                yield from _tsv_pair(raw, number, loc.name)
            break
    for number, raw in lines:
        if not raw.strip():
            continue
        if columns is None:
            yield from _tsv_pair(raw, number, loc.name)
        else:
            yield from _tsv_row(raw, number, loc.name, columns)


def _header_columns(raw: bytes) -> dict[str, int] | None:
    """Column name → index when `raw` is a header with a key and a text column, else None."""
    names = [c.strip().lower() for c in raw.decode("utf-8-sig", "replace").split("\t")]
    if "text" not in names or not any(k in names for k in _KEY_COLUMNS):
        return None
    columns = {"text": names.index("text")}
    columns["key"] = names.index(next(k for k in _KEY_COLUMNS if k in names))
    for role, options in (("language", _LANGUAGE_COLUMNS), ("speaker", _SPEAKER_COLUMNS)):
        hit = next((c for c in options if c in names), None)
        if hit is not None:
            columns[role] = names.index(hit)
    return columns


def _tsv_pair(raw: bytes, number: int, name: str) -> Iterator[tuple[str, Entry]]:
    key, _, rest = raw.partition(b"\t")
    key_text = key.strip().decode("utf-8-sig", "replace")
    if key_text:
        yield key_text, Entry(transcript_of(rest, f"{name} line {number}"), number)


def _tsv_row(
    raw: bytes, number: int, name: str, columns: dict[str, int]
) -> Iterator[tuple[str, Entry]]:
    cells = raw.split(b"\t")

    def cell(role: str) -> bytes | None:
        index = columns.get(role)
        return cells[index].strip() if index is not None and index < len(cells) else None

    key = (cell("key") or b"").decode("utf-8", "replace")
    if not key:
        return
    extras = {}
    for role in ("language", "speaker"):
        value = cell(role)
        extras[role] = (decode_utf8(value) or None) if value else None
    text = transcript_of(cell("text") or b"", f"{name} line {number}")
    yield key, Entry(text, number, **extras)


def read_table(loc: Location) -> dict[str, Entry]:
    """A directory's whole transcript table (it describes that one directory's files, so it is
    as large as the directory listing already held). Later duplicate keys do not override."""
    entries = tsv_entries(loc) if loc.name.endswith(".tsv") else kaldi_text_entries(loc)
    table: dict[str, Entry] = {}
    for key, entry in entries:
        table.setdefault(key, entry)
    return table
