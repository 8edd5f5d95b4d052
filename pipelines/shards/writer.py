"""Stage shards: samples -> deterministic webdataset tars plus a byte-offset index per tar.

Owns the on-disk training format of one stage directory:

    <out_dir>/<stage>-g0000-000000.tar       webdataset tar (generation 0, shard 0); each
                                             sample's members are contiguous, named <key>.json,
                                             <key>.flac, <key>.speech_tokens.npy, ...
    <out_dir>/_index/<stage>-g0000-000000.tar.idx   little-endian uint64: byte offset of each
                                             sample's first member header, then a sentinel = the
                                             tar's size in bytes
    <out_dir>/_index/index.json              per-shard counts/bytes/sha256, the generations,
                                             per-task and stage totals

Only tars sit directly in a stage directory: Ray Data (and Spark, Hadoop) skip names starting
with "_" or ".", so a plain `ray.data.read_webdataset(stage_dir)` or a glob of `*.tar` reads the
stage with no extra arguments, on local disk and on object stores alike.

Tars are written with webdataset's `TarWriter` (fixed integer mtime=0 so no PAX headers, uid/gid 0, fixed user/group
names, mode 0o444, members in sorted order), so the same samples and seed give byte-identical
files. Every file is written to a temp name and renamed into place, so a crash never leaves a
half-written shard under its final name. Must not: do I/O beyond `out_dir`, decode audio, or drop
samples silently (an invalid sample raises `ValueError` naming its key).

Readers of the format (`pipelines/verify.py`, `minmo/train/data.py`, `pipelines/stats/`) take
it from here too, so the layout has one home: `read_index` (with the version check),
`list_shards`, `read_offsets`, `shard_path`, `split_member`, `is_temp_name`, `HashingReader`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from minmo.io.fs import to_uri

INDEX_NAME = "index.json"
# Version 2: index and .idx files under META_DIR, shard names carry their generation.
INDEX_VERSION = 2
# Everything in a stage directory that is not a shard lives here (see the module docstring).
META_DIR = "_index"
# index.json's path relative to a stage directory, as messages name it.
INDEX_RELPATH = f"{META_DIR}/{INDEX_NAME}"
# A `.idx` file: one offset per sample, then the tar's size.
OFFSETS_DTYPE = np.dtype("<u8")
# A writer's temp file is ".<final name>" + TEMP_MARKER + "<pid>": the leading dot hides it from
# Ray Data and `list_shards`, the marker tells every reader it is not a finished file.
TEMP_MARKER = ".tmp-"
# Members a sample may carry besides "json" (required); the tar member name is "<key>.<member>".
ARRAY_MEMBERS = ("speech_tokens.npy", "text_tokens.npy", "labels.npy")
OPTIONAL_MEMBERS = ("flac", *ARRAY_MEMBERS)
ALL_MEMBERS = ("json", *OPTIONAL_MEMBERS)
# webdataset splits "<key>.<ext>" at the first dot, so keys may not contain dots or slashes.
KEY_RE = re.compile(r"^[A-Za-z0-9_\-:+=@,]+$")
# webdataset's own split of a member name into (key, extension): the extension starts at the
# first dot of the base name; a directory part stays in the key.
MEMBER_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
# Read size for streaming a shard (they are hundreds of MB).
READ_BLOCK = 1 << 20
# An int: a float mtime makes tarfile emit a PAX header before every member.
TAR_MTIME = 0
TAR_USER = "minmo"
TAR_MODE = 0o444


def validate_key(key: Any) -> str | None:
    """Return why `key` is not a valid sample key, or None when it is."""
    if not isinstance(key, str) or not key:
        return f"key must be a non-empty str, got {key!r}"
    if not KEY_RE.match(key):
        return f"key {key!r} must be ASCII letters/digits/_-:+=@, (no dots, slashes or spaces)"
    return None


def shard_name(stage: str, index: int, generation: int = 0, part: int = 0) -> str:
    """`<stage>-g<generation>-<index>.tar`: generations are appended, never renumbered. A shard
    its writer had to cut (the seeded hash overfilled it) adds `-<part>` from its second part."""
    suffix = f"-{part}" if part else ""
    return f"{stage}-g{generation:04d}-{index:06d}{suffix}.tar"


def split_member(name: str) -> tuple[str, str] | None:
    """(key, extension) of a tar member name, split as webdataset splits it; None when the
    name has no extension."""
    match = MEMBER_RE.match(name)
    return None if match is None else (match.group(1), match.group(2))


def shard_path(stage_dir: str, name: str) -> str:
    """Where shard `name` (a tar's file name) lives: directly in the stage directory."""
    return f"{str(stage_dir).rstrip('/')}/{name}"


def index_path(stage_dir: str) -> str:
    """Where a stage directory's index.json lives (a path or URI string, joined with "/")."""
    return f"{str(stage_dir).rstrip('/')}/{INDEX_RELPATH}"


def offsets_relpath(name: str) -> str:
    """The `.idx` of shard `name`, relative to the stage directory (as messages name it)."""
    return f"{META_DIR}/{name}.idx"


def offsets_path(stage_dir: str, name: str) -> str:
    """Where the `.idx` of shard `name` (a tar's file name) lives."""
    return f"{str(stage_dir).rstrip('/')}/{offsets_relpath(name)}"


def temp_name(name: str, pid: int | None = None) -> str:
    """The name a writer (process `pid`, default this one) writes `name` under before the rename."""
    return f".{name}{TEMP_MARKER}{os.getpid() if pid is None else pid}"


def is_temp_name(name: str) -> bool:
    """Whether a file name (or path) is a writer's temp file, its own or one left by a killed
    writer: never a finished file, whatever its suffix."""
    return TEMP_MARKER in name.rsplit("/", 1)[-1]


def list_shards(fs: pafs.FileSystem, stage_dir: str) -> dict[str, pafs.FileInfo]:
    """The stage directory's shards by file name, from one listing: `.tar` files only. Hidden
    names (a leading ".", which Ray Data skips too) and writers' temp files are not shards."""
    return {
        e.base_name: e
        for e in fs.get_file_info(pafs.FileSelector(stage_dir, recursive=False))
        if e.type == pafs.FileType.File
        and e.base_name.endswith(".tar")
        and not e.base_name.startswith(".")
        and not is_temp_name(e.base_name)
    }


def read_index(
    fs: pafs.FileSystem, stage_dir: str, *, check_version: bool = True
) -> dict[str, Any]:
    """A stage directory's `_index/index.json` on `fs`, parsed.

    Raises FileNotFoundError when it is missing (saying when an index.json beside the tars is
    the version-1 layout), ValueError when it is not a JSON object or, with `check_version`,
    when its version is not INDEX_VERSION. Messages name the file as a URI and say how to fix
    it. The caller checks the fields it needs. `check_version=False` is for readers of figures
    only (`minmo stats`), which report any index they find.
    """
    path = index_path(stage_dir)
    where = to_uri(fs, path)
    try:
        with fs.open_input_stream(path) as f:
            raw = f.read()
    except FileNotFoundError:
        version1 = f"{str(stage_dir).rstrip('/')}/{INDEX_NAME}"  # beside the tars
        old = fs.get_file_info(version1).type == pafs.FileType.File
        raise FileNotFoundError(
            f"{where} not found: "
            + (
                f"{INDEX_NAME} beside the tars is the version-1 layout; rebuild the shards "
                "with this checkout's `minmo shards`"
                if old
                else "not a stage directory written by `minmo shards` (one holds the "
                f"<stage>-gNNNN-NNNNNN.tar shards and {INDEX_RELPATH})"
            )
        ) from None
    try:
        index = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(index, dict):
        raise ValueError(f"{where}: not a JSON object")
    if check_version and index.get("version") != INDEX_VERSION:
        raise ValueError(
            f"{where}: index version {index.get('version')!r}, this checkout reads version "
            f"{INDEX_VERSION}; rebuild the shards with this checkout's `minmo shards`"
        )
    return index


def read_offsets(fs: pafs.FileSystem, stage_dir: str, name: str) -> np.ndarray:
    """Shard `name`'s `.idx`: each sample's first header offset, then the tar's size (read-only).
    Raises FileNotFoundError when it is missing, ValueError when its size is not a whole number
    of offsets."""
    with fs.open_input_stream(offsets_path(stage_dir, name)) as f:
        raw = f.read()
    if len(raw) % OFFSETS_DTYPE.itemsize:
        raise ValueError(
            f"{offsets_relpath(name)} size {len(raw)} is not a multiple of {OFFSETS_DTYPE.itemsize}"
        )
    return np.frombuffer(raw, dtype=OFFSETS_DTYPE)


def _shuffle_rank(seed: int, key: str) -> bytes:
    # A per-key hash makes the order independent of input order and of Python's hash seed.
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def encode_sample(sample: dict[str, Any]) -> dict[str, bytes | str]:
    """Validate one sample and encode every member to bytes (json: sorted keys, compact UTF-8)."""
    key = sample.get("__key__")
    if (why := validate_key(key)) is not None:
        raise ValueError(why)
    unknown = set(sample) - {"__key__", *ALL_MEMBERS}
    if unknown:
        raise ValueError(f"sample {key}: unknown members {sorted(unknown)}; allowed {ALL_MEMBERS}")
    if not isinstance(sample.get("json"), dict):
        raise ValueError(f"sample {key}: 'json' member (a dict) is required")
    out: dict[str, bytes | str] = {"__key__": str(key)}
    out["json"] = json.dumps(
        sample["json"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    if "flac" in sample:
        if not isinstance(sample["flac"], (bytes, bytearray)):
            raise ValueError(f"sample {key}: 'flac' must be bytes")
        out["flac"] = bytes(sample["flac"])
    for name in ARRAY_MEMBERS:
        if name in sample:
            arr = sample[name]
            if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iu":
                raise ValueError(f"sample {key}: {name!r} must be an integer numpy array")
            out[name] = _npy_bytes(arr)
    return out


def _tar_bytes_estimate(encoded: dict[str, bytes | str]) -> int:
    # Header block + payload rounded up to 512-byte blocks, per member.
    return sum(512 + -(-len(v) // 512) * 512 for k, v in encoded.items() if k != "__key__")


def _stats(sample: dict[str, Any]) -> dict[str, Any]:
    meta = sample["json"]
    return {
        "task": str(meta.get("task", "unknown")),
        "audio_s": float(meta.get("duration_s", 0.0) or 0.0),
        "text_tokens": int(np.size(sample["text_tokens.npy"]))
        if "text_tokens.npy" in sample
        else 0,
        "speech_tokens": int(np.size(sample["speech_tokens.npy"]))
        if "speech_tokens.npy" in sample
        else 0,
    }


def is_local(fs: pafs.FileSystem) -> bool:
    return fs.type_name == "local"


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Local: temp name + rename. Object stores: one PUT, which is atomic by itself (an upload
    that fails leaves no object), so no temp key is needed."""
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if not is_local(fs):
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    tmp = f"{parent}/{temp_name(path.rsplit('/', 1)[1])}"
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)


def sha256_file(path: Path | str, fs: pafs.FileSystem | None = None) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (shards are hundreds of MB)."""
    h = hashlib.sha256()
    fs = fs or pafs.LocalFileSystem()
    with fs.open_input_stream(str(path)) as f:
        for block in iter(lambda: f.read(READ_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


class _HashingFile:
    """Write-only file wrapper: counts bytes and hashes them on the way through, so a shard's
    sha256 and size come for free instead of re-reading hundreds of MB."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.sha256.update(data)
        self.bytes += len(data)
        return len(data)

    def flush(self) -> None:
        pass  # the pyarrow stream buffers itself; flushing per member would cost an upload part


class HashingReader:
    """Read-only stream wrapper, the reading twin of `_HashingFile`: hashes and counts what
    passes through, so one sequential read of a tar gives its sha256 and size besides the
    members (one GET on an object store)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n) if n is not None and n >= 0 else self.raw.read()
        self.sha256.update(data)
        self.bytes += len(data)
        return data

    def drain(self) -> None:
        """Read to the end (tarfile stops at the end-of-archive blocks, before any padding)."""
        while self.read(READ_BLOCK):
            pass


class ShardTarWriter:
    """One shard, streamed: encoded samples in, then the tar + its `.idx` committed.

    Writes go straight to the stage directory's filesystem (local or object store), from
    whichever process runs the writer. Local: the tar is streamed to a temp name (`temp_name`,
    skipped by every reader) and renamed on `close`. Object stores: the tar streams as a
    multipart upload that only becomes an object when `close` completes it; an aborted or killed
    writer leaves no object under the shard's name. Either way the `.idx` is written after the
    tar, and the caller's done marker after both: a shard without a marker is redone.
    Members go through webdataset's TarWriter with fixed metadata (see module docstring).
    """

    def __init__(self, stage_dir: str | Path, name: str, fs: pafs.FileSystem | None = None) -> None:
        self.fs = fs or pafs.LocalFileSystem()
        self.stage_dir = str(stage_dir).rstrip("/")
        self.name = name
        self.path = f"{self.stage_dir}/{name}"
        self.fs.create_dir(self.stage_dir, recursive=True)
        local = is_local(self.fs)
        self.tmp = f"{self.stage_dir}/{temp_name(name)}" if local else self.path
        self._raw = self.fs.open_output_stream(self.tmp)
        self._file = _HashingFile(self._raw)
        # Imported here, not at the top: webdataset imports torch (about 600 MB resident), and
        # the readers of this module (verify, stats, the loader) must stay light.
        from webdataset import TarWriter

        self._writer = TarWriter(
            self._file,
            user=TAR_USER,
            group=TAR_USER,
            mode=TAR_MODE,
            compress=False,
            encoder=False,
            mtime=TAR_MTIME,
        )
        self.offsets: list[int] = []

    def add(self, encoded: dict[str, bytes | str]) -> None:
        # TarFile.offset is the logical position of the next header, even in stream mode.
        self.offsets.append(self._writer.tarstream.offset)
        self._writer.write(encoded)

    def close(self) -> tuple[int, str]:
        self._writer.close()  # writes the end-of-archive blocks through _HashingFile
        self._raw.close()
        size = self._file.bytes
        stored = self.fs.get_file_info(self.tmp).size
        if size != stored:
            raise OSError(f"{self.tmp}: wrote {size} bytes but the file has {stored}")
        if self.tmp != self.path:
            self.fs.move(self.tmp, self.path)
        write_bytes_atomic(
            self.fs,
            offsets_path(self.stage_dir, self.name),
            np.asarray([*self.offsets, size], dtype=OFFSETS_DTYPE).tobytes(),
        )
        return size, self._file.sha256.hexdigest()

    def abort(self) -> None:
        """Drop the shard. On an object store the multipart upload is aborted, not completed."""
        try:
            if is_local(self.fs):
                self._raw.close()
                self.fs.delete_file(self.tmp)
            else:
                self._raw.abort() if hasattr(self._raw, "abort") else None
        except OSError:
            pass


def _write_one_tar(
    out_dir: Path, name: str, encoded_samples: list[dict[str, bytes | str]]
) -> tuple[int, str]:
    writer = ShardTarWriter(out_dir, name)
    try:
        for enc in encoded_samples:
            writer.add(enc)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def _chunks(
    encoded: list[tuple[dict[str, bytes | str], dict[str, Any]]], max_samples: int, max_bytes: int
) -> Iterator[list[tuple[dict[str, bytes | str], dict[str, Any]]]]:
    chunk: list[tuple[dict[str, bytes | str], dict[str, Any]]] = []
    chunk_bytes = 0
    for enc, st in encoded:
        size = _tar_bytes_estimate(enc)
        # A single oversize sample still gets its own shard rather than being dropped.
        if chunk and (len(chunk) >= max_samples or chunk_bytes + size > max_bytes):
            yield chunk
            chunk, chunk_bytes = [], 0
        chunk.append((enc, st))
        chunk_bytes += size
    if chunk:
        yield chunk


def _add(totals: dict[str, Any], st: dict[str, Any]) -> None:
    totals["samples"] += 1
    totals["audio_s"] = round(totals["audio_s"] + st["audio_s"], 6)
    totals["text_tokens"] += st["text_tokens"]
    totals["speech_tokens"] += st["speech_tokens"]


def _zero() -> dict[str, Any]:
    return {"samples": 0, "audio_s": 0.0, "text_tokens": 0, "speech_tokens": 0}


def write_stage_shards(
    samples: Iterable[dict[str, Any]],
    out_dir: Path,
    stage: str,
    max_samples: int = 2000,
    max_bytes: int = 500_000_000,
    seed: int = 0,
    shuffle: bool = True,
) -> dict[str, Any]:
    """Write one stage's samples as shards + `.idx` files + `index.json`; return the index.

    All samples are held in memory (encoded) for the global shuffle. With `shuffle`, order is by
    sha256(f"{seed}:{key}"), so it does not depend on input order; without it, input order is kept.
    A shard closes at `max_samples` samples or when the next sample would pass `max_bytes`.
    """
    if validate_key(stage) is not None:
        raise ValueError(f"stage {stage!r} must be a valid key-like name: {validate_key(stage)}")
    if max_samples < 1 or max_bytes < 1:
        raise ValueError("max_samples and max_bytes must be >= 1")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    encoded: list[tuple[dict[str, bytes | str], dict[str, Any]]] = []
    seen: set[str] = set()
    for sample in samples:
        enc = encode_sample(sample)
        key = str(enc["__key__"])
        if key in seen:
            raise ValueError(f"duplicate sample key {key!r}")
        seen.add(key)
        encoded.append((enc, _stats(sample)))
    if shuffle:
        encoded.sort(key=lambda pair: _shuffle_rank(seed, str(pair[0]["__key__"])))

    shards: list[dict[str, Any]] = []
    tasks: dict[str, dict[str, Any]] = {}
    stage_totals = {**_zero(), "shards": 0, "bytes": 0}
    for i, chunk in enumerate(_chunks(encoded, max_samples, max_bytes)):
        name = shard_name(stage, i)
        size, digest = _write_one_tar(out_dir, name, [enc for enc, _ in chunk])
        shard = {"name": name, "generation": 0, **_zero()}
        for _, st in chunk:
            _add(shard, st)
            _add(tasks.setdefault(st["task"], _zero()), st)
            _add(stage_totals, st)
        shard["bytes"] = size
        shard["sha256"] = digest
        stage_totals["shards"] += 1
        stage_totals["bytes"] += shard["bytes"]
        shards.append(shard)

    # Shards left over from an earlier, larger run would otherwise look like part of this stage.
    keep = {s["name"] for s in shards}
    for old in out_dir.glob(f"{stage}-*.tar"):
        if old.name not in keep:
            old.unlink()
            Path(offsets_path(str(out_dir), old.name)).unlink(missing_ok=True)

    index = {
        "version": INDEX_VERSION,
        "stage": stage,
        "seed": seed,
        "shuffle": shuffle,
        "generations": [{"generation": 0, "shards": len(shards)}],
        "shards": shards,
        "tasks": dict(sorted(tasks.items())),
        "totals": stage_totals,
    }
    write_bytes_atomic(
        pafs.LocalFileSystem(),
        index_path(str(out_dir.resolve())),
        (json.dumps(index, indent=2, sort_keys=True) + "\n").encode(),
    )
    return index
