"""Shard tars: the one writer and the one reader of the format `schemas/shards.py` defines.

Owns the bytes: encoding a sample's members (`encode_sample`, `npy_bytes`), streaming a shard
tar plus its `.idx` (`ShardTarWriter`), and reading them back: index.json (`read_index`, with
the version check), the listing (`list_shards`), a `.idx` (`read_offsets`), the members of a
tar or of one sample's byte span (`iter_members`), the json members alone (`json_members`),
and hashing while streaming (`HashingReader`). The shards step, the trainer
(`minmo/train/data.py`), verify and stats all go through here.

Tars are written with webdataset's `TarWriter` (fixed integer mtime=0 so no PAX headers,
uid/gid 0, fixed user/group names, mode 0o444, members in sorted order), so the same samples
give byte-identical files. Every file is written to a temp name and renamed into place (an
object store: one upload that only becomes an object when complete), so a crash never leaves
a half-written shard under its final name.

Must not: import webdataset or torch at module level (the readers, Ray stats workers included,
stay light), decode audio, or know which samples go into which shard (that is the shards step).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import pyarrow.fs as pafs

from minmo.io.atomic import write_bytes_atomic
from minmo.io.errors import naming_disk_full
from minmo.io.fs import is_local, to_uri
from schemas.shards import (
    ALL_MEMBERS,
    ARRAY_MEMBERS,
    INDEX_NAME,
    INDEX_RELPATH,
    INDEX_VERSION,
    OFFSETS_DTYPE,
    index_path,
    is_temp_name,
    offsets_path,
    offsets_relpath,
    split_member,
    temp_name,
    validate_key,
)

# Read size for streaming a shard (they are hundreds of MB).
READ_BLOCK = 1 << 20
# Buffer for a sequential read of a shard on an object store.
STREAM_BUFFER_BYTES = 1 << 22
# An int: a float mtime makes tarfile emit a PAX header before every member.
TAR_MTIME = 0
TAR_USER = "minmo"
TAR_MODE = 0o444
BLOCK = 512  # tar's header and padding unit
_END = bytes(BLOCK)


# -- the layout --------------------------------------------------------------------------------


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


# -- writing -----------------------------------------------------------------------------------


def npy_bytes(arr: np.ndarray) -> bytes:
    """A `.npy` member: the array C-contiguous, no pickle (readers load with allow_pickle=False)."""
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
            out[name] = npy_bytes(arr)
    return out


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
        # Deferred, a heavy dependency: webdataset imports torch (about 600 MB resident), and
        # the readers of this module (verify, stats workers, the loader) must stay light.
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
        with naming_disk_full(self.path):
            self._writer.write(encoded)

    def close(self) -> tuple[int, str]:
        with naming_disk_full(self.path):
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


# -- reading -----------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class TarMember:
    """One member of a shard tar, named as webdataset names it."""

    name: str
    key: str  # the sample key; the whole name when it has no extension
    ext: str | None  # "json", "flac", "speech_tokens.npy", ...; None without an extension
    offset: int  # where its first header starts, extended (PAX / GNU long-name) headers
    # included: exactly what a `.idx` entry points at
    size: int  # the payload size the header declares
    is_file: bool
    data: bytes | None  # the payload as read (short when truncated); None when not read


def iter_members(
    fileobj: Any, *, stream: bool, want: Callable[[str | None], bool] | None = None
) -> Iterator[TarMember]:
    """The members of a tar (or of one sample's `.idx` byte span) in order, through tarfile.

    `stream=True` reads `fileobj` strictly sequentially (one GET on an object store; a
    `HashingReader` sees every byte), `stream=False` lets tarfile seek. Only regular files
    whose extension `want` accepts (default: all) have their payload read; tarfile skips the
    others. Raises what tarfile raises on a corrupt or truncated tar (TarError, OSError,
    EOFError) when the iteration reaches it."""
    with tarfile.open(fileobj=cast(IO[bytes], fileobj), mode="r|" if stream else "r:") as tar:
        for info in tar:
            key, ext = split_member(info.name) or (info.name, None)
            data = None
            if info.isfile() and (want is None or want(ext)):
                handle = tar.extractfile(info)
                data = handle.read() if handle is not None else b""
            yield TarMember(info.name, key, ext, info.offset, info.size, info.isfile(), data)


class _NotPlain(Exception):
    """A header the walk does not handle (PAX or GNU long names, base-256 sizes, links)."""


def _read_exactly(raw: Any, n: int) -> bytes:
    data = raw.read(n)
    if len(data) != n:
        raise EOFError(f"truncated tar: {n} bytes expected, {len(data)} read")
    return data


def _json_by_headers(raw: Any, seekable: bool) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of each `.json` member, walking the plain ustar headers
    `ShardTarWriter` produces (fixed metadata, short names).

    Why not tarfile: it builds a TarInfo per member (about 100 us each, and a sample has four
    members), three quarters of the time of reading a shard's metadata. This walk checks each
    header's checksum and the archive's length (a truncated or corrupt shard raises, as
    tarfile would) and raises _NotPlain on anything else, for the caller to use tarfile."""
    pos = 0
    size_of_file = raw.size() if seekable else None
    while True:
        header = raw.read_at(BLOCK, pos) if seekable else raw.read(BLOCK)
        if not header or header == _END:  # end of archive (or a tar without its end blocks)
            return
        if len(header) < BLOCK:
            raise EOFError(f"truncated tar header at byte {pos}")
        stored = header[148:156].strip(b" \0")
        if not stored or int(stored, 8) != 256 + sum(header[:148]) + sum(header[156:]):
            raise tarfile.HeaderError(f"bad tar header checksum at byte {pos}")
        kind = header[156:157]
        if kind not in (b"0", b"\0", b"5") or header[124] & 0x80:
            raise _NotPlain(kind)
        name = header[:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
        if prefix:
            name = prefix + b"/" + name
        size = int(header[124:136].strip(b" \0") or b"0", 8)
        padded = -(-size // BLOCK) * BLOCK
        if seekable:
            if pos + BLOCK + size > size_of_file:
                raise EOFError(f"truncated tar: member {name!r} ends past the file's end")
            if kind != b"5" and name.endswith(b".json"):
                yield name.decode("utf-8"), raw.read_at(size, pos + BLOCK)
        else:
            data = _read_exactly(raw, padded)
            if kind != b"5" and name.endswith(b".json"):
                yield name.decode("utf-8"), data[:size]
        pos += BLOCK + padded


def _json_by_tarfile(raw: Any, seekable: bool) -> Iterator[tuple[str, bytes]]:
    """The same as `_json_by_headers`, for any tar tarfile reads."""
    for member in iter_members(raw, stream=not seekable, want=lambda ext: ext == "json"):
        if member.is_file and member.name.endswith(".json"):
            yield member.name, member.data or b""


def _open_tar(fs: pafs.FileSystem, path: str) -> Any:
    """Local: a seekable file, so member data is skipped by seeking. Object stores: one
    sequential stream; seeking there would cost a ranged GET per member header, and the audio
    members sit between the json ones anyway."""
    if is_local(fs):
        return fs.open_input_file(path)
    return fs.open_input_stream(path, buffer_size=STREAM_BUFFER_BYTES)


def json_members(fs: pafs.FileSystem, path: str) -> list[tuple[str, bytes]]:
    """(member name, bytes) of every `.json` member of the tar at `path`, in tar order: a few
    kB per sample, the audio never read on local disk (it is seeked over).

    The plain ustar headers our writer produces are walked directly; a tar some other tool
    wrote (PAX, long names) is read again through tarfile. Raises what a corrupt or truncated
    tar gives (OSError, tarfile.TarError, EOFError, ValueError)."""
    seekable = is_local(fs)
    try:
        with _open_tar(fs, path) as raw:
            return list(_json_by_headers(raw, seekable))
    except _NotPlain:
        with _open_tar(fs, path) as raw:
            return list(_json_by_tarfile(raw, seekable))
