"""A step killed with SIGKILL (or SIGTERM) leaves no process of the local Ray it started, and while it ran a
second `minmo` on the same build and step was refused at once, naming it.

The driver runs in a session of its own, so every process it starts (Ray's head processes and
workers) keeps that session id: that, and the instance's session directory in a command line,
is how the test finds them, independently of how the watchdog does."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipelines.build import BuildDir
from pipelines.lock import BuildLock

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
GONE_WITHIN_S = 30
FILES = 200  # one per unit: the run lasts well past the kill


def _corpus(root: Path, n: int) -> Path:
    root.mkdir(parents=True)
    t = np.arange(16000 * 2) / 16000
    for i in range(n):
        sf.write(root / f"f{i:03d}.wav", (0.3 * np.sin(2 * np.pi * (200 + 9 * i) * t)), 16000)
    return root


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[3])


def _left(session_id: int, session_dir: str) -> list[str]:
    """Live (not zombie) processes of the killed run: in its session, or naming its Ray
    session directory."""
    left = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        stat = _stat(int(entry))
        if stat is None or stat[0] == "Z":
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if stat[1] == session_id or session_dir in args:
            left.append(f"{entry}: {args[:120]}")
    return left


@pytest.mark.parametrize(
    ("whom", "sig"),
    [("driver", signal.SIGKILL), ("group", signal.SIGTERM)],
    ids=["sigkill-driver", "sigterm-group"],
)
def test_a_killed_step_leaves_no_ray_process_and_a_second_run_was_refused(
    tmp_path: Path, whom: str, sig: signal.Signals
) -> None:
    """SIGKILL of the driver alone (Ray's processes are not signalled: the watchdog ends them),
    and SIGTERM of the driver's process group as `kill` or a job scheduler sends it (Ray's
    own handler shuts the instance down)."""
    src = _corpus(tmp_path / "src", FILES)
    build = tmp_path / "build"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "minmo.cli", "-q", "ingest", str(src), "--build", str(build)]
    command += ["--files-per-unit", "1", "--units-per-wave", "1"]
    log = (tmp_path / "driver.log").open("wb")
    driver = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True
    )
    ray_tmp = os.environ.get("RAY_TMPDIR") or os.path.join(tempfile.gettempdir(), "ray")
    done = build / "_state" / "ingest" / "done"
    deadline = time.time() + 240
    sessions: list[str] = []
    try:
        while not sessions and time.time() < deadline:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-2000:]
            sessions = glob.glob(f"{ray_tmp}/session_*_{driver.pid}")
            time.sleep(0.2)
        assert sessions, "the driver never started its Ray instance"

        second = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 4, second.stderr[-2000:]
        assert f"another `minmo ingest` is running on this build: pid {driver.pid}" in (
            second.stderr
        )
        while not (done.is_dir() and any(done.iterdir())) and time.time() < deadline:
            time.sleep(0.2)  # until its workers have committed a unit: every kind of process up
        assert driver.poll() is None, "the ingest finished before it could be killed"
    finally:
        if whom == "driver":
            os.kill(driver.pid, sig)
        else:
            os.killpg(driver.pid, sig)
        driver.wait()
        log.close()
    killed = time.monotonic()
    while _left(driver.pid, sessions[0]) and time.monotonic() - killed < GONE_WITHIN_S:
        time.sleep(0.5)
    assert _left(driver.pid, sessions[0]) == [], f"after {GONE_WITHIN_S} s"
    gone = time.monotonic() - killed
    print(f"every process of {sessions[0]} gone {gone:.1f} s after {sig.name} of the {whom}")
    with BuildLock(BuildDir(str(build)), "ingest"):  # the dead driver's lock is not held
        pass
