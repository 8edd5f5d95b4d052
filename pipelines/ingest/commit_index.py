"""The ingest commit index: which sources and which contents a build already holds, probed per
unit at a cost that does not grow with the build.

Owns: the index's layout, its probe, its per-unit writes, the fold of those writes into buckets,
and `reindex` (one scan of the committed tables). Must not: decide what is a duplicate or what
to skip (pipelines/ingest/run.py does, through `sources_seen` and `originals`).

Layout, under DIR/_state/ingest/index/:

    manifest.json              {"version", "prefix_chars", "rows", "buckets": {"<pp>": <gen>}}
    buckets/<pp>-<gen>.arrow   Arrow IPC, sorted by `key`; one file per hash prefix `<pp>`
    pending/<unit>.arrow       one committed unit's rows, not yet folded into the buckets

A row is (`key`: 20-byte sha1 of a kind tag and a text, `value`: string). Two kinds share the
buckets: a *source* row per committed source (`source\\n<source_key>`, value: the source key)
and a *content* row per original recording (`content\\n<content_sha1>`, value: its
recording_id, which later copies point at with `dup_of`).

Why this shape:
- A unit of n files touches at most 2n buckets and reads each once (a few hundred small files,
  read in parallel); what a bucket holds is bounded (the index splits every bucket into 16 once
  the mean bucket passes MAX_BUCKET_ROWS, an O(1)-amortized rebuild), so a probe costs the same
  at 10k and at 1M committed rows.
- A unit's commit writes ONE small pending file (before its ledger marker); every FOLD_UNITS
  units the driver folds the pending rows into the buckets they hash to. Writing per bucket at
  every commit would cost hundreds of object-store PUTs per unit.
- A fold never overwrites: it writes new generations of the touched buckets, then the manifest
  (the fold's commit point), then deletes the old generations and the folded pending files. A
  crash before the manifest leaves stray files the next fold deletes; after it, pending rows
  that are also in the buckets, which a fold dedupes (the first value of a key wins). Works on
  object stores: nothing relies on rename.
- A pending file of a unit without a ledger marker is a crashed commit: `open` deletes it.

A bucket the manifest names but that is missing or unreadable stops the run with an error that
names the file and the rebuild command; the index never guesses, so a damaged index can neither
re-ingest nor duplicate anything.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from pipelines.build import BuildDir, StepLedger

VERSION = 1
SOURCE = "source"
CONTENT = "content"
PREFIX_CHARS = 2  # 256 buckets for a new index
MAX_BUCKET_ROWS = 32768  # past this mean, every bucket splits into 16
FOLD_UNITS = 64  # pending units folded into the buckets at once
IO_THREADS = 8  # bucket reads and writes in flight (object stores answer in parallel)
REINDEX_PASS_ROWS = 20_000_000  # rows one reindex pass holds in memory
KEY_BYTES = 20
SCHEMA = pa.schema([("key", pa.binary(KEY_BYTES)), ("value", pa.string())])
REBUILD_HINT = "rebuild it from the committed tables with `minmo ingest --reindex --build {build}`"


class CommitIndexError(RuntimeError):
    """The commit index cannot answer: a part is missing or unreadable, or the build predates
    the index. The message names the file and how to rebuild."""


def digest(kind: str, text: str) -> bytes:
    """The 20-byte key of a source key or content hash."""
    return hashlib.sha1(f"{kind}\n{text}".encode()).digest()


def index_dir(build: BuildDir) -> str:
    return build.path("_state", "ingest", "index")


@dataclass
class CommitIndex:
    """An open commit index of one build (the driver's; workers never touch it)."""

    build: BuildDir
    ledger: StepLedger
    manifest: dict[str, Any]
    pending: dict[str, pa.Table] = field(default_factory=dict)  # unit -> its rows
    pending_values: dict[bytes, str] = field(default_factory=dict)

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, build: BuildDir, ledger: StepLedger) -> CommitIndex:
        """The build's index; a new, empty one for a build without ingest output. Pending files
        of units without a marker (a crash between writing one and the marker) are deleted."""
        root = index_dir(build)
        manifest_path = f"{root}/manifest.json"
        if not build.exists(manifest_path):
            if any(build.exists(build.table_dir(t)) for t in ("recordings", "quarantine")):
                raise CommitIndexError(
                    f"the build {build.uri} holds committed ingest output but no commit index "
                    f"({manifest_path} is missing: the build predates the index, or the index "
                    f"was deleted); {REBUILD_HINT.format(build=build.uri)}"
                )
            empty = {"version": VERSION, "prefix_chars": PREFIX_CHARS, "rows": 0, "buckets": {}}
            build.write_json_atomic(manifest_path, empty)
        index = cls(build, ledger, _read_manifest(build, manifest_path))
        for path in build.files(f"{root}/pending", ".arrow"):
            unit = path.rsplit("/", 1)[-1][: -len(".arrow")]
            if ".tmp-" in path or not ledger.is_done(unit):
                build.delete(path)
            else:
                index._remember(unit, _read_part(build, path))
        return index

    # ---- probing ---------------------------------------------------------------------------

    def lookup(self, kind: str, texts: Iterable[str]) -> dict[str, str]:
        """{text: value} for those of `texts` the index holds (kind SOURCE or CONTENT)."""
        wanted = {digest(kind, t): t for t in dict.fromkeys(texts)}
        found: dict[str, str] = {}
        by_bucket: dict[str, list[bytes]] = defaultdict(list)
        for key, text in wanted.items():
            if key in self.pending_values:
                found[text] = self.pending_values[key]
            by_bucket[self.bucket_of(key)].append(key)
        named = sorted(b for b in by_bucket if b in self.manifest["buckets"])
        # a few tasks of many buckets each: per-task overhead would dwarf a small bucket's read
        tasks = [named[i::IO_THREADS] for i in range(IO_THREADS)]

        def probe(buckets: list[str]) -> list[tuple[bytes, str]]:
            return [hit for b in buckets for hit in _search(self._read_bucket(b), by_bucket[b])]

        # local parts are read in this thread (threads would only contend for the GIL)
        runs = (
            map(probe, [named])
            if _is_local(self.build)
            else _pool().map(probe, [t for t in tasks if t])
        )
        for hits in runs:
            for key, value in hits:
                found.setdefault(wanted[key], value)
        return found

    def sources_seen(self, source_keys: Iterable[str]) -> set[str]:
        """Which of these source keys a committed unit already holds (recordings or quarantine)."""
        return set(self.lookup(SOURCE, source_keys))

    def originals(self, content_sha1s: Iterable[str]) -> dict[str, str]:
        """{content_sha1: recording_id of the committed original} for known contents."""
        return self.lookup(CONTENT, content_sha1s)

    # ---- writing ---------------------------------------------------------------------------

    def add(self, unit_id: str, sources: Iterable[str], originals: dict[str, str]) -> None:
        """Record a unit's sources and original contents; call BEFORE the unit's ledger marker
        (a pending file without a marker is deleted at the next open)."""
        rows = [(digest(SOURCE, k), k) for k in dict.fromkeys(sources)]
        rows += [(digest(CONTENT, sha), rid) for sha, rid in originals.items()]
        table = pa.table(
            {"key": [r[0] for r in rows], "value": [r[1] for r in rows]}, schema=SCHEMA
        )
        path = f"{index_dir(self.build)}/pending/{unit_id}.arrow"
        self.build.write_bytes_atomic(path, _ipc_bytes(table))
        self._remember(unit_id, table)

    def maybe_fold(self) -> None:
        """Fold the pending units into the buckets once there are FOLD_UNITS of them."""
        if len(self.pending) >= FOLD_UNITS:
            self.fold()

    def fold(self) -> None:
        """Merge every pending unit's rows into their buckets (see the module docstring)."""
        if not self.pending:
            return
        new_rows = pa.concat_tables(self.pending.values())
        grouped = _group(new_rows, self.manifest["prefix_chars"])
        generation = self._next_generation()
        written = list(
            _pool().map(lambda b: self._merge_bucket(b, grouped[b], generation), grouped)
        )
        manifest = dict(self.manifest)
        manifest["buckets"] = {**self.manifest["buckets"], **{b: generation for b in grouped}}
        manifest["rows"] = self.manifest["rows"] + sum(written)
        manifest["generation"] = generation
        self._commit_manifest(manifest)
        for unit in list(self.pending):
            self.build.delete(f"{index_dir(self.build)}/pending/{unit}.arrow")
        self.pending.clear()
        self.pending_values.clear()
        if manifest["rows"] / 16 ** manifest["prefix_chars"] > MAX_BUCKET_ROWS:
            self._split()

    # ---- internals -------------------------------------------------------------------------

    def bucket_of(self, key: bytes) -> str:
        return key.hex()[: self.manifest["prefix_chars"]]

    def bucket_path(self, bucket: str, generation: int) -> str:
        return f"{index_dir(self.build)}/buckets/{bucket}-{generation}.arrow"

    def _remember(self, unit_id: str, table: pa.Table) -> None:
        self.pending[unit_id] = table
        for key, value in zip(
            table.column("key").to_pylist(), table.column("value").to_pylist(), strict=True
        ):
            self.pending_values.setdefault(key, value)

    def _read_bucket(self, bucket: str) -> pa.Table:
        return _read_part(self.build, self.bucket_path(bucket, self.manifest["buckets"][bucket]))

    def _next_generation(self) -> int:
        return int(self.manifest.get("generation", 0)) + 1

    def _merge_bucket(self, bucket: str, rows: pa.Table, generation: int) -> int:
        """Write the bucket's next generation (old rows first: the first value of a key wins);
        returns how many rows it gained."""
        old = (
            self._read_bucket(bucket)
            if bucket in self.manifest["buckets"]
            else SCHEMA.empty_table()
        )
        merged = _dedupe_sorted(pa.concat_tables([old, rows]))
        self.build.write_bytes_atomic(self.bucket_path(bucket, generation), _ipc_bytes(merged))
        return merged.num_rows - old.num_rows

    def _commit_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest (the commit point), then delete bucket files it no longer names."""
        root = index_dir(self.build)
        self.build.write_json_atomic(f"{root}/manifest.json", manifest)
        self.manifest = manifest
        keep = {self.bucket_path(b, g) for b, g in manifest["buckets"].items()}
        for path in self.build.files(f"{root}/buckets"):
            if path not in keep:
                self.build.delete(path)

    def _split(self) -> None:
        """Every bucket into 16 by the next hex digit: one pass over the index, paid each time
        the index grows 16-fold, so its cost per row stays constant."""
        chars = self.manifest["prefix_chars"] + 1
        generation = self._next_generation()

        def split(bucket: str) -> dict[str, int]:
            parts = _group(self._read_bucket(bucket), chars)
            for child, table in parts.items():
                self.build.write_bytes_atomic(
                    self.bucket_path(child, generation), _ipc_bytes(table)
                )
            return {child: generation for child in parts}

        buckets: dict[str, int] = {}
        for named in _pool().map(split, sorted(self.manifest["buckets"])):
            buckets.update(named)
        manifest = {**self.manifest, "prefix_chars": chars, "buckets": buckets}
        manifest["generation"] = generation
        self._commit_manifest(manifest)


def reindex(build: BuildDir, ledger: StepLedger) -> dict[str, int]:
    """Rebuild the index from the committed recordings and quarantine of ingest (one scan per
    pass; passes bound memory). The new manifest replaces the old one at once; until then the
    old index (if any) stays whole. Returns row counts."""
    ledger.recover()
    parts = {
        table: [
            p
            for p in build.files(build.table_dir(table), ".parquet")
            if StepLedger.table_file_owner(p.rsplit("/", 1)[-1])[0] == ledger.step
        ]
        for table in ("recordings", "quarantine")
    }
    total = sum(_row_count(build, ps) for ps in parts.values())
    rows_guess = 2 * total
    chars = PREFIX_CHARS
    while rows_guess / 16**chars > MAX_BUCKET_ROWS:
        chars += 1
    passes = max(1, math.ceil(rows_guess / REINDEX_PASS_ROWS))
    root = index_dir(build)
    old = (
        _read_manifest(build, f"{root}/manifest.json")
        if build.exists(f"{root}/manifest.json")
        else {}
    )
    generation = int(old.get("generation", 0)) + 1
    index = CommitIndex(build, ledger, {"prefix_chars": chars, "buckets": {}, "generation": 0})
    buckets: dict[str, int] = {}
    rows = 0
    for p in range(passes):
        mine: dict[str, list[pa.Table]] = defaultdict(list)
        for chunk in _committed_rows(build, parts):
            for bucket, bucket_rows in _group(chunk, chars).items():
                if int(bucket, 16) % passes == p:
                    mine[bucket].append(bucket_rows)
        for bucket, tables in mine.items():
            merged = _dedupe_sorted(pa.concat_tables(tables))
            build.write_bytes_atomic(index.bucket_path(bucket, generation), _ipc_bytes(merged))
            buckets[bucket] = generation
            rows += merged.num_rows
    manifest = {
        "version": VERSION,
        "prefix_chars": chars,
        "rows": rows,
        "buckets": buckets,
        "generation": generation,
    }
    index._commit_manifest(manifest)
    if build.exists(f"{root}/pending"):
        build.delete(f"{root}/pending")
    return {"rows": rows, "buckets": len(buckets), "source_parts": sum(map(len, parts.values()))}


def _is_local(build: BuildDir) -> bool:
    return build.fs.type_name == "local"


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """One pool of I/O threads for the process (object stores answer many requests at once)."""
    return ThreadPoolExecutor(IO_THREADS, thread_name_prefix="commit-index")


def _committed_rows(build: BuildDir, parts: dict[str, list[str]]) -> Iterator[pa.Table]:
    """Index rows of the committed tables, part by part, in part order (so that the first
    original of a content, in commit-name order, wins exactly as the ingest did)."""
    for path in parts["recordings"]:
        dataset = pads.dataset(path, filesystem=build.fs, format="parquet")
        if "source_key" not in dataset.schema.names:
            raise CommitIndexError(
                f"{path} predates relocatable recording ids (recordings v1, no source_key): "
                "its ids cannot be kept; ingest the sources into a new build"
            )
        t = dataset.to_table(columns=["recording_id", "source_key", "content_sha1", "dup_of"])
        keys = [k for k in t.column("source_key").to_pylist() if k]
        originals = t.filter(pc.is_null(t.column("dup_of")))
        yield _rows(
            [(SOURCE, k, k) for k in keys]
            + [
                (CONTENT, sha, rid)
                for sha, rid in zip(
                    originals.column("content_sha1").to_pylist(),
                    originals.column("recording_id").to_pylist(),
                    strict=True,
                )
            ]
        )
    for path in parts["quarantine"]:
        t = pads.dataset(path, filesystem=build.fs, format="parquet").to_table()
        if "source_key" in t.column_names:
            keys = [k for k in t.column("source_key").to_pylist() if k]
            yield _rows([(SOURCE, k, k) for k in keys])


def _rows(triples: list[tuple[str, str, str]]) -> pa.Table:
    return pa.table(
        {
            "key": [digest(kind, text) for kind, text, _ in triples],
            "value": [v for *_, v in triples],
        },
        schema=SCHEMA,
    )


def _row_count(build: BuildDir, paths: list[str]) -> int:
    if not paths:
        return 0
    return pads.dataset(paths, filesystem=build.fs, format="parquet").count_rows()


def _group(table: pa.Table, chars: int) -> dict[str, pa.Table]:
    """Rows by bucket (the first `chars` hex digits of the key), each group in input order."""
    if not table.num_rows:
        return {}
    keys = np.frombuffer(table.column("key").combine_chunks().buffers()[1], np.uint8)
    keys = keys.reshape(-1, KEY_BYTES)
    # the leading `chars` hex digits of each key, as an integer
    lead = keys[:, 0].astype(np.int64)
    for i in range(1, math.ceil(chars / 2)):
        lead = lead * 256 + keys[:, i]
    lead >>= 4 * (2 * math.ceil(chars / 2) - chars)
    order = np.argsort(lead, kind="stable")
    ids, starts = np.unique(lead[order], return_index=True)
    bounds = [*starts.tolist(), len(order)]
    sorted_table = table.take(pa.array(order))
    return {
        f"{int(b):0{chars}x}": sorted_table.slice(bounds[i], bounds[i + 1] - bounds[i])
        for i, b in enumerate(ids.tolist())
    }


def _dedupe_sorted(table: pa.Table) -> pa.Table:
    """Sorted by key, one row per key: the first row (in input order) of a key wins."""
    keys = _key_array(table)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:] != keys[:-1]
    return table.take(pa.array(order[first]))


def _key_array(table: pa.Table) -> np.ndarray:
    chunks = table.column("key").chunks
    column = chunks[0] if len(chunks) == 1 else table.column("key").combine_chunks()
    if not len(column):
        return np.zeros(0, f"S{KEY_BYTES}")
    data = column.buffers()[1]
    return np.frombuffer(data, f"S{KEY_BYTES}", count=len(column), offset=column.offset * KEY_BYTES)


def _search(bucket: pa.Table, keys: list[bytes]) -> Iterator[tuple[bytes, str]]:
    """(key, value) for the `keys` in a sorted bucket (binary search, no scan)."""
    column = _key_array(bucket)
    if not len(column):
        return
    at = np.searchsorted(column, np.array(keys, f"S{KEY_BYTES}"))
    stored, values = bucket.column("key"), bucket.column("value")
    for key, i in zip(keys, at.tolist(), strict=True):
        # compare the raw bytes: numpy's fixed-width bytes drop trailing NULs when read back
        if i < len(column) and stored[i].as_py() == key:
            yield key, values[i].as_py()


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, SCHEMA) as writer:
        writer.write_table(table.cast(SCHEMA).combine_chunks())
    return sink.getvalue().to_pybytes()


def _read_part(build: BuildDir, path: str) -> pa.Table:
    """An index part, or CommitIndexError naming it and the rebuild command."""
    hint = REBUILD_HINT.format(build=build.uri)
    try:
        # whole-file reads, then a zero-copy Arrow view: parts are small, and this costs a
        # third of a memory map's set-up (the probe's cost is per part, not per byte)
        if _is_local(build):
            with open(path, "rb") as f:
                data = f.read()
        else:
            with build.fs.open_input_stream(path) as f:
                data = f.read()
        table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
    except FileNotFoundError as exc:
        raise CommitIndexError(f"commit index part {path} is missing; {hint}") from exc
    except (OSError, pa.ArrowInvalid) as exc:
        if build.fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise CommitIndexError(f"commit index part {path} is missing; {hint}") from exc
        raise CommitIndexError(f"commit index part {path} is unreadable ({exc}); {hint}") from exc
    if not table.schema.equals(SCHEMA):
        raise CommitIndexError(
            f"commit index part {path} has schema {table.schema}, expected {SCHEMA}; {hint}"
        )
    return table


def _read_manifest(build: BuildDir, path: str) -> dict[str, Any]:
    hint = REBUILD_HINT.format(build=build.uri)
    try:
        manifest = build.read_json(path)
    except (OSError, ValueError) as exc:
        raise CommitIndexError(
            f"commit index manifest {path} is unreadable ({exc}); {hint}"
        ) from exc
    if manifest.get("version") != VERSION:
        raise CommitIndexError(
            f"commit index manifest {path} is version {manifest.get('version')}, this code "
            f"reads {VERSION}; {hint}"
        )
    return manifest
