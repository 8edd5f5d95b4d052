"""One run per build and step: the lock a step's driver holds while it runs.

Owns: DIR/_state/<step>/lock.json, which names its holder ({"pid", "host", "step", "since",
"command"}), taking it, releasing it, and telling a live holder from a dead one. Must not: know
what a step does; the CLI takes the lock around every step that works on a build.

Why a lock and not "both finish with no duplicate": two drivers of one step would each recover
(delete) the other's uncommitted output and commit the same units twice; refusing the second at
once is the simple, visible answer.

How, by filesystem:
- Local disk (NFS included): `fcntl.flock` on the lock file. The kernel drops the lock when the
  holder dies, SIGKILL included, so a dead holder's file is never mistaken for a live one, and
  two takers can never both win. The JSON inside only names the holder for the message.
- Object stores (no locks, no exclusive create): the JSON alone, written when absent. A holder
  on this host whose pid is gone is stale and replaced; a holder on another host cannot be
  checked from here, so the message names it and the file to delete if that run is gone. Two
  drivers starting within one request's time of each other can both pass: documented, rare.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from minmo.io.fs import is_local
from pipelines.build import BuildDir

LOCK_NAME = "lock.json"


class StepLocked(RuntimeError):
    """Another live run holds the step's lock; the message names it."""

    def __init__(self, step: str, path: str, holder: dict[str, Any], stale_hint: bool) -> None:
        who = f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}" + (
            f" ({holder['command']})" if holder.get("command") else ""
        )
        hint = (
            f"; if that run is gone (its host cannot be asked from here), delete {path}"
            if stale_hint
            else ""
        )
        super().__init__(f"another `minmo {step}` is running on this build: {who}{hint}")
        self.holder = holder


def lock_path(build: BuildDir, step: str) -> str:
    return build.path("_state", step, LOCK_NAME)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (macOS): kill(0) said it exists


def _holder_info(step: str) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "step": step,
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["minmo", *sys.argv[1:]])[:300],
    }


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        holder = json.loads(raw.decode("utf-8", "replace") or "{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


@dataclass
class BuildLock:
    """`with BuildLock(build, step):` holds the step's lock for the block, or raises
    StepLocked naming the holder at once (never waits)."""

    build: BuildDir
    step: str
    _fd: int | None = None

    @property
    def path(self) -> str:
        return lock_path(self.build, self.step)

    def __enter__(self) -> BuildLock:
        self.build.fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        if is_local(self.build.fs):
            self._take_local()
        else:
            self._take_object_store()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if self._fd is None:
            if not is_local(self.build.fs):
                with contextlib.suppress(OSError):
                    self.build.fs.delete_file(self.path)
            return
        # Unlink while still holding it: a waiter that opened the old file sees that its inode
        # is gone from the path and starts again (see _take_local).
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def _take_local(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _parse(os.pread(fd, 65536, 0))
                os.close(fd)
                raise StepLocked(self.step, self.path, holder, stale_hint=False) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released and unlinked between our open and our flock: retry
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_holder_info(self.step)).encode(), 0)
            self._fd = fd
            return

    def _take_object_store(self) -> None:
        fs = self.build.fs
        if self.build.exists(self.path):
            with fs.open_input_stream(self.path) as f:
                holder = _parse(f.read())
            here = holder.get("host") == socket.gethostname()
            pid = holder.get("pid")
            if not (here and isinstance(pid, int) and not pid_alive(pid)):
                raise StepLocked(self.step, self.path, holder, stale_hint=not here)
        with fs.open_output_stream(self.path) as out:
            out.write(json.dumps(_holder_info(self.step)).encode())


def running_steps(build: BuildDir) -> dict[str, dict[str, Any]]:
    """{step: holder} of the steps whose lock another live run holds now (local builds: a
    probe of each lock; object stores: every lock file not known to be stale). This process's
    own locks are not listed."""
    state = build.path("_state")
    if not build.exists(state):
        return {}
    running: dict[str, dict[str, Any]] = {}
    for entry in build.fs.get_file_info(pafs.FileSelector(state, recursive=False)):
        if entry.type != pafs.FileType.Directory:
            continue
        step = entry.base_name
        lock = BuildLock(build, step)
        if not build.exists(lock.path):
            continue
        try:
            with lock:
                pass
        except StepLocked as held:
            mine = held.holder.get("pid") == os.getpid()
            if not (mine and held.holder.get("host") == socket.gethostname()):
                running[step] = held.holder
    return running
