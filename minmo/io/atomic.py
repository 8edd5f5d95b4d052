"""Atomic writes: a file appears whole under its final name, or not at all, on any pyarrow
filesystem (local disk or object store).

Local: the bytes go to a hidden temp name beside the target (`schemas.shards.temp_name`: a
leading dot and the `.tmp-` marker, which every lister in the project skips) and are renamed over
it. Object stores: one PUT, which is atomic by itself (an upload that fails leaves no object), so
no temp key is needed and no copy is paid for a "rename".

Leftovers: a writer killed mid-write (SIGKILL, OOM, a lost node) leaves its temp file behind, and
at scale a killed 500 MB shard leaves 500 MB. Every step sweeps the directories it writes into
when it starts (`sweep_temp_files`). A temp file is removed only when its writer is known to be
gone (`is_stale`), so that a run still alive on this node or another is never robbed of a file it
is about to rename:
- the temp name carries its writer's pid and host (`schemas.shards.temp_name`); on this host a
  writer is gone when its pid is not running, or when the process now holding that pid started
  after the file was last written (the pid was reused);
- a file from another host, or from before names carried an owner, is gone once nothing has
  written to it for STALE_AFTER_S: a live writer streams into its file, so its mtime stays fresh.
The same rule judges a step's staging folder of a dead run (pipelines/build.py) and what
`minmo verify` reports as a stray temp file.

Must not: write anywhere but the target and its temp name. Directory-sized commits (a training
checkpoint, a step's staging folder) rename a whole folder and do not come here.
"""

from __future__ import annotations

import contextlib
import posixpath
import time
from datetime import datetime

import psutil
import pyarrow.fs as pafs

from minmo.io.errors import naming_disk_full
from minmo.io.fs import is_local
from schemas.shards import HOST_TAG, is_temp_name, temp_name, temp_owner

STALE_AFTER_S = 6 * 3600.0
"""A temp file (or staging folder) whose writer cannot be checked (another host, no owner in the
name) is a dead writer's once nothing has written to it for this long (see the module
docstring). Six hours: far longer than any write stalls, short enough that a crashed cluster's
leftovers go on the next day's run."""
# A process that started this much after a file's mtime cannot have written it (clock ticks of
# the start time and filesystem timestamps differ by well under this).
_START_SLACK_S = 1.0


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


def is_stale(owner: tuple[int, str] | None, mtime: datetime | float | None) -> bool:
    """Whether a temp file or staging folder whose writer is `owner` ((pid, host tag) or None)
    and which was last written at `mtime` (a datetime, epoch seconds, or None when unknown) is a
    dead writer's leftover (the rule is in the module docstring)."""
    written = mtime.timestamp() if isinstance(mtime, datetime) else mtime
    if owner is not None and owner[1] == HOST_TAG:
        pid = owner[0]
        try:
            started = psutil.Process(pid).create_time()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return True
        except psutil.Error:  # alive but not ours to inspect: alive
            return False
        return written is not None and started > written + _START_SLACK_S
    return written is not None and time.time() - written > STALE_AFTER_S


def stale_temp_files(fs: pafs.FileSystem, directory: str, *, recursive: bool = False) -> list[str]:
    """The temp files in `directory` (sorted paths) whose writer is gone (`is_stale`); none when
    the directory does not exist. Only hidden names count: every temp name starts with "."."""
    infos = fs.get_file_info(
        pafs.FileSelector(directory, allow_not_found=True, recursive=recursive)
    )
    return sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and i.base_name.startswith(".")
        and is_temp_name(i.base_name)
        and is_stale(temp_owner(i.base_name), i.mtime)
    )


def sweep_temp_files(fs: pafs.FileSystem, directory: str, *, recursive: bool = False) -> int:
    """Delete the dead writers' temp files in `directory` (`stale_temp_files`); returns how many.
    Every step calls this on the directories it writes into when it starts."""
    removed = 0
    for path in stale_temp_files(fs, directory, recursive=recursive):
        with contextlib.suppress(FileNotFoundError):  # another sweeper was first
            fs.delete_file(path)
            removed += 1
    return removed
