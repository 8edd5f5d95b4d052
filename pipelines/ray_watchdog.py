"""The watchdog of a local Ray instance that minmo started: when the driver dies, however it
dies, the instance's processes die too.

Why: Ray shares the fate of the processes it starts with the driver where it can (the head's
processes get PR_SET_PDEATHSIG; the driver's `atexit` and SIGTERM handler run `ray.shutdown()`),
but after a SIGKILL of the driver alone its agents (`ray::DashboardAgent`,
`ray::RuntimeEnvAgent`) stayed up 20-80 s here, and a SIGKILL of a step's process group once
left gcs_server, raylet and 7 workers (1.1 GB) up for minutes. A watchdog that the driver's
death ends closes that gap.

How: `pipelines.ray_runtime.ensure_ray` starts this script (stdlib only, `python -I`) in a
session of its own, so that a kill of the driver's process group spares it, with a pipe on its
stdin whose only writer is the driver. The driver writes its instance's session directory once
Ray is up. When the pipe ends (the driver exited or was killed), the watchdog ends every process
of THAT instance: those whose command line names the session directory and runs Ray's own
programs (gcs_server, raylet, dashboard, log monitor), and Ray workers (`ray::...`) with a file
open in it (their logs). SIGTERM first, SIGKILL after a grace period. Another Ray instance has
another session directory, so it is never touched; nor is a cluster minmo joined (RAY_ADDRESS),
for which no watchdog is started. If the driver died before writing the session directory (a
kill during `ray.init`), the sessions its pid names (Ray names them `session_<time>_<pid>`) that
appeared after the watchdog started are used.

Must not: import anything outside the standard library (it starts in tens of milliseconds and
must not hold Ray's memory), or act before its pipe ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

GRACE_S = 3.0  # between SIGTERM and SIGKILL
ROUNDS = 3  # sweeps (a process could start while the first one runs)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a for a in raw.decode("utf-8", "replace").split("\0") if a]


def _has_open_file_in(pid: int, directory: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(directory):
                return True
        except OSError:
            continue
    return False


def instance_pids(session_dir: str, ray_dir: str) -> list[int]:
    """Live processes of the Ray instance whose session directory is `session_dir`."""
    session_dir = session_dir.rstrip("/") + "/"
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        args = _cmdline(pid)
        if not args:
            continue
        ray_program = any(a.startswith(ray_dir) for a in args[:2])
        names_session = any(session_dir.rstrip("/") in a for a in args)
        if (ray_program and names_session) or (
            args[0].startswith("ray::") and _has_open_file_in(pid, session_dir)
        ):
            found.append(pid)
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def sweep(session_dir: str, ray_dir: str) -> int:
    """End every process of the instance; returns how many were signalled."""
    total = 0
    for _ in range(ROUNDS):
        pids = instance_pids(session_dir, ray_dir)
        if not pids:
            break
        total += len(pids)
        _signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and instance_pids(session_dir, ray_dir):
            time.sleep(0.2)
        _signal_all(instance_pids(session_dir, ray_dir), signal.SIGKILL)
    return total


def sessions_of(driver_pid: int, temp_dir: str, since: float) -> list[str]:
    """Session directories Ray named after `driver_pid` that appeared since `since`."""
    try:
        names = os.listdir(temp_dir)
    except OSError:
        return []
    out = []
    for name in names:
        path = os.path.join(temp_dir, name)
        if name.startswith("session_") and name.endswith(f"_{driver_pid}"):
            try:
                if os.stat(path).st_mtime >= since - 1:
                    out.append(path)
            except OSError:
                continue
    return out


def main(argv: list[str]) -> int:
    """argv: driver pid, Ray's temp directory, Ray's package directory."""
    driver_pid, temp_dir, ray_dir = int(argv[0]), argv[1], argv[2]
    started = time.time()
    told = sys.stdin.buffer.read().decode("utf-8", "replace").split()  # blocks until the end
    sessions = told or sessions_of(driver_pid, temp_dir, started)
    for session in sessions:
        sweep(session, ray_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
