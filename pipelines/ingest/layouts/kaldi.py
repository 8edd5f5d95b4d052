"""The `kaldi` layout: a Kaldi data directory (`wav.scp`, optional `segments`, `text`,
`utt2spk`, `utt2lang`, and the label files `utt2gender`, `spk2gender`, `utt2emotion`,
`utt2age`, `utt2dialect`).

Owns: joining those files into one item per `wav.scp` recording.

Must not: run commands. A `wav.scp` entry that is a pipe (`sox ... |`), stdin (`-`) or an
offset into an archive (`x.ark:123`) is quarantined as `unsupported_source`: ingest reads
files, and running shell text from a data directory is not something a corpus builder may do.

Paths: a relative `wav.scp` path is resolved against the data directory itself. (Kaldi resolves
it against the recipe's working directory, which ingest cannot know; data directories that are
moved around are self-contained only this way.)

With `segments`: each recording becomes one item with one supervision per segment (start/end
from `segments`, text from `text`, speaker from `utt2spk`, language from `utt2lang`, item_key =
utterance id). An end time of -1 means "to the end of the recording" (Kaldi's convention). A
negative start or an end not after the start quarantines that segment as `bad_segment`; the
recording keeps its other supervisions. A segment whose recording is not in `wav.scp`, and a
`text` line whose utterance is nowhere, are quarantined as `missing_file`; a recording listed
twice in `wav.scp` is `bad_manifest_row` (the first listing wins).
Without `segments`: utterance id = recording id; the text becomes the item's text and a
whole-file supervision, and a `text` line that is not UTF-8 or blank quarantines the recording.

Labels: `utt2<label> <utt> <value>` labels an utterance (a segment, or the whole recording
without `segments`); `spk2gender <speaker> <m|f>` labels every utterance of a speaker (through
`utt2spk`) that `utt2gender` does not. Each value goes through its schemas.labels parser; one
it refuses is a `bad_label` row (detail `utt2emotion#line N: emotion: <why>`) and the utterance
is ingested without it. A label line whose utterance is nowhere labels nothing and is dropped,
like a speaker or language line.

Memory: Kaldi sorts every file of a data directory by its key (`LC_ALL=C sort`; `utils/
validate_data_dir.sh` insists on it). A first cheap pass checks each file's order; sorted
files are then read side by side, holding a few lines at a time, and an unsorted one is indexed
in memory instead (with a warning). `spk2gender` is keyed by speaker, which utterances do not
come sorted by: it is indexed whole (one line per speaker).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from minmo.io.fs import Location, existing
from pipelines.ingest.items import LabelProblem, SourceItem, Supervision
from pipelines.ingest.layouts.common import (
    KeyedLookup,
    Pending,
    ReadContext,
    Row,
    decode_utf8,
    in_time_order,
    is_sorted,
    parse_label,
    reject,
    with_transcript,
)
from pipelines.ingest.layouts.transcripts import Entry, TextProblem, kaldi_text_entries, split_keyed
from schemas.labels import LabelError
from schemas.quarantine import ReasonCode

log = logging.getLogger(__name__)

WAV_SCP = "wav.scp"
UTT_LABEL_FILES = {
    "utt2gender": "gender",
    "utt2emotion": "emotion",
    "utt2age": "age",
    "utt2dialect": "dialect",
}
"""Per-utterance label file -> the label column it fills."""
SPK_LABEL_FILES = {"spk2gender": "gender"}
"""Per-speaker label file -> the label column it fills (where the utterance's own file does not)."""
UTT_SIDE_FILES = ("text", "utt2spk", "utt2lang", *UTT_LABEL_FILES)
SIDE_FILES = ("segments", *UTT_SIDE_FILES, *SPK_LABEL_FILES)
_ARCHIVE_OFFSET = re.compile(r"\.ark:\d+$")


@dataclass(frozen=True)
class _Segment:
    utt: str
    start_s: float
    end_s: float | None  # None: to the end of the recording (Kaldi end time -1)
    line: int
    raw_end: float


def read(src: str, ctx: ReadContext, **fs_options: Any) -> Iterator[Pending | Row]:
    data_dir = Location.from_uri(src, **fs_options)
    wav_scp = data_dir.child(WAV_SCP)
    if not wav_scp.is_file():
        raise ValueError(f"{src}: not a Kaldi data directory (no {WAV_SCP} in {data_dir.uri})")
    present = dict(zip(SIDE_FILES, existing(data_dir.child(n) for n in SIDE_FILES), strict=True))
    wav_sorted = is_sorted(key for key, _ in _wav_lines(wav_scp))
    segments = None
    if present["segments"]:
        seg_loc = data_dir.child("segments")
        recs_sorted, utts_sorted = _segments_order(seg_loc)
        segments = KeyedLookup(
            lambda: _segment_records(seg_loc), streaming=wav_sorted and recs_sorted
        )
        utt_order_sorted = wav_sorted and recs_sorted and utts_sorted
    else:
        utt_order_sorted = wav_sorted
    sides = {
        name: _side_lookup(data_dir.child(name), utt_order_sorted)
        for name in UTT_SIDE_FILES
        if present[name]
    }
    speakers = _SpeakerLabels(
        {name: _speaker_index(data_dir.child(name)) for name in SPK_LABEL_FILES if present[name]}
    )
    _log_fallbacks(data_dir, segments, sides)
    yield from _join(data_dir, wav_scp, wav_sorted, segments, sides, speakers, ctx)


def _wav_lines(wav_scp: Location) -> Iterator[tuple[str, tuple[int, bytes]]]:
    for number, raw in enumerate(wav_scp.iter_lines(), start=1):
        split = split_keyed(raw)
        if split is not None:
            yield split[0], (number, split[1])


def _segment_records(loc: Location) -> Iterator[tuple[str | None, _Segment | Row]]:
    """(recording id, segment) per line of `segments`; (None, refusal) for a malformed line."""
    for number, raw in enumerate(loc.iter_lines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        utt = fields[0].decode("utf-8", "replace")
        try:
            if len(fields) < 4:
                raise ValueError(f"{len(fields)} fields, expected <utt> <recording> <start> <end>")
            start, end = float(fields[2]), float(fields[3])
        except ValueError as err:
            detail = f"segments line {number}: {err}"
            yield None, reject(loc.uri, ReasonCode.BAD_MANIFEST_ROW, detail, utt)
            continue
        rec = fields[1].decode("utf-8", "replace")
        yield rec, _Segment(utt, start, None if end == -1 else end, number, end)


def _segments_order(loc: Location) -> tuple[bool, bool]:
    """Whether `segments` is sorted by recording id, and by utterance id (one pass)."""
    last_rec = last_utt = ""
    recs_ok = utts_ok = True
    for rec, seg in _segment_records(loc):
        if rec is None or not isinstance(seg, _Segment):
            continue
        recs_ok = recs_ok and last_rec <= rec
        utts_ok = utts_ok and last_utt <= seg.utt
        last_rec, last_utt = rec, seg.utt
    return recs_ok, utts_ok


def _side_records(loc: Location) -> Iterator[tuple[str | None, Any]]:
    if loc.name == "text":
        yield from kaldi_text_entries(loc)
        return
    labels = loc.name in UTT_LABEL_FILES or loc.name in SPK_LABEL_FILES
    for number, raw in enumerate(loc.iter_lines(), start=1):
        split = split_keyed(raw)
        if split is not None:
            value = split[1].strip().decode("utf-8", "replace") or None
            yield split[0], (number, value) if labels else value


def _speaker_index(loc: Location) -> dict[str, tuple[int, str | None]]:
    """speaker -> (line, value) of a per-speaker file (the first line of a speaker wins)."""
    index: dict[str, tuple[int, str | None]] = {}
    for key, value in _side_records(loc):
        if key is not None:
            index.setdefault(key, value)
    return index


@dataclass(frozen=True)
class _SpeakerLabels:
    """The per-speaker label files, indexed (see SPK_LABEL_FILES)."""

    files: dict[str, dict[str, tuple[int, str | None]]]

    def of(self, speaker: str | None) -> dict[str, tuple[str, int, str | None]]:
        """label column -> (file name, line, raw value) for `speaker`."""
        found: dict[str, tuple[str, int, str | None]] = {}
        if speaker is None:
            return found
        for name, index in self.files.items():
            if speaker in index:
                found.setdefault(SPK_LABEL_FILES[name], (name, *index[speaker]))
        return found


def _side_lookup(loc: Location, queries_sorted: bool) -> KeyedLookup[Any]:
    streaming = queries_sorted and is_sorted(key for key, _ in _side_records(loc))
    return KeyedLookup(lambda: _side_records(loc), streaming=streaming)


def _log_fallbacks(
    data_dir: Location, segments: KeyedLookup[Any] | None, sides: dict[str, KeyedLookup[Any]]
) -> None:
    unsorted = [n for n, lookup in sides.items() if not lookup.streaming]
    if segments is not None and not segments.streaming:
        unsorted.insert(0, "segments")
    if unsorted:
        log.warning(
            "%s: %s not sorted as Kaldi requires (or wav.scp is not); indexing in memory",
            data_dir.uri,
            ", ".join(unsorted),
        )


def _join(
    data_dir: Location,
    wav_scp: Location,
    wav_sorted: bool,
    segments: KeyedLookup[Any] | None,
    sides: dict[str, KeyedLookup[Any]],
    speakers: _SpeakerLabels,
    ctx: ReadContext,
) -> Iterator[Pending | Row]:
    seen: set[str] = set()  # only when unsorted: sorted, a repeat is the line just before
    last = None
    for rec, (number, raw_path) in _wav_lines(wav_scp):
        if rec == last or rec in seen:
            detail = f"wav.scp line {number}: recording {rec!r} listed again"
            yield reject(wav_scp.uri, ReasonCode.BAD_MANIFEST_ROW, detail, rec)
            continue
        last = rec
        if not wav_sorted:
            seen.add(rec)
        segs = segments.get(rec) if segments is not None else None
        utts = [s.utt for s in segs if isinstance(s, _Segment)] if segs is not None else [rec]
        per_utt = {u: {name: lookup.get(u) for name, lookup in sides.items()} for u in utts}
        audio = _audio_location(data_dir, wav_scp, rec, number, raw_path)
        if isinstance(audio, Location):
            yield from _recording(audio, rec, segs, per_utt, speakers, ctx)
        else:
            yield audio
        yield from _orphans(data_dir, segments, sides)
    yield from _orphans(data_dir, segments, sides, final=True)


def _audio_location(
    data_dir: Location, wav_scp: Location, rec: str, number: int, raw_path: bytes
) -> Location | Row:
    where = f"wav.scp line {number}"
    path = decode_utf8(raw_path.strip())
    if not path:
        detail = f"{where}: no path" if path == "" else f"{where}: path is not UTF-8"
        return reject(wav_scp.uri, ReasonCode.BAD_MANIFEST_ROW, detail, rec)
    if path.endswith("|") or path == "-" or _ARCHIVE_OFFSET.search(path):
        detail = f"{where}: {path!r} is a command, stdin or archive offset, not an audio file"
        return reject(wav_scp.uri, ReasonCode.UNSUPPORTED_SOURCE, detail, rec)
    return data_dir.resolve(path)


def _recording(
    audio: Location,
    rec: str,
    segs: list[Any] | None,
    per_utt: dict[str, dict[str, list[Any]]],
    speakers: _SpeakerLabels,
    ctx: ReadContext,
) -> Iterator[Pending | Row]:
    if segs is None:
        fields = _utterance_fields(per_utt[rec])
        if isinstance(fields, TextProblem):
            yield reject(audio.uri, fields.reason, fields.detail, rec)
            return
        text, speaker, language = fields
        item = _item(audio, rec, ctx, text=text, speaker=speaker, language=language)
        item.labels = _utterance_labels(rec, per_utt[rec], speakers.of(speaker), ctx, item)
        yield Pending(with_transcript(item), [audio])
        return
    item = _item(audio, rec, ctx)
    for seg in segs:
        if not isinstance(seg, _Segment):
            yield seg
            continue
        sup = _supervision(seg, per_utt[seg.utt], audio)
        if isinstance(sup, Supervision):
            found = speakers.of(sup.speaker)
            sup.labels = _utterance_labels(seg.utt, per_utt[seg.utt], found, ctx, item)
            item.supervisions.append(sup)
        else:
            yield sup
    yield Pending(in_time_order(item), [audio])


def _utterance_labels(
    utt: str,
    values: dict[str, list[Any]],
    by_speaker: dict[str, tuple[str, int, str | None]],
    ctx: ReadContext,
    item: SourceItem,
) -> dict[str, Any]:
    """An utterance's labels from its `utt2<label>` lines (first line wins), else its
    speaker's; a value its parser refuses is recorded on `item` as a LabelProblem."""
    raw = dict(by_speaker)
    for name, column in UTT_LABEL_FILES.items():
        lines = [(line, value) for line, value in values.get(name) or [] if value is not None]
        if lines:
            raw[column] = (name, *lines[0])
    labels: dict[str, Any] = {}
    for column, (name, line, value) in raw.items():
        try:
            parsed = parse_label(column, value, ctx.emotion_map)
        except LabelError as err:
            item.label_problems.append(LabelProblem(utt, f"{name}#line {line}: {column}: {err}"))
            continue
        if parsed is not None:
            labels[column] = parsed
    return labels


def _item(audio: Location, rec: str, ctx: ReadContext, **fields: Any) -> SourceItem:
    return SourceItem(
        source_uri=audio.uri,
        corpus=ctx.corpus_for(),
        item_key=rec,
        task=ctx.task_for(),
        **fields,
    )


def _utterance_fields(
    values: dict[str, list[Any]],
) -> tuple[str | None, str | None, str | None] | TextProblem:
    """(text, speaker, language) of one utterance from the side files (first line wins)."""
    texts: list[Entry] = values.get("text", [])
    text = texts[0].text if texts else None
    if isinstance(text, TextProblem):
        return text
    speaker = next(iter(values.get("utt2spk", [])), None)
    language = next(iter(values.get("utt2lang", [])), None)
    return text, speaker, language


def _supervision(seg: _Segment, values: dict[str, list[Any]], audio: Location) -> Supervision | Row:
    where = f"segments line {seg.line}"
    if seg.start_s < 0 or (seg.end_s is not None and seg.end_s <= seg.start_s):
        detail = f"{where}: start {seg.start_s} s, end {seg.raw_end} s"
        return reject(audio.uri, ReasonCode.BAD_SEGMENT, detail, seg.utt)
    fields = _utterance_fields(values)
    if isinstance(fields, TextProblem):
        return reject(audio.uri, fields.reason, fields.detail, seg.utt)
    text, speaker, language = fields
    return Supervision(
        start_s=seg.start_s,
        end_s=seg.end_s,
        text=text,
        speaker=speaker,
        language=language,
        item_key=seg.utt,
    )


def _orphans(
    data_dir: Location,
    segments: KeyedLookup[Any] | None,
    sides: dict[str, KeyedLookup[Any]],
    final: bool = False,
) -> Iterator[Row]:
    """Quarantine rows for segments whose recording, and transcripts whose utterance, is
    nowhere; speaker and language lines with nothing to label are harmless and dropped."""
    if segments is not None:
        for rec, seg in segments.finish() if final else segments.take_orphans():
            if isinstance(seg, _Segment):
                detail = f"segments line {seg.line}: recording {rec!r} is not in wav.scp"
                yield reject(
                    data_dir.child("segments").uri, ReasonCode.MISSING_FILE, detail, seg.utt
                )
            else:
                yield seg
    for name, lookup in sides.items():
        orphans = lookup.finish() if final else lookup.take_orphans()
        if name != "text":
            continue
        for utt, entry in orphans:
            where = f"text line {entry.line}"
            detail = (
                f"{where}: utterance {utt!r} is in no {'segments' if segments else 'wav.scp'} line"
            )
            yield reject(data_dir.child("text").uri, ReasonCode.MISSING_FILE, detail, utt)
