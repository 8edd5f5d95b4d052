"""A separate process that holds one step's build lock until it is killed (lock and doctor tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOLD = (
    "import sys, time\n"
    "from pipelines.build import BuildDir\n"
    "from pipelines.lock import BuildLock\n"
    "with BuildLock(BuildDir(sys.argv[1]), sys.argv[2]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(600)\n"
)


def hold_lock(build_uri: str, step: str) -> subprocess.Popen:
    """Start the holder and return once it says it holds `step`'s lock on `build_uri`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, build_uri, step],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"held"
    return proc
