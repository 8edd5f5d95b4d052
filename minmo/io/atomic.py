"""Atomic writes: a file appears whole under its final name, or not at all, on any pyarrow
filesystem (local disk or object store).

Local: the bytes go to a hidden temp name beside the target (`schemas.shards.temp_name`: a
leading dot and the `.tmp-` marker, which every lister in the project skips) and are renamed over
it. Object stores: one PUT, which is atomic by itself (an upload that fails leaves no object), so
no temp key is needed and no copy is paid for a "rename".

Must not: write anywhere but the target and its temp name. Directory-sized commits (a training
checkpoint, a step's staging folder) rename a whole folder and do not come here.
"""

from __future__ import annotations

import contextlib
import posixpath

import pyarrow.fs as pafs

from minmo.io.errors import naming_disk_full
from minmo.io.fs import is_local
from schemas.shards import temp_name


def write_bytes_atomic(
    fs: pafs.FileSystem, path: str, data: bytes, *, make_parent: bool = True
) -> None:
    """Write `data` to `path` on `fs` so that no reader ever sees a part of it.

    `make_parent=False` is for callers that already made the folder (on an object store each
    make is a request). A failed local write removes its temp file before raising."""
    parent, name = posixpath.split(path)
    if make_parent:
        fs.create_dir(parent, recursive=True)
    if not is_local(fs):
        with naming_disk_full(path), fs.open_output_stream(path) as out:
            out.write(data)
        return
    tmp = posixpath.join(parent, temp_name(name))
    try:
        with naming_disk_full(path), fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the write's own error is the one to see
            fs.delete_file(tmp)
        raise


def write_text_atomic(fs: pafs.FileSystem, path: str, text: str) -> None:
    """`write_bytes_atomic` of `text` as UTF-8."""
    write_bytes_atomic(fs, path, text.encode("utf-8"))
