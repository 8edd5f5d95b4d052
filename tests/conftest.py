"""Shared fixtures: paths to the real speech in ../shared/data, and a local Ray instance."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")


@pytest.fixture(scope="session")
def dead_pid() -> int:
    """The pid of a process that has exited: what a killed writer's temp name or run id holds."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(proc.stdout)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test speech not found at {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (start-up costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@contextmanager
def _moto_s3_server() -> Iterator[dict[str, Any]]:
    """An in-process moto S3 server; yields the pyarrow S3FileSystem options that reach it.

    moto's servers share one store within a process: a test that must not see another's
    objects uses a bucket name of its own.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield {
            "endpoint_override": f"http://{host}:{port}",
            "access_key": "test",
            "secret_key": "test",
            "region": "us-east-1",
            "scheme": "http",
        }
    finally:
        server.stop()


@pytest.fixture()
def moto_s3_options() -> Iterator[dict[str, Any]]:
    """A moto S3 server for one test (`_moto_s3_server`)."""
    with _moto_s3_server() as options:
        yield options


@pytest.fixture(scope="module")
def moto_s3_module_options() -> Iterator[dict[str, Any]]:
    """A moto S3 server for a whole module: what a module-scoped build on the store needs, so
    that one slow run can serve several tests."""
    with _moto_s3_server() as options:
        yield options
