"""Storage access for ingest: local paths and object-store URIs through `pyarrow.fs`, alike.

Owns: turning a path or URI (`/data/x.flac`, `s3://bucket/x.flac`) into a pyarrow `FileSystem`
and a path on it (`open_filesystem`), which schemes a command's path argument may name
(`check_scheme`), the `Location` value the source readers pass around, and the few reads they
need (line streams, small whole files, listings, batched existence checks).

Must not: know about any source layout or decode audio. Everything goes through pyarrow.fs so
that a layout reader written against a local directory works unchanged on `s3://`.

S3 endpoint: the `endpoint_override` option when given, else the standard `AWS_ENDPOINT_URL_S3`
/ `AWS_ENDPOINT_URL` environment variables (an `http://host:port` value selects plain HTTP, as
MinIO and moto need). Region: the `region` option, else `AWS_REGION` / `AWS_DEFAULT_REGION`,
else us-east-1; it is never looked up over the network, so an unreachable endpoint fails on the
first read instead of hanging in a region probe.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from schemas.quarantine import ReasonCode, Rejected

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")

# pyarrow's FileSystem.type_name → the URI scheme that names it.
_URI_SCHEME = {"s3": "s3", "gcs": "gs", "hdfs": "hdfs"}

_LINE_BUFFER_BYTES = 1 << 20


# What a command's path argument may name: a local path is always allowed (scheme None).
LOCAL_SCHEMES = ("file",)
STORE_SCHEMES = ("file", "s3", "gs")
# `s3:/bucket/key`: what pathlib makes of `s3://bucket/key`. Refused rather than read as a
# relative local path (it would create ./s3:/bucket/...).
_COLLAPSED = re.compile(r"^(s3|s3a|gs|gcs|file|hdfs):/(?!/)", re.IGNORECASE)


def check_scheme(command: str, uri: str, supported: Iterable[str] = STORE_SCHEMES) -> str:
    """`uri` unchanged when `command` can serve it, else ValueError naming both.

    A plain local path always passes; a URI passes when its scheme is in `supported` (`s3a`
    and `gcs` count as `s3` and `gs`). Commands call this before touching the path, so an
    unsupported URI never becomes a local directory named after it.
    """
    uri = os.fspath(uri)
    if _COLLAPSED.match(uri):
        raise ValueError(
            f"{command}: {uri!r} looks like a URI whose '//' was collapsed to '/' "
            f"(write {uri.replace(':/', '://', 1)!r}); refusing to read it as a local path"
        )
    scheme = uri_scheme(uri)
    if scheme is None:
        return uri
    canonical = {"s3a": "s3", "gcs": "gs"}.get(scheme, scheme)
    allowed = tuple(supported)
    if canonical not in allowed:
        served = ", ".join(["local paths", *(f"{s}://" for s in allowed)])
        raise ValueError(f"{command} cannot serve {scheme}:// URIs ({uri}); it takes {served}")
    return uri


def uri_scheme(uri: str) -> str | None:
    """`s3` for `s3://b/k`, None for a plain local path (also for `C:/...`-free POSIX paths)."""
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else None


def open_filesystem(uri: str, **options: Any) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding `uri` and the path of `uri` on it.

    Local paths (and `file://` URIs) give `LocalFileSystem` and an absolute path; `s3://bucket/key`
    gives an `S3FileSystem` (keyword `options` are its constructor arguments) and `bucket/key`.
    Other schemes go through `pyarrow.fs.FileSystem.from_uri`. Filesystems are cached per scheme
    and options, because every manifest row may name its own URI and building an S3 client per
    row would dominate the listing.
    """
    scheme = uri_scheme(uri)
    if scheme is None or scheme == "file":
        path = uri[len("file://") :] if scheme == "file" else uri
        return _local(), posixpath.normpath(os.path.abspath(os.path.expanduser(path)))
    rest = uri[len(scheme) + 3 :].rstrip("/")
    if scheme in ("s3", "s3a"):
        return _s3(_freeze(_s3_options(options))), rest
    if scheme in ("gs", "gcs"):
        return _gcs(_freeze(options)), rest
    if options:
        raise ValueError(
            f"storage options are only supported for s3:// and gs:// URIs, not {uri!r}"
        )
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path


def _freeze(options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(options.items()))


@functools.lru_cache(maxsize=1)
def _local() -> pafs.FileSystem:
    return pafs.LocalFileSystem()


def _s3_options(options: dict[str, Any]) -> dict[str, Any]:
    """Fill the S3 endpoint and region from the standard AWS variables unless given."""
    opts = dict(options)
    endpoint = (
        opts.pop("endpoint_override", None)
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    if endpoint:
        scheme = uri_scheme(endpoint)
        if scheme in ("http", "https"):
            opts.setdefault("scheme", scheme)
            endpoint = endpoint[len(scheme) + 3 :]
        opts["endpoint_override"] = endpoint.rstrip("/")
    region = opts.get("region") or os.environ.get("AWS_REGION")
    opts["region"] = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return opts


@functools.lru_cache(maxsize=16)
def _s3(frozen: tuple[tuple[str, Any], ...]) -> pafs.FileSystem:
    return pafs.S3FileSystem(**dict(frozen))


@functools.lru_cache(maxsize=16)
def _gcs(frozen: tuple[tuple[str, Any], ...]) -> pafs.FileSystem:
    return pafs.GcsFileSystem(**dict(frozen))


def to_uri(fs: pafs.FileSystem, path: str) -> str:
    """The canonical URI of `path` on `fs`: the path itself when local, else `scheme://path`."""
    if fs.type_name == "local":
        return path
    return f"{_URI_SCHEME.get(fs.type_name, fs.type_name)}://{path}"


def is_local(fs: pafs.FileSystem) -> bool:
    """Whether `fs` is local disk: renames are cheap and atomic there, seeks free."""
    return fs.type_name == "local"


@dataclass(frozen=True)
class Location:
    """A path on a filesystem, with the options that opened it (so relatives open alike)."""

    fs: pafs.FileSystem
    path: str
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> Location:
        fs, path = open_filesystem(uri, **options)
        return cls(fs, path, _freeze(options))

    @property
    def uri(self) -> str:
        return to_uri(self.fs, self.path)

    @property
    def is_local(self) -> bool:
        return self.fs.type_name == "local"

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def parent(self) -> Location:
        return Location(self.fs, posixpath.dirname(self.path), self.options)

    def child(self, relative: str) -> Location:
        return Location(
            self.fs, posixpath.normpath(posixpath.join(self.path, relative)), self.options
        )

    def resolve(self, ref: str) -> Location:
        """Where `ref` (a URI, an absolute path or a path relative to this directory) points.

        An absolute path in a manifest on an object store means a key on the same store (there
        is no other root it could mean); on a local manifest it is a local path.
        """
        scheme = uri_scheme(ref)
        if scheme is not None:
            same_store = _URI_SCHEME.get(self.fs.type_name) == scheme
            return Location.from_uri(ref, **(dict(self.options) if same_store else {}))
        if ref.startswith("/"):
            path = posixpath.normpath(ref) if self.is_local else ref.lstrip("/")
            return Location(self.fs, path, self.options)
        return self.child(ref)

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def list_dir(self) -> list[pafs.FileInfo]:
        """This directory's entries, not recursive: listing one directory at a time keeps a
        walk's memory to the largest directory instead of the whole tree. An entry whose name
        is not UTF-8 (its `path` cannot be read) is left out: `list_dir_checked` reports it."""
        readable = []
        for info in self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False)):
            try:
                info.path  # noqa: B018 - raises on a name that is not UTF-8
            except UnicodeDecodeError:
                continue
            readable.append(info)
        return readable

    def list_dir_checked(self) -> tuple[list[pafs.FileInfo], list[Unlisted]]:
        """`list_dir`, plus the entries it cannot give (`Unlisted`), so a walk can say why
        each was refused instead of never seeing it.

        pyarrow's local listing leaves out a symbolic link that resolves to nothing (a loop, a
        dangling target) and cannot name an entry whose name is not UTF-8; both are found here
        from the directory's raw names. Object stores hold UTF-8 keys and no links, so their
        listing is complete."""
        infos = self.list_dir()
        if not self.is_local:
            return infos, []
        listed = {info.base_name for info in infos}
        unlisted = []
        for raw in sorted(os.listdir(os.fsencode(self.path))):
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                shown = raw.decode("utf-8", "backslashreplace")
                unlisted.append(
                    Unlisted(shown, ReasonCode.BAD_FILENAME, f"file name is not UTF-8 ({err})")
                )
                continue
            if name not in listed:
                unlisted.append(_unresolved(posixpath.join(self.path, name), name))
        return infos, unlisted

    def read_bytes(self, limit: int | None = None) -> bytes:
        """The file's bytes (decompressed when its name ends in .gz), at most `limit` of them."""
        with self.fs.open_input_stream(self.path, compression="detect") as stream:
            return stream.read() if limit is None else stream.read(limit)

    def iter_lines(self) -> Iterator[bytes]:
        """The file's lines as bytes without their line ending, streamed (gzip by extension).

        Bytes, not text: each caller decides per line what a non-UTF-8 line means, so one bad
        line costs one row and not the whole file."""
        with self.fs.open_input_stream(self.path, compression="detect") as stream:
            for line in io.BufferedReader(stream, buffer_size=_LINE_BUFFER_BYTES):
                yield line.rstrip(b"\r\n")

    def open_binary(self) -> io.BufferedReader:
        """A buffered byte stream (gzip by extension), for readers that want a file object."""
        stream = self.fs.open_input_stream(self.path, compression="detect")
        return io.BufferedReader(stream, buffer_size=_LINE_BUFFER_BYTES)


@dataclass(frozen=True)
class Unlisted:
    """A directory entry a listing cannot give as a file or folder, and why (a quarantine
    reason for whoever wanted it)."""

    name: str
    """Its name as text: bytes that are not UTF-8 appear as `\\xNN` escapes."""
    reason: ReasonCode
    detail: str


def _unresolved(path: str, name: str) -> Unlisted:
    """Why the local entry `path` did not list: a link that loops or points at nothing, or an
    entry that cannot be looked at."""
    try:
        os.stat(path)
    except OSError as err:
        target = os.readlink(path) if os.path.islink(path) else None
        link = f"symbolic link to {target!r}: " if target is not None else ""
        if err.errno == errno.ELOOP:
            return Unlisted(name, ReasonCode.SYMLINK_LOOP, f"{link}{err.strerror}")
        if err.errno == errno.ENOENT:
            return Unlisted(name, ReasonCode.MISSING_FILE, f"{link}no file there")
        return Unlisted(name, ReasonCode.READ_ERROR, f"{link}{err.strerror}")
    return Unlisted(name, ReasonCode.READ_ERROR, "left out of the directory's listing")


def existing(locations: Iterable[Location]) -> list[bool]:
    """For each location, whether a file is there; one batched call per filesystem, because on
    an object store each check is a request and batching lets pyarrow issue them together."""
    locs = list(locations)
    found = [False] * len(locs)
    by_fs: dict[int, list[int]] = {}
    for i, loc in enumerate(locs):
        by_fs.setdefault(id(loc.fs), []).append(i)
    for indices in by_fs.values():
        fs = locs[indices[0]].fs
        infos = fs.get_file_info([locs[i].path for i in indices])
        for i, info in zip(indices, infos, strict=True):
            found[i] = info.type == pafs.FileType.File
    return found


def read_source(uri: str, storage_options: dict[str, Any]) -> bytes:
    try:
        fs, path = open_filesystem(uri, **storage_options)
        with fs.open_input_file(path) as f:
            return f.read()
    except FileNotFoundError as exc:
        raise Rejected(ReasonCode.MISSING_FILE, f"no such file: {exc}") from exc
    except OSError as exc:
        message = str(exc)
        reason = (
            ReasonCode.MISSING_FILE
            if "not found" in message.lower() or "does not exist" in message.lower()
            else ReasonCode.READ_ERROR
        )
        raise Rejected(reason, message) from exc
