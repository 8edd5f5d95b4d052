"""Whole directory trees between local disk and a store: uploads, downloads, a cached local copy.

Owns: `upload_tree` (a local tree to a store, one named file last so that its presence means the
rest is there), `download_tree`, and `local_dir` — the local directory a loader that reads local
files only (funasr's `AutoModel`, torch.load of a model folder) is given when a job names its
model directory on an object store (`s3://bucket/models/SenseVoiceSmall`). Every worker node
copies it once into its cache and reuses the copy while the store's listing (names, sizes,
modification times) is unchanged.

Must not: know what a directory holds (model, export, checkpoint); its callers do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from minmo.io.fs import open_filesystem, uri_scheme

CACHE_ENV = "MINMO_CACHE"
"""Environment variable naming the root of minmo's local caches (default ~/.cache/minmo)."""
FETCHED_MARKER = ".minmo-fetched.json"
"""Written last into a cached copy: the store listing it was made from (not part of the data)."""


def local_fs() -> pafs.FileSystem:
    return pafs.LocalFileSystem()


def upload_tree(local: Path, fs: pafs.FileSystem, path: str, last: str | None = None) -> None:
    """Every file under `local` to `path/<relative>`; the file named `last` (at the top) after
    all the others, so its presence means the rest is there."""
    files = sorted(p for p in local.rglob("*") if p.is_file())
    tail = [p for p in files if last is not None and p == local / last]
    for file in [p for p in files if p not in tail] + tail:
        pafs.copy_files(
            str(file),
            f"{path}/{file.relative_to(local).as_posix()}",
            source_filesystem=local_fs(),
            destination_filesystem=fs,
        )


def download_tree(fs: pafs.FileSystem, path: str, local: Path) -> None:
    """`path` (a file or a directory tree) on `fs` to `local`."""
    # copy_files makes the folders it lists, but not the top one of a tree.
    is_dir = fs.get_file_info(path).type == pafs.FileType.Directory
    (local if is_dir else local.parent).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=local_fs())


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "minmo")


def local_dir(where: str, storage_options: dict[str, Any] | None = None) -> Path:
    """A local directory with the contents of `where`: the path itself when local, else a copy
    under `<cache>/dirs/<hash of the URI>/`, made once per node and remade when the store's
    listing changes. The copy is assembled under a temporary name and renamed into place, so a
    concurrent caller (another actor on the node) or a crash never leaves a half copy in use."""
    if uri_scheme(where) in (None, "file"):
        return Path(open_filesystem(where)[1]).expanduser()
    fs, path = open_filesystem(where, **(storage_options or {}))
    path = path.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    files = sorted(
        (i.path[len(path) + 1 :], i.size, i.mtime_ns or 0)
        for i in infos
        if i.type == pafs.FileType.File
    )
    if not files:
        raise FileNotFoundError(f"{where}: no such directory on the store (or it is empty)")
    listing = json.dumps({"uri": where.rstrip("/"), "files": files})
    target = cache_root() / "dirs" / hashlib.sha256(where.rstrip("/").encode()).hexdigest()[:16]
    marker = target / FETCHED_MARKER
    if marker.is_file() and marker.read_text() == listing:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        download_tree(fs, path, staging)
        (staging / FETCHED_MARKER).write_text(listing)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)  # a stale or half-replaced copy
        try:
            staging.rename(target)
        except OSError:  # another caller renamed its complete copy first: use that one
            if not (marker.is_file() and marker.read_text() == listing):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
