"""The `lhotse` layout: Lhotse manifests (recordings + supervisions, or cuts).

Owns: recognising Lhotse manifests (`manifest_kind`, `find_manifests`), and turning their
recordings into items with supervisions in recording time.

Must not: load audio, or decode features; feature manifests are ignored.

Accepted sources: a directory holding `*recordings*.jsonl[.gz]` (each paired with the
`*supervisions*` file of the same name, or with every supervisions file when there is a single
recordings file) and/or cut manifests (`cuts.json`, `*cuts*.jsonl.gz`, any name: files are
recognised by their first record, not their name); or one cuts or recordings manifest file.

Records are read through pyarrow.fs (JSONL line by line, so `s3://` manifests work and nothing
is loaded whole; a `.json` array is the exception, as in Lhotse) and turned into Lhotse objects
by Lhotse's own `deserialize_item`, so every manifest version Lhotse reads is read the same way.

Per recording:
- one item (`item_key` = recording id). A recording with several sources (one file per channel,
  as telephone corpora and two-track call exports ship) becomes one recording whose audio is its
  files stacked in channel order (minmo/io/channel_uri.py; ingest vets their lengths and rates,
  minmo/audio/load.py), and a supervision's channel id becomes its row in that stack. `url`
  sources on an object store (s3://, gs://) are read like files; `url` (http), `memory`,
  `command` and `shar` sources are `unsupported_source` (the whole recording), and so is a
  recording with a Speed/Tempo transform (its supervision times are in perturbed time, while
  ingest reads the stored file);
- where the audio is: the stored path as is (a relative one against the working directory,
  for local manifests), then relative to the manifest's directory, then **the stored file name
  in the manifest's directory**. The last one exists because manifests are often written
  in one place and copied elsewhere with their audio (the Lhotse test fixtures in ../shared/data
  name `test/fixtures/...` paths). Nowhere → `missing_file` naming every place tried;
- supervisions are in the recording's time: a cut's supervisions are shifted by the cut's
  start; `channel` is kept when it is an int (or a one-element list), else None. A supervision
  with blank text is `empty_transcript`. A supervision whose recording is in no manifest is
  `missing_file` (one row per recording id).
- a recording referenced by several cuts becomes one item; its supervisions are kept once
  each (by supervision id).
- labels: a supervision's `gender` field and its `custom` keys `emotion`, `gender`, `age`,
  `audio_events` (or `events`), `translations`, `dialect`, each through its schemas.labels
  parser (the `gender` field wins over a custom one). A value the parser refuses is a
  `bad_label` row (detail `<manifest name>#line N: <key>: <why>`, item_key = supervision id)
  and the supervision keeps its other labels. Other custom keys are tallied as ignored
  (`custom.<key>`) for the ingest summary. A supervision spanning the whole recording gives
  its labels to the recording too.

Memory: recordings and supervisions are joined in one pass when both are sorted by recording
id (Lhotse's own lazy `create_cut_set_lazy` needs the same), and cuts are grouped in one pass
when each recording's cuts are contiguous; otherwise the supervisions (or open recordings) are
indexed in memory, with a warning. The ids of emitted recordings are kept, to drop duplicates.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from minmo.io.channel_uri import join_channels
from minmo.io.fs import Location, uri_scheme
from pipelines.ingest.items import LabelProblem, Labels, SourceItem, Supervision
from pipelines.ingest.layouts.common import (
    LABEL_KEYS,
    KeyedLookup,
    Pending,
    ReadContext,
    Refused,
    Row,
    decode_utf8,
    in_time_order,
    is_sorted,
    read_labels,
    reject,
    utf8_error,
)
from schemas.quarantine import ReasonCode

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
CUT_TYPES = frozenset({"MonoCut", "MixedCut", "MultiCut", "PaddingCut", "DataCut", "Cut"})
TIME_CHANGING_TRANSFORMS = frozenset({"Speed", "Tempo"})
OBJECT_STORE_SCHEMES = frozenset({"s3", "gs", "gcs"})
WHOLE_FILE_TOLERANCE_S = 0.01
_DETECT_HEAD_BYTES = 1 << 16
_TRUNCATED = object()


# --- recognising manifests -------------------------------------------------------------------


def is_manifest_name(name: str) -> bool:
    return name.lower().endswith(MANIFEST_SUFFIXES)


def _is_jsonl(name: str) -> bool:
    return name.lower().endswith((".jsonl", ".jsonl.gz"))


def manifest_kind(record: Any) -> str | None:
    """`cuts`, `recordings`, `supervisions` or `features` for a Lhotse record, else None."""
    if not isinstance(record, dict):
        return None
    if record.get("type") in CUT_TYPES or "tracks" in record or "recording" in record:
        return "cuts"
    if "sources" in record and "sampling_rate" in record:
        return "recordings"
    if "num_features" in record or "storage_type" in record:
        return "features"
    if {"recording_id", "start", "duration"} <= record.keys():
        return "supervisions"
    return None


def first_record(loc: Location) -> Any:
    """The first record of a JSONL file or JSON array, reading only as much as it needs."""
    if _is_jsonl(loc.name):
        for raw in loc.iter_lines():
            if raw.strip():
                try:
                    return json.loads(raw)
                except ValueError:
                    return None
        return None
    limit = _DETECT_HEAD_BYTES
    while True:
        head = loc.read_bytes(limit)
        record = _first_of_document(head.decode("utf-8", "ignore"))
        if record is not _TRUNCATED:
            return record
        if len(head) < limit:
            return None
        limit *= 16


def _first_of_document(text: str) -> Any:
    text = text.lstrip()
    if text.startswith("["):
        text = text[1:].lstrip()
        if text.startswith("]"):
            return None
    try:
        return json.JSONDecoder().raw_decode(text)[0]
    except ValueError:
        return _TRUNCATED


def find_manifests(directory: Location, limit: int | None = None) -> dict[str, list[Location]]:
    """Lhotse manifests among `directory`'s own files, by kind, in name order (at most `limit`
    candidate files are opened: detection must stay cheap on a directory of many JSON files)."""
    infos = directory.list_dir()
    names = sorted(
        posixpath.basename(i.path)
        for i in infos
        if i.type == pafs.FileType.File and is_manifest_name(i.path)
    )
    found: dict[str, list[Location]] = {"cuts": [], "recordings": [], "supervisions": []}
    for name in names[:limit]:
        loc = directory.child(name)
        kind = manifest_kind(first_record(loc))
        if kind in found:
            found[kind].append(loc)
    return found


# --- reading ---------------------------------------------------------------------------------


def read(src: str, ctx: ReadContext, **fs_options: Any) -> Iterator[Pending | Row]:
    loc = Location.from_uri(src, **fs_options)
    if loc.is_dir():
        manifests = find_manifests(loc)
    else:
        manifests = {"cuts": [], "recordings": [], "supervisions": []}
        kind = manifest_kind(first_record(loc))
        if kind not in ("cuts", "recordings"):
            raise ValueError(
                f"{src}: not a Lhotse cuts or recordings manifest (first record is {kind or 'not Lhotse'}); "
                "pass the directory holding the recordings and supervisions manifests"
            )
        manifests[kind].append(loc)
        if kind == "recordings":
            manifests["supervisions"] = _named_partners(
                loc, find_manifests(loc.parent)["supervisions"]
            )
    seen: set[str] = set()
    yield from _from_cuts(manifests["cuts"], ctx, seen)
    pairs, unpaired = _pair(manifests["recordings"], manifests["supervisions"])
    for rec_loc, sup_locs in pairs:
        yield from _from_recordings(rec_loc, sup_locs, ctx, seen)
    for sup_loc in unpaired:
        yield from _unattached_supervisions(sup_loc)


def _named_partners(rec_loc: Location, sup_locs: list[Location]) -> list[Location]:
    partner = rec_loc.name.replace("recordings", "supervisions")
    return [s for s in sup_locs if s.name == partner]


def _pair(
    recordings: list[Location], supervisions: list[Location]
) -> tuple[list[tuple[Location, list[Location]]], list[Location]]:
    """Each recordings manifest with its supervisions manifests (same name with `supervisions`
    for `recordings`; all of them when there is one recordings manifest), and the rest."""
    if len(recordings) == 1:
        return [(recordings[0], supervisions)], []
    pairs = [(r, _named_partners(r, supervisions)) for r in recordings]
    used = {s.uri for _, sups in pairs for s in sups}
    return pairs, [s for s in supervisions if s.uri not in used]


def _records(loc: Location) -> Iterator[tuple[str, Any]]:
    """(where, raw record) per record, or (where, `Refused`) for one that cannot be parsed."""
    if _is_jsonl(loc.name):
        for number, raw in enumerate(loc.iter_lines(), start=1):
            if raw.strip():
                yield f"line {number}", _parse(raw, f"line {number}", loc)
        return
    raw = loc.read_bytes()
    document = _parse(raw, "file", loc)
    if not isinstance(document, list):  # one record, or a Refused for the whole file
        document = [document]
    for number, record in enumerate(document, start=1):
        yield f"record {number}", record


def _parse(raw: bytes, where: str, loc: Location) -> Any:
    text = decode_utf8(raw)
    if text is None:
        return Refused(
            reject(loc.uri, ReasonCode.BAD_TRANSCRIPT_ENCODING, f"{where}: {utf8_error(raw)}")
        )
    try:
        return json.loads(text)
    except ValueError as err:
        return Refused(reject(loc.uri, ReasonCode.BAD_MANIFEST_ROW, f"{where}: not JSON ({err})"))


def _deserialize(record: Any, where: str, loc: Location) -> Any:
    """A Lhotse object from a raw record (Lhotse's own decoder), or why not."""
    from lhotse.serialization import deserialize_item

    if isinstance(record, Refused):
        return record
    if not isinstance(record, dict):
        return Refused(reject(loc.uri, ReasonCode.BAD_MANIFEST_ROW, f"{where}: not a JSON object"))
    try:
        return deserialize_item(dict(record))
    except Exception as err:  # Lhotse raises whatever its dataclasses raise on a bad record
        detail = f"{where}: {type(err).__name__}: {err}"
        return Refused(reject(loc.uri, ReasonCode.BAD_MANIFEST_ROW, detail))


# --- cuts ------------------------------------------------------------------------------------

_Sup = tuple[Any, float, str]
"""(Lhotse supervision, offset of its times in the recording, `<manifest name>#line N`)."""


@dataclass
class _Open:
    """A recording seen in cuts, with its supervisions so far (by id): each with its cut's
    start in the recording and where in the manifest it was read."""

    recording: Any
    manifest: Location
    supervisions: dict[str, _Sup] = field(default_factory=dict)


def _from_cuts(files: list[Location], ctx: ReadContext, seen: set[str]) -> Iterator[Pending | Row]:
    if not files:
        return
    contiguous = _cuts_contiguous(files)
    if not contiguous:
        log.warning(
            "%s: cuts of a recording are not contiguous; grouping in memory", files[0].parent.uri
        )
    open_: dict[str, _Open] = {}
    for loc in files:
        for where, record in _records(loc):
            cut = _deserialize(record, where, loc)
            if isinstance(cut, Refused):
                yield cut.row
                continue
            if manifest_kind(record) != "cuts":
                yield reject(loc.uri, ReasonCode.BAD_MANIFEST_ROW, f"{where}: not a cut")
                continue
            refs: set[str] = set()
            for recording, offset, sups, cut_id in _cut_parts(cut):
                if recording is None:
                    detail = f"{where}: cut {cut_id!r} has no recording (features only)"
                    yield reject(loc.uri, ReasonCode.UNSUPPORTED_SOURCE, detail, cut_id)
                    continue
                refs.add(recording.id)
                if recording.id in seen:
                    continue
                entry = open_.setdefault(recording.id, _Open(recording, loc))
                for sup in sups:
                    entry.supervisions.setdefault(sup.id, (sup, offset, f"{loc.name}#{where}"))
            if contiguous:
                for rec_id in [r for r in open_ if r not in refs]:
                    yield from _close(open_.pop(rec_id), ctx, seen)
    for entry in open_.values():
        yield from _close(entry, ctx, seen)


def _close(entry: _Open, ctx: ReadContext, seen: set[str]) -> Iterator[Pending | Row]:
    seen.add(entry.recording.id)
    yield from _recording_items(
        entry.recording, list(entry.supervisions.values()), entry.manifest, ctx
    )


def _cut_parts(cut: Any) -> Iterator[tuple[Any, float, list[Any], str]]:
    """(recording, cut start in the recording, supervisions, cut id) of each data cut in `cut`
    (a MixedCut's tracks included; padding has no audio)."""
    from lhotse.cut import MixedCut, PaddingCut

    if isinstance(cut, MixedCut):
        for track in cut.tracks:
            yield from _cut_parts(track.cut)
    elif isinstance(cut, PaddingCut):
        return
    else:
        yield getattr(cut, "recording", None), float(cut.start), list(cut.supervisions), cut.id


def _raw_recording_ids(record: Any) -> set[str]:
    ids: set[str] = set()
    if not isinstance(record, dict):
        return ids
    recording = record.get("recording")
    if isinstance(recording, dict) and "id" in recording:
        ids.add(str(recording["id"]))
    for track in record.get("tracks") or []:
        if isinstance(track, dict):
            ids |= _raw_recording_ids(track.get("cut"))
    return ids


def _cuts_contiguous(files: list[Location]) -> bool:
    """Whether every recording's cuts form one run (then a recording is complete as soon as a
    cut not referencing it arrives, and can be emitted)."""
    closed: set[str] = set()
    current: set[str] = set()
    for loc in files:
        for _, record in _records(loc):
            refs = _raw_recording_ids(record)
            if refs & closed:
                return False
            closed |= current - refs
            current = refs
    return True


# --- recordings + supervisions ---------------------------------------------------------------


def _from_recordings(
    rec_loc: Location, sup_locs: list[Location], ctx: ReadContext, seen: set[str]
) -> Iterator[Pending | Row]:
    rec_sorted = is_sorted(_raw_field(r, "id") for _, r in _records(rec_loc))
    sups_sorted = is_sorted(_raw_field(r, "recording_id") for s in sup_locs for _, r in _records(s))
    lookup: KeyedLookup[Any] = KeyedLookup(
        lambda: _sup_records(sup_locs), streaming=rec_sorted and sups_sorted
    )
    if not lookup.streaming and sup_locs:
        log.warning("%s: not sorted by recording id; indexing supervisions in memory", rec_loc.uri)
    for where, record in _records(rec_loc):
        recording = _deserialize(record, where, rec_loc)
        if isinstance(recording, Refused):
            yield recording.row
            continue
        if manifest_kind(record) != "recordings":
            yield reject(
                rec_loc.uri, ReasonCode.BAD_MANIFEST_ROW, f"{where}: not a recording", None
            )
            continue
        sups = lookup.get(recording.id)
        yield from _unattached(lookup.take_orphans())
        if recording.id in seen:
            continue
        seen.add(recording.id)
        located = [(s, 0.0, f"{loc.name}#{at}") for loc, s, at in sups]
        yield from _recording_items(recording, located, rec_loc, ctx)
    yield from _unattached(lookup.finish())


def _raw_field(record: Any, name: str) -> str | None:
    value = record.get(name) if isinstance(record, dict) else None
    return None if value is None else str(value)


def _sup_records(sup_locs: list[Location]) -> Iterator[tuple[str | None, Any]]:
    """(recording id, (manifest, supervision, where)) per supervision; (None, row) for a bad
    record."""
    for loc in sup_locs:
        for where, record in _records(loc):
            sup = _deserialize(record, where, loc)
            if isinstance(sup, Refused):
                yield None, sup.row
            elif manifest_kind(record) != "supervisions":
                yield (
                    None,
                    reject(loc.uri, ReasonCode.BAD_MANIFEST_ROW, f"{where}: not a supervision"),
                )
            else:
                yield sup.recording_id, (loc, sup, where)


def _unattached(orphans: Iterable[tuple[str | None, Any]]) -> Iterator[Row]:
    """One `missing_file` row per recording id that supervisions name but no manifest defines."""
    counts: dict[tuple[str, str], int] = {}
    for rec_id, value in orphans:
        if rec_id is None:
            yield value
        else:
            loc = value[0]
            counts[(loc.uri, rec_id)] = counts.get((loc.uri, rec_id), 0) + 1
    for (uri, rec_id), n in counts.items():
        detail = f"{n} supervision(s) refer to recording {rec_id!r}, which no recordings or cuts manifest here defines"
        yield reject(uri, ReasonCode.MISSING_FILE, detail, rec_id)


def _unattached_supervisions(loc: Location) -> Iterator[Row]:
    yield from _unattached(_sup_records([loc]))


# --- one recording -----------------------------------------------------------------------------


def _transform_names(recording: Any) -> list[str]:
    names = []
    for transform in recording.transforms or []:
        names.append(
            transform.get("name", "?") if isinstance(transform, dict) else type(transform).__name__
        )
    return names


def _recording_items(
    recording: Any, sups: list[_Sup], manifest: Location, ctx: ReadContext
) -> Iterator[Pending | Row]:
    """One pending item for `recording` (its files stacked in channel order when it has
    several sources), or the reason it cannot be read."""
    changing = [t for t in _transform_names(recording) if t in TIME_CHANGING_TRANSFORMS]
    if changing:
        detail = f"recording {recording.id!r}: {'/'.join(changing)} transform puts its supervisions in perturbed time"
        yield reject(manifest.uri, ReasonCode.UNSUPPORTED_SOURCE, detail, recording.id)
        return
    sources = _in_channel_order(recording.sources)
    files: list[list[Location]] = []
    for source in sources:
        candidates = _candidates(source, manifest.parent)
        if candidates is None:
            detail = f"recording {recording.id!r}: {source.type} source {str(source.source)[:200]!r} is not a file"
            yield reject(manifest.uri, ReasonCode.UNSUPPORTED_SOURCE, detail, recording.id)
            return
        files.append(candidates)
    position = _channel_positions(sources)
    multi = len(sources) > 1
    uri = join_channels([f[0].uri for f in files])
    item = SourceItem(
        source_uri=uri, corpus=ctx.corpus_for(), item_key=recording.id, task=ctx.task_for()
    )
    for sup, offset, where in sups:
        channel = _channel_of(sup.channel, position, multi)
        converted = _supervision(sup, offset, channel, uri)
        if isinstance(converted, Supervision):
            converted.labels, problems = _labels(sup, where, ctx)
            item.label_problems += problems
            item.supervisions.append(converted)
        else:
            yield converted
    _lift_whole_file(item, float(recording.duration))
    yield Pending(in_time_order(item), files[0], channel_candidates=files if multi else None)


def _in_channel_order(sources: list[Any]) -> list[Any]:
    """A recording's sources by their first channel id (Lhotse lists them in any order)."""
    return sorted(sources, key=lambda s: min(s.channels) if s.channels else 0)


def _channel_positions(sources: list[Any]) -> dict[int, int]:
    """Recording channel id -> row of the stacked audio: each source's channels in turn."""
    ids = [c for source in sources for c in (source.channels or [0])]
    return {channel: row for row, channel in enumerate(ids)}


def _channel_of(channel: Any, position: dict[int, int], multi: bool) -> int | None:
    """A supervision's channel in the ingested audio: its one channel id mapped to its row of
    the (stacked) audio; None (every channel) for several ids or none. An id the recording does
    not list is None for a multi-source recording, and kept as given for a single file."""
    if isinstance(channel, list) and len(channel) == 1:
        channel = channel[0]
    if not isinstance(channel, int):
        return None
    return position.get(channel, None if multi else channel)


def _candidates(source: Any, manifest_dir: Location) -> list[Location] | None:
    """Where a source's audio may be, best first (see the module docstring), or None when the
    source is not a file ingest can read."""
    stored = str(source.source)
    if source.type == "url":
        return (
            [manifest_dir.resolve(stored)] if uri_scheme(stored) in OBJECT_STORE_SCHEMES else None
        )
    if source.type != "file":
        return None
    places: list[Location] = []
    if uri_scheme(stored) is not None or stored.startswith("/"):
        places.append(manifest_dir.resolve(stored))
    else:
        if manifest_dir.is_local:
            places.append(Location.from_uri(stored))
        places.append(manifest_dir.child(stored))
    places.append(manifest_dir.child(posixpath.basename(stored)))
    unique: dict[str, Location] = {}
    for place in places:
        unique.setdefault(place.uri, place)
    return list(unique.values())


def _supervision(sup: Any, offset: float, channel: int | None, audio_uri: str) -> Supervision | Row:
    text = sup.text
    if isinstance(text, str) and not text.strip():
        return reject(
            audio_uri, ReasonCode.EMPTY_TRANSCRIPT, f"supervision {sup.id!r}: blank text", sup.id
        )
    start = offset + float(sup.start)
    return Supervision(  # to the microsecond: offset + start + duration leaves float dust
        start_s=round(start, 6),
        end_s=round(start + float(sup.duration), 6),
        channel=channel,
        text=text.strip() if isinstance(text, str) else None,
        speaker=sup.speaker,
        language=sup.language,
        item_key=sup.id,
    )


def _labels(sup: Any, where: str, ctx: ReadContext) -> tuple[Labels, list[LabelProblem]]:
    """A supervision's labels: its `gender` field and its label `custom` keys (the others are
    tallied as ignored)."""
    custom = sup.custom if isinstance(sup.custom, dict) else {}
    ctx.ignored.add(
        f"custom.{k}" for k, v in custom.items() if k not in LABEL_KEYS and v is not None
    )
    raw = {k: v for k, v in custom.items() if k in LABEL_KEYS}
    if sup.gender is not None:
        raw["gender"] = sup.gender
    return read_labels(raw, where, ctx, sup.id)


def _lift_whole_file(item: SourceItem, duration_s: float) -> None:
    """A recording transcribed (or labelled) by one supervision spanning all of it is a
    transcribed (labelled) file: give the item that text and those labels too, as the other
    layouts do."""
    if len(item.supervisions) != 1:
        return
    sup = item.supervisions[0]
    spans = (
        abs(sup.start_s) <= WHOLE_FILE_TOLERANCE_S
        and abs((sup.end_s or 0.0) - duration_s) <= WHOLE_FILE_TOLERANCE_S
    )
    if spans:
        item.labels = dict(sup.labels)
    if spans and sup.text is not None:
        item.text, item.speaker, item.language = sup.text, sup.speaker, sup.language
