"""The build directory: where one corpus build lives, local or on an object store.

Owns: the layout of DIR (tables, shards, state), atomic writes, and the per-step ledger of
finished work units that makes every step resumable. Must not: know what any step computes.

Layout (see the README): DIR/<table>/part files (`<step>~<unit>_<n>.parquet`; ingest's have no
step prefix), DIR/_state/<step>/done/<unit>.json (one marker
per committed unit of work), DIR/_state/<step>/staging/<run>/<unit>/ (a unit's output before
commit). Staging is per run: workers of a killed run can outlive their driver for a while and
keep writing; a fresh run id fences their late files off from what the new run commits.
A unit is committed by moving its staged files into the table folders and THEN writing its
marker; a crash in between leaves files without a marker, which the next run deletes first.
The marker records each part's name and size (`PARTS_KEY`), so that a part damaged or lost
after its commit is found from a listing alone (pipelines/integrity.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow.fs as pafs

from minmo.io.atomic import is_stale, sweep_temp_files, write_bytes_atomic
from minmo.io.fs import is_local, open_filesystem, to_uri
from schemas.shards import final_name, is_temp_name, owner_tag, parse_owner, temp_owner

PARTS_KEY = "parts"
"""A done marker's {table: {part file name: size in bytes}}, as committed."""

BUILD_KEY_PREFIX = "build:"
"""Audio a step writes into the build (synthesized lines, duplex calls) is named
`build:<path relative to DIR>` in the tables (`source_uri` and `source_key` alike), never by
an absolute path: a moved or copied build reads it from wherever DIR is now, with no
`--source-root`, and ids, specs and shard provenance do not change (issue 15 item 6). Only
`BuildDir.resolve_key` turns a key into a location, and only where the audio is read."""


def is_build_key(uri: str) -> bool:
    return uri.startswith(BUILD_KEY_PREFIX)


class BuildDir:
    """A build directory on any pyarrow filesystem."""

    def __init__(self, uri: str, **fs_options: Any) -> None:
        self.uri = uri
        self.fs, self.root = open_filesystem(uri, **fs_options)
        self.fs.create_dir(self.root, recursive=True)

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def table_dir(self, table: str) -> str:
        return self.path(table)

    def key(self, *parts: str) -> str:
        """The relocatable name of DIR/<parts> (see BUILD_KEY_PREFIX)."""
        return BUILD_KEY_PREFIX + "/".join(parts)

    def resolve_key(self, key: str) -> str:
        """Where the file named `key` is now: its canonical URI under the current DIR."""
        if not is_build_key(key):
            raise ValueError(f"{key!r} is not a build key ({BUILD_KEY_PREFIX}<path in DIR>)")
        return to_uri(self.fs, self.path(key[len(BUILD_KEY_PREFIX) :]))

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def files(self, directory: str, suffix: str = "") -> list[str]:
        """Files directly in `directory` (sorted), empty when it does not exist."""
        if not self.exists(directory):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(directory, recursive=False))
        return sorted(
            i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix)
        )

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Write `path` on the build's filesystem atomically (`minmo.io.atomic`)."""
        write_bytes_atomic(self.fs, path, data)

    def write_json_atomic(self, path: str, obj: Any) -> None:
        self.write_bytes_atomic(path, json.dumps(obj, indent=1, sort_keys=True).encode())

    def read_json(self, path: str) -> Any:
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def delete(self, path: str) -> None:
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(path)


class StepLedger:
    """What one step has committed, unit by unit, in DIR/_state/<step>/."""

    def __init__(
        self, build: BuildDir, step: str, tables: tuple[str, ...], run_id: str | None = None
    ) -> None:
        """`run_id`: the driver's, for a ledger opened in a worker process that stages and
        commits units of the driver's run (default: a new run, owned by this process)."""
        self.build = build
        self.step = step
        self.tables = tables
        self.state_dir = build.path("_state", step)
        self.done_dir = f"{self.state_dir}/done"
        self.staging_all = f"{self.state_dir}/staging"
        self.run_id = run_id or f"{owner_tag()}-{uuid.uuid4().hex[:8]}"
        self.staging_root = f"{self.staging_all}/{self.run_id}"

    def is_done(self, unit_id: str) -> bool:
        return self.build.exists(f"{self.done_dir}/{unit_id}.json")

    def done_units(self) -> Iterator[dict[str, Any]]:
        for path in self.build.files(self.done_dir, ".json"):
            yield self.build.read_json(path)

    def staging_dir(self, unit_id: str) -> str:
        return f"{self.staging_root}/{unit_id}"

    @staticmethod
    def table_file_owner(name: str) -> tuple[str, str]:
        """(step, unit id) of a table part file: `<step>~<unit>_<n>.parquet`, or ingest's
        historical `<unit>_<n>.parquet`. Several steps add rows to one table (quarantine), so
        each step only ever recovers its own files."""
        owner, _, rest = name.rpartition("~")
        return (owner or "ingest"), rest.split("_", 1)[0]

    @staticmethod
    def derived_unit_id(source_step: str, source_unit: str) -> str:
        """The unit id of a step that adds rows about one unit of another step (`annotate`
        labels one ingest unit's segments): `<source step>.<source unit>`, so that the shards
        planner can fold those rows into the source unit's view (`derived_source`)."""
        return f"{source_step}.{source_unit}"

    @staticmethod
    def derived_source(unit_id: str) -> tuple[str, str] | None:
        """(source step, source unit) of a `derived_unit_id`, else None."""
        step, dot, unit = unit_id.partition(".")
        return (step, unit) if dot and step and unit else None

    def part_name(self, unit_id: str, index: int) -> str:
        prefix = "" if self.step == "ingest" else f"{self.step}~"
        return f"{prefix}{unit_id}_{index:04d}.parquet"

    def recover(self) -> int:
        """Undo whatever a crashed run left half-done: the staging folders of dead runs, dead
        writers' temp files under DIR/_state/<step>/, and table files of units without a
        marker. Returns how many stray files and folders were removed."""
        removed = self._sweep_staging()
        removed += sweep_temp_files(self.build.fs, self.state_dir, recursive=True)
        for table in self.tables:
            for info in self._listing(self.build.table_dir(table)):
                if info.type != pafs.FileType.File:
                    continue
                name = info.base_name
                step, unit_id = self.table_file_owner(final_name(name))
                if step != self.step:
                    continue
                if is_temp_name(name):
                    stray = is_stale(temp_owner(name), info.mtime)
                else:
                    stray = not self.is_done(unit_id)
                if stray:
                    self.build.delete(info.path)
                    removed += 1
        return removed

    def _listing(self, directory: str, recursive: bool = False) -> list[pafs.FileInfo]:
        return self.build.fs.get_file_info(
            pafs.FileSelector(directory, allow_not_found=True, recursive=recursive)
        )

    def _sweep_staging(self) -> int:
        """Delete the staging folders of runs that are gone (`is_stale` on the run id's owner
        and the newest write inside); a live run's folder, on this host or another, stays."""
        removed = 0
        for run in self._listing(self.staging_all):
            if run.type != pafs.FileType.Directory or run.base_name == self.run_id:
                continue
            times = [i.mtime for i in self._listing(run.path, recursive=True) if i.mtime]
            newest = max(times, default=run.mtime)
            if is_stale(parse_owner(run.base_name), newest):
                self.build.delete(run.path)
                removed += 1
        return removed

    def finish(self) -> None:
        """End this run: delete its staging folder (whatever is still there was never
        committed), then the step's `staging/` folder when no other run uses it, so a finished
        build holds no empty staging folders. Object stores have no empty folders to remove."""
        self.build.delete(self.staging_root)
        if is_local(self.build.fs):
            # rmdir refuses a folder that is not empty: a concurrent run's folder is never lost
            with contextlib.suppress(OSError):
                os.rmdir(self.staging_all)

    def commit(self, unit_id: str, summary: dict[str, Any]) -> None:
        """Move the unit's staged files into the tables, then write its marker (the commit)."""
        staging = self.staging_dir(unit_id)
        parts: dict[str, dict[str, int]] = {}
        for table in self.tables:
            target = self.build.table_dir(table)
            self.build.fs.create_dir(target, recursive=True)
            for index, path in enumerate(self.build.files(f"{staging}/{table}", ".parquet")):
                name = self.part_name(unit_id, index)
                self.build.fs.move(path, f"{target}/{name}")
                parts.setdefault(table, {})[name] = self.build.fs.get_file_info(
                    f"{target}/{name}"
                ).size
        self.build.write_json_atomic(
            f"{self.done_dir}/{unit_id}.json", {"unit": unit_id, **summary, PARTS_KEY: parts}
        )
        self.build.delete(staging)
