"""Is the build whole? Every committed file checked against what its commit recorded, and the
repair that moves damaged files aside so that a rerun redoes exactly their units.

Owns: what counts as damage, finding it (`inspect`), the message a step stops with
(`DamagedBuild`), and the repair (`repair`, `minmo doctor --fix`). Must not: rewrite or delete a
committed file (a repair only moves files, into DIR/_state/doctor/<time>/), or run a step.

What is checked, from listings and the small done markers only (no table or tar is read):
- a Parquet part a marker names (`PARTS_KEY`: name and size at commit) must be in its table
  folder with that size; a marker from before sizes were recorded gets its parts' footer magic
  read instead (8 bytes per part);
- a marker must parse;
- each shard a shards marker lists, and each shard an index.json lists, must be in its stage
  directory with its recorded size, with its `.idx`;
- files no marker claims (a part or tar of a run killed before its commit) are listed too, but
  do not stop a step: the owning step deletes or rewrites them when it next runs.
Steps whose lock a live run holds (pipelines/lock.py) are skipped: their files are in flight.

Cost: one listing per table folder and shard directory, one small read per marker (threaded,
as object stores answer many at once), one per index.json. Every step that works on a build
pays it at start (minmo/cli/guard.py), so a damaged file stops the step that would read it
with a message instead of a traceback deep inside.

The repair moves a damaged unit's files (all its parts, or its tars and `.idx`) and its marker
aside, keeping their paths relative to DIR, with a report.json saying why; then it lets the
owning step forget the unit: ingest's commit index is rebuilt from the remaining tables, a
shards generation is reopened. The next run of each step redoes exactly those units, with the
same ids, so the build ends as a clean one would.
"""

from __future__ import annotations

import posixpath
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs

from pipelines.build import PARTS_KEY, BuildDir, StepLedger
from pipelines.lock import BuildLock, running_steps
from pipelines.shards import records as shard_records
from schemas import CONTRACTS
from schemas.shards import (
    INDEX_NAME,
    META_DIR,
    SPLITS,
    is_temp_name,
    offsets_path,
    split_dir,
)

PARQUET_MAGIC = b"PAR1"
IO_THREADS = 16  # marker reads in flight
DOCTOR_DIR = ("_state", "doctor")
REPORT_NAME = "report.json"
MAX_SHOWN = 10  # damaged files a step's error names before "and N more"


@dataclass(frozen=True)
class Finding:
    """One inconsistency: the file (relative to DIR), what is wrong, and the unit it belongs
    to. `damage` findings stop a step; the others are a killed run's uncommitted files."""

    path: str
    what: str
    step: str
    unit: str
    damage: bool = True

    def __str__(self) -> str:
        return f"{self.path}: {self.what} ({self.step} unit {self.unit})"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    skipped: dict[str, dict[str, Any]] = field(default_factory=dict)  # running step -> holder

    @property
    def damage(self) -> list[Finding]:
        return [f for f in self.findings if f.damage]


class DamagedBuild(RuntimeError):
    """A committed file is not as its commit recorded; the message names the files and the
    command that repairs the build."""

    def __init__(self, build: BuildDir, damage: list[Finding]) -> None:
        shown = "".join(f"\n  {f}" for f in damage[:MAX_SHOWN])
        more = f"\n  ... and {len(damage) - MAX_SHOWN} more" if len(damage) > MAX_SHOWN else ""
        super().__init__(
            f"the build {build.uri} is damaged: {len(damage)} committed file(s) are not as "
            f"their commit recorded:{shown}{more}\n"
            f"List everything with `minmo doctor --build {build.uri}`; "
            f"`minmo doctor --build {build.uri} --fix` moves the damaged files aside (into "
            f"{posixpath.join(*DOCTOR_DIR)}/ of the build) and clears their commits, so that "
            "rerunning the steps redoes exactly those units."
        )
        self.damage = damage


class _Build:
    """Listings of one build, each made once."""

    def __init__(self, build: BuildDir) -> None:
        self.build = build
        self.rel_start = len(build.root.rstrip("/")) + 1
        self._listings: dict[str, dict[str, int]] = {}

    def rel(self, path: str) -> str:
        return path[self.rel_start :]

    def listing(self, directory: str) -> dict[str, int]:
        """{file name: size} of the files directly in `directory` (writers' temp files left
        out: they are not committed files)."""
        if directory not in self._listings:
            selector = pafs.FileSelector(directory, recursive=False, allow_not_found=True)
            self._listings[directory] = {
                e.base_name: e.size
                for e in self.build.fs.get_file_info(selector)
                if e.type == pafs.FileType.File and not is_temp_name(e.base_name)
            }
        return self._listings[directory]

    def subdirs(self, directory: str) -> list[str]:
        selector = pafs.FileSelector(directory, recursive=False, allow_not_found=True)
        return sorted(
            e.base_name
            for e in self.build.fs.get_file_info(selector)
            if e.type == pafs.FileType.Directory
        )


def _read_marker(build: BuildDir, path: str) -> dict[str, Any] | str:
    """A marker's content, or why it cannot be read."""
    try:
        marker = build.read_json(path)
    except (OSError, ValueError) as exc:
        return f"unreadable done marker ({type(exc).__name__}: {exc})"
    return marker if isinstance(marker, dict) else "done marker is not a JSON object"


def _footer_ok(build: BuildDir, path: str, size: int) -> bool:
    """Whether a Parquet file ends as a whole one: footer length, then the magic bytes."""
    if size < 12:
        return False
    with build.fs.open_input_file(path) as f:
        f.seek(size - 8)
        tail = f.read(8)
    footer = int.from_bytes(tail[:4], "little")
    return tail[4:] == PARQUET_MAGIC and footer + 12 <= size


def markers(build: BuildDir, skip: set[str]) -> dict[tuple[str, str], dict[str, Any] | str]:
    """{(step, unit): marker or why unreadable} of every step's done markers."""
    b = _Build(build)
    paths = []
    for step in b.subdirs(build.path("_state")):
        if step in skip:
            continue
        done = build.path("_state", step, "done")
        paths += [(step, f"{done}/{n}") for n in sorted(b.listing(done)) if n.endswith(".json")]
    with ThreadPoolExecutor(IO_THREADS) as pool:
        read = list(pool.map(lambda sp: _read_marker(build, sp[1]), paths))
    return {
        (step, path.rsplit("/", 1)[-1][: -len(".json")]): m
        for (step, path), m in zip(paths, read, strict=True)
    }


def inspect(build: BuildDir, skip: set[str] | None = None) -> Report:
    """Every inconsistency of the build (see the module docstring); steps in `skip`, and
    steps a live run holds, are not checked."""
    running = running_steps(build)
    skip = set(skip or ()) | set(running)
    report = Report(skipped=running)
    b = _Build(build)
    done = markers(build, skip)
    marker_dir = {key: f"_state/{key[0]}/done/{key[1]}.json" for key in done}
    for key, marker in done.items():
        if isinstance(marker, str):
            report.findings.append(Finding(marker_dir[key], marker, *key))
    _check_parts(b, done, skip, report)
    _check_shards(b, done, skip, report)
    return report


def _check_parts(
    b: _Build, done: dict[tuple[str, str], Any], skip: set[str], report: Report
) -> None:
    claimed: set[tuple[str, str]] = set()
    for (step, unit), marker in done.items():
        if not isinstance(marker, dict) or PARTS_KEY not in marker:
            continue
        for table, parts in marker[PARTS_KEY].items():
            listing = b.listing(b.build.table_dir(table))
            for name, size in parts.items():
                claimed.add((table, name))
                rel = f"{table}/{name}"
                if name not in listing:
                    what = "missing: its done marker says it was committed"
                    report.findings.append(Finding(rel, what, step, unit))
                elif listing[name] != size:
                    what = (
                        f"{listing[name]} bytes, committed with {size} (truncated or overwritten)"
                    )
                    report.findings.append(Finding(rel, what, step, unit))
    for table in sorted(CONTRACTS):
        directory = b.build.table_dir(table)
        for name, size in sorted(b.listing(directory).items()):
            if not name.endswith(".parquet") or (table, name) in claimed:
                continue
            step, unit = StepLedger.table_file_owner(name)
            if step in skip:
                continue
            rel = f"{table}/{name}"
            marker = done.get((step, unit))
            if marker is None:
                what = "not committed (left by a run killed before its commit)"
                report.findings.append(Finding(rel, what, step, unit, damage=False))
            elif isinstance(marker, dict) and PARTS_KEY in marker:
                what = "not among the parts its unit committed"
                report.findings.append(Finding(rel, what, step, unit, damage=False))
            elif isinstance(marker, dict) and not _footer_ok(b.build, f"{directory}/{name}", size):
                what = "not a whole Parquet file (no footer at its end: truncated?)"
                report.findings.append(Finding(rel, what, step, unit))


def _stage_dirs(b: _Build) -> list[str]:
    """Every shard directory of the build: each stage, and each split of a split stage."""
    root = b.build.path("shards")
    dirs = []
    for stage in b.subdirs(root):
        stage_dir = f"{root}/{stage}"
        dirs.append(stage_dir)
        dirs += [f"{stage_dir}/{s}" for s in SPLITS if s in b.subdirs(stage_dir)]
    return dirs


def _check_shards(
    b: _Build, done: dict[tuple[str, str], Any], skip: set[str], report: Report
) -> None:
    if shard_records.STEP in skip:
        return
    expected: dict[str, tuple[int, str]] = {}  # tar path -> (bytes, unit)
    for (step, unit), marker in done.items():
        if step != shard_records.STEP or not isinstance(marker, dict):
            continue
        stage_dir = split_dir(b.build.path("shards", marker["stage"]), marker.get("split", ""))
        for entry in marker.get("shards", []):
            expected[f"{stage_dir}/{entry['name']}"] = (int(entry["bytes"]), unit)
    for stage_dir in _stage_dirs(b):
        index_file = f"{stage_dir}/{META_DIR}/{INDEX_NAME}"
        if INDEX_NAME not in b.listing(f"{stage_dir}/{META_DIR}"):
            continue
        try:
            index = b.build.read_json(index_file)
            entries = index["shards"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            what = f"unreadable index.json ({type(exc).__name__}: {exc})"
            report.findings.append(Finding(b.rel(index_file), what, shard_records.STEP, "-"))
            continue
        for entry in entries:
            parsed = shard_records.unit_of_tar(entry["name"])
            unit = parsed[0] if parsed else "-"
            expected.setdefault(f"{stage_dir}/{entry['name']}", (int(entry["bytes"]), unit))
    for path, (size, unit) in sorted(expected.items()):
        stage_dir, name = path.rsplit("/", 1)
        listing = b.listing(stage_dir)
        rel = b.rel(path)
        if name not in listing:
            what = "missing: its done marker or index.json lists it"
            report.findings.append(Finding(rel, what, shard_records.STEP, unit))
        elif listing[name] != size:
            what = f"{listing[name]} bytes, written with {size} (truncated or overwritten)"
            report.findings.append(Finding(rel, what, shard_records.STEP, unit))
        elif f"{name}.idx" not in b.listing(f"{stage_dir}/{META_DIR}"):
            what = "its .idx is missing"
            report.findings.append(Finding(rel, what, shard_records.STEP, unit))
    for stage_dir in _stage_dirs(b):
        for name in sorted(b.listing(stage_dir)):
            parsed = shard_records.unit_of_tar(name)
            if parsed and f"{stage_dir}/{name}" not in expected:
                what = "not committed (left by a run killed before its commit)"
                rel = b.rel(f"{stage_dir}/{name}")
                report.findings.append(
                    Finding(rel, what, shard_records.STEP, parsed[0], damage=False)
                )


def check_before_step(build: BuildDir) -> None:
    """Raise DamagedBuild when a committed file of the build is damaged (steps another live
    run holds are skipped; the caller's own are checked)."""
    damage = inspect(build).damage
    if damage:
        raise DamagedBuild(build, damage)


# ---- the repair --------------------------------------------------------------------------


@dataclass
class Repair:
    moved: list[dict[str, str]] = field(default_factory=list)  # {from, to, why}
    cleared: list[str] = field(default_factory=list)  # "<step> unit <unit>"
    aside: str = ""  # where the files went (relative to DIR)
    notes: list[str] = field(default_factory=list)


def repair(build: BuildDir, report: Report) -> Repair:
    """Move every listed file aside and clear the markers of damaged units (the whole unit:
    all its parts, tars and `.idx`), then let the owning steps forget those units. Takes each
    affected step's lock (refusing, like a second run would, when one is held)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = posixpath.join(*DOCTOR_DIR, stamp)
    result = Repair(aside=aside)
    if not report.findings:
        return result
    b = _Build(build)
    damaged_units = sorted({(f.step, f.unit) for f in report.damage if f.unit != "-"})
    why = {f.path: f.what for f in report.findings}
    files = _unit_files(b, damaged_units)
    steps = sorted({s for s, _ in damaged_units} | {f.step for f in report.findings})
    locks = []
    try:
        for step in steps:
            lock = BuildLock(build, step)
            lock.__enter__()
            locks.append(lock)
        for rel in sorted(set(files) | {f.path for f in report.findings}):
            if not build.exists(build.path(rel)):
                continue
            target = posixpath.join(aside, rel)
            reason = why.get(rel) or f"part of damaged unit {files[rel]}"
            build.fs.create_dir(build.path(posixpath.dirname(target)), recursive=True)
            build.fs.move(build.path(rel), build.path(target))
            result.moved.append({"from": rel, "to": target, "why": reason})
        for step, unit in damaged_units:
            result.cleared.append(f"{step} unit {unit}")
        _forget(build, damaged_units, result)
        build.write_json_atomic(
            build.path(aside, REPORT_NAME),
            {"findings": [asdict(f) for f in report.findings], **asdict(result)},
        )
    finally:
        for lock in locks:
            lock.release()
    return result


def _unit_files(b: _Build, units: list[tuple[str, str]]) -> dict[str, str]:
    """{file relative to DIR: "<step> <unit>"} of every file the damaged units own: their
    markers, their parts in every table, and for shards units their tars and `.idx`."""
    wanted = set(units)
    files: dict[str, str] = {}
    for step, unit in units:
        files[f"_state/{step}/done/{unit}.json"] = f"{step} {unit}"
    for table in sorted(CONTRACTS):
        for name in b.listing(b.build.table_dir(table)):
            owner = StepLedger.table_file_owner(name)
            if owner in wanted:
                files[f"{table}/{name}"] = " ".join(owner)
    if any(step == shard_records.STEP for step, _ in units):
        for stage_dir in _stage_dirs(b):
            for name in b.listing(stage_dir):
                parsed = shard_records.unit_of_tar(name)
                if parsed and (shard_records.STEP, parsed[0]) in wanted:
                    files[b.rel(f"{stage_dir}/{name}")] = f"shards {parsed[0]}"
                    idx = offsets_path(stage_dir, name)
                    if b.build.exists(idx):
                        files[b.rel(idx)] = f"shards {parsed[0]}"
    return files


def _forget(build: BuildDir, units: list[tuple[str, str]], result: Repair) -> None:
    """Let the owning steps forget cleared units: what else they keep about a unit."""
    if any(step == "ingest" for step, _ in units):
        # The commit index still lists the cleared units' sources as ingested; rebuilt from
        # the tables that remain, the rerun ingests them again. Deferred: they import
        # pyarrow.dataset (~1 s), which only this repair needs, and every `minmo` command
        # imports this module (the CLI checks builds before each step).
        from pipelines.ingest.commit_index import reindex
        from pipelines.ingest.run import STEP, TABLES  # deferred: as above

        counts = reindex(build, StepLedger(build, STEP, TABLES))
        result.notes.append(
            f"ingest commit index rebuilt from {counts['source_parts']} committed parts"
        )
    generations: dict[str, set[int]] = defaultdict(set)
    for step, unit in units:
        parsed = shard_records.unit_of_tar(f"{unit}.tar") if step == shard_records.STEP else None
        if parsed:
            generations[parsed[1]].add(parsed[2])
    for stage, gens in sorted(generations.items()):
        for generation in sorted(gens):
            if shard_records.reopen_generation(build, stage, generation):
                result.notes.append(f"shards {stage} generation {generation} reopened")


def render(build: BuildDir, report: Report) -> str:
    """What `minmo doctor` prints."""
    lines = []
    for step, holder in sorted(report.skipped.items()):
        lines.append(
            f"doctor: {step} not checked: running (pid {holder.get('pid')} on {holder.get('host')})"
        )
    damage = report.damage
    rest = [f for f in report.findings if not f.damage]
    if not report.findings:
        lines.append(f"doctor: {build.uri}: no inconsistency found")
        return "\n".join(lines)
    lines.append(
        f"doctor: {build.uri}: {len(damage)} damaged committed file(s), {len(rest)} "
        "uncommitted file(s)"
    )
    lines += [f"  damaged: {f}" for f in damage]
    lines += [f"  uncommitted: {f}" for f in rest]
    return "\n".join(lines)


def render_repair(result: Repair) -> str:
    lines = [f"doctor --fix: moved {len(result.moved)} file(s) into {result.aside}/"]
    lines += [f"  {m['from']}  ({m['why']})" for m in result.moved]
    lines += [f"  cleared {c}" for c in result.cleared]
    lines += [f"  {n}" for n in result.notes]
    if result.cleared:
        lines.append("  rerun the steps (or the job) to redo exactly those units")
    return "\n".join(lines)
