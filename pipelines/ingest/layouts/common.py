"""What every layout reader shares: the read context, pending items, rejects and keyed lookups.

Owns: `ReadContext` (corpus/task/emotion-map policy and the tally of ignored columns),
`Pending` (an item whose audio location may still need an existence check), `reject` (a
quarantine row with a closed reason code), `settle` (the batched existence check that turns
pendings into `SourceItem`s or `missing_file` rows), `KeyedLookup` (joining a keyed side file to
a driver stream without loading it when sorted), `read_labels` (a source's raw label values
through the schemas.labels parsers, with the location of every refusal) and `ColumnTally`.

Must not: know any particular layout's file names or columns.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from minmo.io.channel_uri import join_channels, map_channels
from minmo.io.fs import Location, existing
from pipelines.ingest.items import LabelProblem, Labels, SourceItem, Supervision, source_key
from schemas.labels import LABEL_NAMES, PARSERS, LabelError, parse_emotion
from schemas.quarantine import ReasonCode, quarantine_row

log = logging.getLogger(__name__)

Row = dict[str, Any]  # a quarantine row (schemas.quarantine.QUARANTINE)
V = TypeVar("V")

SETTLE_BATCH = 256

LABEL_ALIASES: dict[str, tuple[str, ...]] = {
    name: ("audio_events", "events") if name == "audio_events" else (name,) for name in LABEL_NAMES
}
"""Label column -> the names a source may give it (first present wins), for every layout."""
LABEL_KEYS = frozenset(alias for aliases in LABEL_ALIASES.values() for alias in aliases)
MAX_TALLIED_COLUMNS = 256
"""Distinct ignored column names a tally keeps; any further name counts under `OTHER_COLUMNS`,
so a manifest whose every row invents a key costs O(this), not O(rows)."""
OTHER_COLUMNS = "(other columns)"


@dataclass
class ColumnTally:
    """Rows per column a reader saw but does not use: what the ingest summary lists as ignored,
    so that no column is dropped silently. Holds one counter per distinct name (capped)."""

    counts: Counter = field(default_factory=Counter)

    def add(self, names: Iterable[str]) -> None:
        for name in names:
            if name in self.counts or len(self.counts) < MAX_TALLIED_COLUMNS:
                self.counts[name] += 1
            else:
                self.counts[OTHER_COLUMNS] += 1

    def as_dict(self) -> dict[str, int]:
        """Most rows first, then by name: the order the summary prints."""
        return dict(sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])))


@dataclass(frozen=True)
class ReadContext:
    """The caller's choices every reader applies the same way.

    `corpus` / `task` given by the caller override whatever the source says; otherwise a
    manifest's per-row `corpus` wins over `default_corpus` (the source directory's name), and a
    row's `task` is kept as is. `emotion_map` (lower-cased value -> vocabulary word) is the
    job's own emotion codes, consulted before the built-in ones. `ignored` collects the columns
    a reader skipped (the caller reads it once the listing is consumed)."""

    default_corpus: str
    corpus: str | None = None
    task: str | None = None
    emotion_map: Mapping[str, str] | None = None
    ignored: ColumnTally = field(default_factory=ColumnTally)

    def corpus_for(self, row_corpus: str | None = None) -> str:
        return self.corpus or row_corpus or self.default_corpus

    def task_for(self, row_task: str | None = None) -> str | None:
        return self.task or row_task


@dataclass
class Pending:
    """An item whose audio is at the first of `candidates` that exists.

    Readers do not check existence themselves: `settle` does it in batches for all of them.
    `listed=True` means a directory listing already proved the file is there.

    A recording stored one file per channel gives `channel_candidates`: each channel file's
    candidates, in channel order (`candidates` then holds channel 0's, for refusal rows). It
    settles only when every channel file is found, as `channels:[...]` (minmo/io/channel_uri.py)."""

    item: SourceItem
    candidates: list[Location]
    listed: bool = False
    channel_candidates: list[list[Location]] | None = None

    @property
    def files(self) -> list[list[Location]]:
        """The candidates of each file the recording needs (one for a plain file)."""
        return self.channel_candidates or [self.candidates]


@dataclass(frozen=True)
class Refused:
    """A record refused while parsing, wrapped so that no record's own keys (a manifest row
    may hold anything) can pass for a quarantine row's."""

    row: Row


def reject(
    source_uri: str,
    reason: ReasonCode,
    detail: str,
    item_key: str | None = None,
    key: str | None = None,
) -> Row:
    """A quarantine row of the ingest step (the reason code is the closed enum's value)."""
    return quarantine_row(
        source_uri, reason.value, detail, step="ingest", item_key=item_key, source_key=key
    )


def parse_label(name: str, value: Any, emotion_map: Mapping[str, str] | None = None) -> Any:
    """One raw value of label column `name`, normalised (None: no label); LabelError if the
    parser refuses it. Anything else a parser raises is a bug in this value's handling, and is
    reported as a refusal too: a manifest cell must never crash the listing."""
    try:
        if name == "emotion":
            return parse_emotion(value, emotion_map)
        return PARSERS[name](value)
    except LabelError:
        raise
    except (TypeError, ValueError, AttributeError) as err:
        raise LabelError(f"{name} {value!r}: {type(err).__name__}: {err}") from err


def read_labels(
    raw: Mapping[str, Any], where: str, ctx: ReadContext, item_key: str | None = None
) -> tuple[Labels, list[LabelProblem]]:
    """The labels among `raw`'s keys (LABEL_ALIASES), parsed; every refused value becomes a
    LabelProblem whose detail names `where` (`file.jsonl#line 3`), the column and the value,
    and the item keeps its other labels."""
    labels: Labels = {}
    problems: list[LabelProblem] = []
    for name, aliases in LABEL_ALIASES.items():
        column = next((a for a in aliases if raw.get(a) is not None), None)
        if column is None:
            continue
        try:
            value = parse_label(name, raw[column], ctx.emotion_map)
        except LabelError as err:
            problems.append(LabelProblem(item_key, f"{where}: {column}: {err}"))
            continue
        if value is not None:
            labels[name] = value
    return labels, problems


def decode_utf8(raw: bytes) -> str | None:
    """`raw` as text, or None when it is not UTF-8 (a leading byte-order mark is dropped: it is
    an encoding marker, not part of the transcript)."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def utf8_error(raw: bytes) -> str:
    """Where `raw` stops being UTF-8, for a quarantine detail."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start})"
    return "valid UTF-8"


def with_transcript(item: SourceItem) -> SourceItem:
    """Give a transcribed whole-file item its whole-file supervision, so downstream steps read
    every transcript from `supervisions` whatever layout it came from."""
    if item.text is not None and not item.supervisions:
        item.supervisions.append(
            Supervision(
                start_s=0.0,
                end_s=None,
                text=item.text,
                speaker=item.speaker,
                language=item.language,
                item_key=item.item_key,
                labels=dict(item.labels),
            )
        )
    return item


def in_time_order(item: SourceItem) -> SourceItem:
    """Sort the item's supervisions by time, so the output does not depend on the order a
    manifest happened to list them in."""
    item.supervisions.sort(
        key=lambda s: (
            s.start_s,
            float("inf") if s.end_s is None else s.end_s,
            -1 if s.channel is None else s.channel,
            s.item_key or "",
        )
    )
    return item


@dataclass(frozen=True)
class Keyer:
    """Gives every settled item and refusal its relocatable `source_key` (items.source_key):
    `root` is the listed source's root, `corpus` names refusals that carry no item, and
    `original` maps a URI outside the root back to where it was first ingested (the build's
    recorded `--source-root` moves), so a moved file a manifest points at keeps its key."""

    root: str | None = None
    corpus: str = ""
    original: Callable[[str], str] | None = None

    def key(self, corpus: str, uri: str) -> str:
        return source_key(corpus, self.root, map_channels(uri, self._original))

    def _original(self, uri: str) -> str:
        """One file's URI as first ingested, when it lies outside the root."""
        base = (self.root or "").rstrip("/")
        outside = not (base and uri.startswith(base + "/"))
        return self.original(uri) if outside and self.original else uri

    def item(self, item: SourceItem) -> SourceItem:
        item.source_key = self.key(item.corpus, item.source_uri)
        return item

    def row(self, row: Row, corpus: str | None = None) -> Row:
        if not row.get("source_key"):
            row["source_key"] = self.key(corpus or self.corpus, row["source_uri"])
        return row


def settle(
    stream: Iterable[Pending | Row],
    check_exists: bool = True,
    batch_size: int = SETTLE_BATCH,
    keyer: Keyer | None = None,
) -> Iterator[SourceItem | Row]:
    """Resolve each pending item to its first existing candidate, in stream order, and key it
    (`keyer`; default: no root, so every key holds the whole URI).

    Existence is checked `batch_size` items at a time (one batched request per filesystem and
    candidate rank), not per item: on an object store a check is a network round trip. Without
    `check_exists` the first candidate is taken on trust."""
    keyer = keyer or Keyer()
    batch: list[Pending | Row] = []
    for entry in stream:
        batch.append(entry)
        if len(batch) >= batch_size:
            yield from _settle_batch(batch, check_exists, keyer)
            batch = []
    yield from _settle_batch(batch, check_exists, keyer)


def _settle_batch(
    batch: list[Pending | Row], check_exists: bool, keyer: Keyer
) -> Iterator[SourceItem | Row]:
    # one slot per file each pending item needs: (item index, file index) -> its candidates
    slots = {
        (i, f): cands
        for i, e in enumerate(batch)
        if isinstance(e, Pending)
        for f, cands in enumerate(e.files)
    }
    chosen: dict[tuple[int, int], Location] = {}
    unresolved: list[tuple[int, int]] = []
    for slot, cands in slots.items():
        entry = batch[slot[0]]
        if (isinstance(entry, Pending) and entry.listed) or not check_exists:
            chosen[slot] = cands[0]
        else:
            unresolved.append(slot)
    rank = 0  # ask for every file's best candidate at once, then the second best of the rest...
    while unresolved:
        asked = [s for s in unresolved if rank < len(slots[s])]
        found = existing(slots[s][rank] for s in asked)
        for slot, ok in zip(asked, found, strict=True):
            if ok:
                chosen[slot] = slots[slot][rank]
        unresolved = [s for s in asked if s not in chosen]
        rank += 1
    for i, entry in enumerate(batch):
        if not isinstance(entry, Pending):
            yield keyer.row(entry)
            continue
        files = range(len(entry.files))
        missing = [f for f in files if (i, f) not in chosen]
        if not missing:
            entry.item.source_uri = join_channels([chosen[(i, f)].uri for f in files])
            yield keyer.item(entry.item)
            continue
        tried = "; ".join(", ".join(dict.fromkeys(c.uri for c in entry.files[f])) for f in missing)
        detail = f"no audio file at {tried}"
        if entry.item.label_problems:  # the labels of audio that is not there go with it
            bad = "; ".join(p.detail for p in entry.item.label_problems)
            detail += f" (its labels were refused too: {bad})"
        uri = join_channels([entry.files[f][0].uri for f in files])
        row = reject(uri, ReasonCode.MISSING_FILE, detail, entry.item.item_key)
        yield keyer.row(row, entry.item.corpus)


def is_sorted(keys: Iterable[str | None]) -> bool:
    """Whether the non-None keys never decrease (Python's code-point order equals the byte order
    of `LC_ALL=C sort` on UTF-8, the order Kaldi and Lhotse's lazy joins assume)."""
    last: str | None = None
    for key in keys:
        if key is None:
            continue
        if last is not None and key < last:
            return False
        last = key
    return True


@dataclass
class KeyedLookup(Generic[V]):
    """The records of a keyed file (Kaldi `text`, `segments` by recording, Lhotse supervisions
    by recording), fetched by key while a driver stream is walked.

    With `streaming=True` the file is read once alongside the driver, holding only the records
    between two queries: that needs the file sorted by key and the queries made in non-decreasing
    key order (check both with `is_sorted` first). Otherwise the whole file is indexed in a dict,
    the only way to join an unsorted file; the reader logs when it has to.

    Records whose key is None are the file's own bad lines; they and the records no query asked
    for come out of `take_orphans()` so the caller can quarantine them.
    """

    records: Callable[[], Iterator[tuple[str | None, V]]]
    streaming: bool
    _iter: Iterator[tuple[str | None, V]] | None = None
    _head: tuple[str | None, V] | None = None
    _index: dict[str, list[V]] | None = None
    _orphans: list[tuple[str | None, V]] = field(default_factory=list)

    def get(self, key: str) -> list[V]:
        """All records with `key` (empty when none)."""
        if not self.streaming:
            return self._indexed().pop(key, [])
        found: list[V] = []
        while (head := self._peek()) is not None:
            head_key, value = head
            if head_key is not None and head_key > key:
                break
            self._head = None
            if head_key == key:
                found.append(value)
            else:
                self._orphans.append(head)
        return found

    def take_orphans(self) -> list[tuple[str | None, V]]:
        orphans, self._orphans = self._orphans, []
        return orphans

    def finish(self) -> list[tuple[str | None, V]]:
        """Every record never fetched (after the driver is done), plus pending bad lines."""
        if self.streaming:
            while (head := self._peek()) is not None:
                self._head = None
                self._orphans.append(head)
        else:
            for key, values in self._indexed().items():
                self._orphans.extend((key, v) for v in values)
            self._index = {}
        return self.take_orphans()

    def _peek(self) -> tuple[str | None, V] | None:
        if self._head is None:
            if self._iter is None:
                self._iter = self.records()
            self._head = next(self._iter, None)
        return self._head

    def _indexed(self) -> dict[str, list[V]]:
        if self._index is None:
            self._index = {}
            for key, value in self.records():
                if key is None:
                    self._orphans.append((key, value))
                else:
                    self._index.setdefault(key, []).append(value)
        return self._index
