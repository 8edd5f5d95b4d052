"""What every step that works on a build does around its run: hold the step's lock, check the
build, and turn the failures a user acts on into messages instead of tracebacks.

Owns: the order (lock, then the integrity check, then the step) and the exit codes of a refused
start (a held lock: 4, a damaged build: 3) and of a full disk (5). Used by `minmo <step>` and by
`minmo run` for each step, so both behave alike. Must not: know what a step computes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from minmo.cli.steps import StepFailed, StepSpec
from minmo.io.errors import disk_full_message, find_disk_full
from pipelines.build import BuildDir
from pipelines.integrity import DamagedBuild, check_before_step
from pipelines.lock import BuildLock, StepLocked

EXIT_DAMAGED = 3
EXIT_LOCKED = 4
EXIT_DISK_FULL = 5


def storage_options_of(config: Any) -> dict[str, Any]:
    """The build's storage options from a step's config (a dataclass, or train's mapping)."""
    if isinstance(config, dict):
        return dict(config.get("storage_options") or {})
    return dict(getattr(config, "storage_options", None) or {})


@contextlib.contextmanager
def guarded(step: str, build: str | None, config: Any, check: bool = True) -> Iterator[None]:
    """Run the block as step `step` on `build`: refuse at once when another run holds the step,
    stop with the damaged files named when the build is damaged (`check`), and report a full
    disk as one line naming the path. Without a build only the disk-full report applies."""
    try:
        if build is None:
            yield
            return
        target = BuildDir(build, **storage_options_of(config))
        try:
            lock = BuildLock(target, step).__enter__()
        except StepLocked as exc:
            raise StepFailed(EXIT_LOCKED, str(exc)) from exc
        try:
            if check:
                check_before_step(target)
            yield
        except DamagedBuild as exc:
            raise StepFailed(EXIT_DAMAGED, str(exc)) from exc
        finally:
            lock.release()
    except StepFailed:
        raise
    except BaseException as exc:
        full = find_disk_full(exc)
        if full is None:
            raise
        # Reported once here; the step's other tasks that hit the same full disk would each
        # print their traceback as Ray drops their results.
        os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"
        raise StepFailed(EXIT_DISK_FULL, disk_full_message(full)) from exc


def run_guarded(
    name: str, spec: StepSpec, build: str | None, inputs: Any, config: Any, progress: bool
) -> Any:
    """Run step `name` (its table entry `spec`) as `minmo <step>` and `minmo run` both do.

    Under torchrun every rank runs `minmo train`: rank 0 holds the lock and checks the build
    for the whole launch; the other ranks only report a full disk."""
    secondary_rank = os.environ.get("RANK", "0") != "0"
    check = spec.build and spec.guarded and not secondary_rank
    with guarded(name, build if check else None, config):
        return spec.run_function()(build, inputs, config, progress)
