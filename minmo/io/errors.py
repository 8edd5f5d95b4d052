"""A full disk, said as such: the error every writer raises when the build's filesystem has no
space left, naming the file it was writing.

Why: the OS and pyarrow say "[errno 28] No space left on device" without the path, and the error
reaches the user through Ray's wrappers as a long traceback. The writers (`minmo.io.atomic`,
`minmo.io.parquet`, `minmo.io.shards`) wrap their writes in `naming_disk_full(path)`; the CLI
finds the error in whatever chain carried it (`find_disk_full`) and prints one line.
Must not: retry, delete or free anything: what was committed stays, and a rerun after space is
freed redoes the rest.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator


class DiskFullError(OSError):
    """ENOSPC (or EDQUOT) while writing `filename`."""

    def __init__(self, code: int, strerror: str, filename: str) -> None:
        super().__init__(code, strerror, filename)

    def __reduce__(self) -> tuple[type, tuple[int, str, str]]:
        # Pickled across Ray workers with its three arguments (OSError's default drops none,
        # but a subclass must say how it is rebuilt).
        return (type(self), (self.errno, self.strerror, self.filename))


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


@contextlib.contextmanager
def naming_disk_full(path: str) -> Iterator[None]:
    """Re-raise a full-disk OSError inside the block as DiskFullError naming `path`."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise DiskFullError(exc.errno, "No space left on device", path) from exc


def find_disk_full(exc: BaseException) -> OSError | None:
    """The full-disk error in `exc`'s chain (causes, contexts, and Ray's `cause` of a task
    error), preferring one that names its path; None when the chain holds none."""
    seen: set[int] = set()
    found: OSError | None = None
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if is_disk_full(current):
            assert isinstance(current, OSError)
            if current.filename:
                return current
            found = found or current
        todo += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    if found is None:
        # Ray Data re-raises some worker errors with only the text of the original.
        text = str(exc)
        if "No space left on device" in text or "[errno 28]" in text.lower():
            return OSError(errno.ENOSPC, "No space left on device")
    return found


def disk_full_message(exc: OSError) -> str:
    where = f" writing {exc.filename}" if exc.filename else ""
    return (
        f"the disk is full (no space left on device){where}. Free space (or move the build to "
        "a larger disk) and run the same command again: every unit committed so far is kept, "
        "and the rerun redoes only the rest."
    )
