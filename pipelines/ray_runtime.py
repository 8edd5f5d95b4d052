"""Starting (or joining) Ray: a local instance by default, a cluster when RAY_ADDRESS is set.

Every step calls `ensure_ray()` instead of `ray.init()` so that tests and callers that already
started Ray (a local multi-node test cluster, `ray job submit`) keep their instance.

Ray's own output is quiet by default: a user sees minmo's progress bars and summaries, not a
second progress system (Ray Data's bars, its INFO lines about each dataset's execution, and its
API deprecation notes, which are for minmo's developers). Ray's errors still show, and so does
what the steps' workers print. `minmo --verbose` (`set_verbose`) brings Ray's INFO logs,
warnings and bars back; Ray Data's log file in the session directory
(/tmp/ray/session_latest/logs/ray-data.log) always has every line.

A local instance this process starts dies with it, whatever ends it: Ray's own `atexit` hook
and SIGTERM handler (set by `ray.init` in the main thread) shut it down on a normal exit,
Ctrl-C or SIGTERM, and a watchdog (pipelines/ray_watchdog.py) ends its processes after a
SIGKILL. A cluster given by RAY_ADDRESS, or an instance the caller started, is never touched.
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import yaml

VERBOSE_ENV = "MINMO_RAY_VERBOSE"
"""Set to 1 by `minmo --verbose`; an environment variable, so that child processes (a job's
steps, torchrun ranks, `ray job submit` drivers) inherit it."""


def set_verbose(verbose: bool) -> None:
    """Whether Ray's own INFO logs and progress bars show (the CLI's `--verbose`)."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"


def ray_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def ensure_ray(num_cpus: int | None = None, progress: bool = True) -> None:
    import ray  # heavy (~2 s) and only needed by the steps that run on Ray
    from ray.util.debug import log_once

    verbose = ray_verbose()
    level = logging.INFO if verbose else logging.ERROR
    _ray_data_console(level)
    if not verbose:
        # Ray Data warns once that its bars are off; minmo turned them off on purpose.
        log_once("ray_data_progress_manager_disabled")
        # Ray's Python warnings (deprecations, tuning hints) are for minmo's developers.
        warnings.filterwarnings("ignore", module=r"ray(\.|$)")
    # Token auth is on by default in recent Ray; a local single-user instance does not need it.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True, logging_level=level)
        else:
            watchdog = _start_watchdog()
            # address="local" always starts a fresh instance: a bare ray.init() would try to
            # join whatever cluster /tmp/ray/ray_current_cluster last named, even a dead one.
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=True,
                logging_level=level,
            )
            _tell_watchdog(watchdog)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress and verbose
    context.print_on_execution_start = False


_WATCHDOGS: list[subprocess.Popen] = []
"""The watchdogs of the instances this process started; held so that their pipes stay open
until the process ends (closing one is what tells a watchdog the driver is gone)."""


def _start_watchdog() -> subprocess.Popen | None:
    """Start pipelines/ray_watchdog.py for the local instance about to start (see its
    docstring: the instance's processes die with this driver, even on SIGKILL). Linux only
    (it reads /proc); elsewhere Ray's own fate sharing is all there is."""
    import ray

    if not sys.platform.startswith("linux"):
        return None
    temp_dir = os.environ.get("RAY_TMPDIR") or os.path.join(tempfile.gettempdir(), "ray")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-I",  # stdlib only: no site-packages, no PYTHONPATH
            str(Path(__file__).with_name("ray_watchdog.py")),
            str(os.getpid()),
            temp_dir,
            os.path.dirname(ray.__file__),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a kill of the driver's process group spares it
    )
    _WATCHDOGS.append(proc)
    return proc


def _tell_watchdog(proc: subprocess.Popen | None) -> None:
    """Give the watchdog the session directory of the instance that just started."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # Ray has no public accessor
    if proc is None or proc.stdin is None or node is None:
        return
    proc.stdin.write((node.get_session_dir_path() + "\n").encode())
    proc.stdin.flush()


def _ray_data_console(level: int) -> None:
    """The level of Ray Data's console log handler. Ray Data rebuilds its loggers from
    RAY_DATA_LOGGING_CONFIG (a YAML file) whenever a dataset starts executing, so the level is
    set there: Ray's own default config with the console handler's level changed, written once
    per process. A RAY_DATA_LOGGING_CONFIG the user set is left alone."""
    from ray.data._internal.logging import DEFAULT_CONFIG, configure_logging  # with ray, above

    env = "RAY_DATA_LOGGING_CONFIG"
    ours = os.environ.get(env, "").startswith(os.path.join(tempfile.gettempdir(), "minmo-ray"))
    if env in os.environ and not ours:
        return
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["handlers"]["console"]["level"] = logging.getLevelName(level)
    path = os.path.join(tempfile.gettempdir(), f"minmo-ray-data-logging-{os.getpid()}-{level}.yaml")
    if not os.path.exists(path):
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
    os.environ[env] = path
    configure_logging()


def model_actors(
    uses_gpu: bool, gpus_per_actor: float | None, actors: int | None
) -> tuple[int, float]:
    """(actor count, GPUs per actor) for a stage that runs a model, read from the live cluster.

    Decided when the step runs, not in the job spec, so that one spec asks for GPUs on a GPU
    cluster and for none on a laptop: by default an actor takes one GPU when the cluster has
    any and the stage's model can use one (`uses_gpu`), and then there is one actor per GPU;
    otherwise one actor per CPU. `gpus_per_actor` and `actors` override either default.
    """
    import ray

    resources = ray.cluster_resources()
    gpus = gpus_per_actor
    if gpus is None:
        gpus = 1.0 if uses_gpu and resources.get("GPU", 0) >= 1 else 0.0
    slots = resources.get("GPU", 0) / gpus if gpus else resources.get("CPU", 1)
    return max(1, actors or int(slots)), gpus
