"""Chaos testing of a job: SIGKILL `minmo run` at chosen moments, rerun it, compare the result
with an uninterrupted build.

Owns: running a job spec as a child process group (`run_job`), killing that group at a moment
(`KillAt`: seconds after start, or when a path first appears in the build: a step's first output,
a shard writer's `.tmp-` file), finding the processes a run left behind, and comparing two builds
(`compare_builds`). `bench/chaos.py` draws seeded random kill moments with it; the slow test
`tests/test_chaos.py` kills at fixed points.

What "the same build" means here, check by check (each finding names its check):
- `tables`: every table (a top-level folder of the build holding Parquet parts) has the same rows,
  as a multiset (a row written twice is a difference), whatever the part files are called;
- `shards`: every file under `shards/` (tars, `.idx`, `index.json`) has the same sha256;
- `exports`: every file of every `checkpoints/<stage>/final/` is equal: tensors by value (the
  `.pt` and `.safetensors` files), JSON by value, anything else byte for byte;
- `stats`: `stats/stats.json` is equal, less `VOLATILE_STATS_KEYS`;
- `files`: the candidate holds no file and no folder that the reference lacks (a temp file, a dead
  run's staging folder, a second TensorBoard event file), and lacks none of its files;
- `verify` (on the candidate, `minmo verify DIR/shards`) exits 0;
- `processes`: no process of a run is alive `grace_s` after it ended (killed or not).

Every string compared has the build's own path replaced by `{build}`: the two builds live in
different folders, and tables name their source files by URI (recordings.source_uri).

Processes are found by an environment variable (`RUN_ENV`) set for the run's process group:
every descendant inherits it, including the ones that left the group (a local Ray's raylet and
workers), and /proc/<pid>/environ shows it. Survivors are reported, then killed by pid, so that
one bad trial does not starve the next.

Must not: change a build it compares, or kill a process that does not carry its run's marker.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from schemas.shards import is_temp_name

Seconds = float

RUN_ENV = "MINMO_CHAOS_RUN"
"""Set to a fresh token for each run's process group: how its processes are found afterwards."""

VOLATILE_STATS_KEYS = ("elapsed_s",)
"""Top-level keys of stats.json that differ between two computations of one build (wall time).
Paths in it (`inputs.root`, `config.out`) compare after the build path becomes `{build}`."""

TFEVENTS_PREFIX = "events.out.tfevents."
"""TensorBoard names each event file by time, host and pid: compared by count per folder."""

BUILD_PLACEHOLDER = "{build}"
MAX_FINDINGS = 8  # per check: the first few name the problem; the count says how big it is
POLL_S: Seconds = 0.02
KILL_WAIT_S: Seconds = 5.0  # for a SIGKILLed survivor to be gone


# ------------------------------------------------------------------------------ running a job


@dataclass(frozen=True)
class KillAt:
    """When to SIGKILL a run's process group: `after_s` seconds after it starts, or, with
    `when_exists`, `after_s` seconds after a path matching that pattern first appears under the
    build (fnmatch on the path relative to the build; `*` also matches `/`)."""

    after_s: Seconds = 0.0
    when_exists: str | None = None

    def describe(self) -> str:
        if self.when_exists is None:
            return f"at {self.after_s:.1f} s"
        delay = f" + {self.after_s:.1f} s" if self.after_s else ""
        return f"when {self.when_exists} appears{delay}"


@dataclass
class RunOutcome:
    """One `minmo run` of a job: how it ended, and what it left running."""

    returncode: int | None  # None when this module killed it
    seconds: Seconds  # from start to exit or kill
    step: str | None  # the step it was in when it ended (its last "== <step>" line)
    log: Path
    kill: KillAt | None = None
    trigger: str | None = None  # the path that fired `kill.when_exists` (relative to the build)
    survivors: list[str] = field(default_factory=list)  # "pid cmdline", alive after grace_s

    @property
    def killed(self) -> bool:
        return self.returncode is None

    def describe(self) -> str:
        if self.killed:
            when = self.kill.describe() if self.kill else ""
            return f"killed {when} (in {self.step}, after {self.seconds:.1f} s)"
        return f"exit {self.returncode} in {self.seconds:.1f} s"


def job_command(job: str | Path, build: str | Path) -> list[str]:
    """The command a chaos run starts: the same `minmo run` a user types."""
    return [sys.executable, "-m", "minmo.cli", "-q", "run", str(job), "--build", str(build)]


def run_job(
    job: str | Path,
    build: str | Path,
    log: Path,
    kill: KillAt | None = None,
    *,
    timeout_s: Seconds = 3600.0,
    grace_s: Seconds = 10.0,
) -> RunOutcome:
    """`minmo run JOB --build BUILD` through `run_command`."""
    return run_command(
        job_command(job, build), Path(build), log, kill, timeout_s=timeout_s, grace_s=grace_s
    )


def run_command(
    command: list[str],
    build: Path,
    log: Path,
    kill: KillAt | None = None,
    *,
    timeout_s: Seconds = 3600.0,
    grace_s: Seconds = 10.0,
) -> RunOutcome:
    """Run `command` (writing `build`) in a new process group, SIGKILL the group at `kill` (if
    it comes before the command ends), and wait up to `grace_s` for every process it started
    to be gone; the ones still there are reported in `survivors`, then killed.

    A command still going at `timeout_s` is killed and raises TimeoutError: a hung step is a
    finding, not something to wait on forever."""
    token = uuid.uuid4().hex
    env = {**os.environ, RUN_ENV: token, "PYTHONUNBUFFERED": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: the one the kill takes down
        )
        try:
            killed, trigger = _wait_or_kill(proc, build, kill, started, timeout_s)
        except BaseException:
            _kill_group(proc)
            _await_exit(token, grace_s)
            raise
    seconds = time.monotonic() - started
    survivors = _await_exit(token, grace_s)
    return RunOutcome(
        returncode=None if killed else proc.returncode,
        seconds=seconds,
        step=last_step(log),
        log=log,
        kill=kill,
        trigger=trigger,
        survivors=survivors,
    )


def _wait_or_kill(
    proc: subprocess.Popen[bytes],
    build: Path,
    kill: KillAt | None,
    started: float,
    timeout_s: Seconds,
) -> tuple[bool, str | None]:
    """(whether the kill came before the run ended, the path that fired it)."""
    deadline: float | None = None if kill is None or kill.when_exists else started + kill.after_s
    trigger = None
    while proc.poll() is None:
        now = time.monotonic()
        if now - started > timeout_s:
            _kill_group(proc)
            raise TimeoutError(f"{proc.args}: still running after {timeout_s:.0f} s")
        if kill is not None and deadline is None:
            trigger = first_match(build, kill.when_exists or "")
            deadline = None if trigger is None else now + kill.after_s
        if deadline is not None and now >= deadline:
            _kill_group(proc)
            return True, trigger
        time.sleep(POLL_S)
    return False, trigger


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def first_match(build: Path, pattern: str) -> str | None:
    """The first path under `build` (files and folders, relative) matching `pattern`; only the
    pattern's literal leading folders are walked, so polling stays cheap."""
    parts = pattern.split("/")
    literal = 0
    while literal < len(parts) - 1 and not any(c in parts[literal] for c in "*?["):
        literal += 1
    top = build.joinpath(*parts[:literal])
    for root, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            rel = os.path.relpath(os.path.join(root, name), build)
            if fnmatch.fnmatchcase(rel, pattern):
                return rel
    return None


def last_step(log: Path) -> str | None:
    """The last step a run's log announced (`minmo run` prints "== <step>" as each starts)."""
    step = None
    with contextlib.suppress(OSError), open(log, errors="replace") as f:
        for line in f:
            if line.startswith("== "):
                step = line[3:].strip()
    return step


def run_processes(token: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose environment carries `RUN_ENV=token`."""
    needle = f"{RUN_ENV}={token}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                    continue  # a zombie: dead, only its exit status waits for its parent
        except OSError:
            continue  # exited meanwhile, or not ours to read
        found.append((int(entry.name), cmd[:160]))
    return found


def _await_exit(token: str, grace_s: Seconds) -> list[str]:
    """The processes of run `token` still alive after `grace_s` ("pid cmdline"), killed now."""
    deadline = time.monotonic() + grace_s
    while (alive := run_processes(token)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid, _ in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT_S
    while alive and run_processes(token) and time.monotonic() < deadline:
        time.sleep(0.05)  # SIGKILL is asynchronous: the next run must not meet them
    return [f"{pid} {cmd}" for pid, cmd in alive]


# ------------------------------------------------------------------------- comparing builds


@dataclass
class Comparison:
    """Findings per check (see the module docstring); no finding in any check: the same build."""

    findings: dict[str, list[str]] = field(default_factory=dict)

    def add(self, check: str, finding: str) -> None:
        self.findings.setdefault(check, []).append(finding)

    @property
    def ok(self) -> bool:
        return not any(self.findings.values())

    def failed_checks(self) -> list[str]:
        return [check for check, found in self.findings.items() if found]

    def describe(self) -> str:
        lines = []
        for check in self.failed_checks():
            found = self.findings[check]
            more = f" (+{len(found) - MAX_FINDINGS} more)" if len(found) > MAX_FINDINGS else ""
            lines.append(f"  {check}: {'; '.join(found[:MAX_FINDINGS])}{more}")
        return "\n".join(lines)


def compare_builds(reference: Path, candidate: Path) -> Comparison:
    """How `candidate` differs from `reference` (see the module docstring); neither is changed."""
    result = Comparison()
    _compare_tables(reference, candidate, result)
    _compare_shards(reference, candidate, result)
    _compare_exports(reference, candidate, result)
    _compare_stats(reference, candidate, result)
    _compare_files(reference, candidate, result)
    return result


def verify_shards(build: Path, timeout_s: Seconds = 600.0) -> list[str]:
    """`minmo verify BUILD/shards` as a user runs it: its complaints, none when it passes."""
    shards = build / "shards"
    if not shards.is_dir():
        return []
    result = subprocess.run(
        [sys.executable, "-m", "minmo.cli", "-q", "verify", str(shards)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if result.returncode == 0:
        return []
    return [f"exit {result.returncode}: {(result.stdout + result.stderr).strip()[-1000:]}"]


def normalized(text: str, build: Path) -> str:
    """`text` with the build's own path replaced by `{build}`."""
    return text.replace(str(build), BUILD_PLACEHOLDER)


def table_names(build: Path) -> list[str]:
    """The build's tables: top-level folders (not `_`/`.` ones) holding Parquet parts."""
    if not build.is_dir():
        return []
    return sorted(
        d.name
        for d in build.iterdir()
        if d.is_dir() and d.name[0] not in "_." and any(_parquet_parts(d))
    )


def _parquet_parts(table_dir: Path) -> Iterator[Path]:
    return (p for p in table_dir.glob("*.parquet") if p.is_file() and not is_temp_name(p.name))


def table_rows(build: Path, table: str) -> Counter[str]:
    """Every row of a table as canonical JSON (keys sorted, build path as `{build}`), counted."""
    rows: Counter[str] = Counter()
    for part in sorted(_parquet_parts(build / table)):
        for row in pq.read_table(part).to_pylist():
            rows[normalized(json.dumps(row, sort_keys=True, default=repr), build)] += 1
    return rows


def _compare_tables(reference: Path, candidate: Path, result: Comparison) -> None:
    ref_tables, cand_tables = table_names(reference), table_names(candidate)
    for name in sorted(set(ref_tables) ^ set(cand_tables)):
        result.add(
            "tables", f"{name}: only in {'reference' if name in ref_tables else 'candidate'}"
        )
    for name in sorted(set(ref_tables) & set(cand_tables)):
        ref, cand = table_rows(reference, name), table_rows(candidate, name)
        if ref != cand:
            lost, extra = ref - cand, cand - ref
            example = next(iter(extra or lost))[:200]
            result.add(
                "tables",
                f"{name}: {sum(lost.values())} reference rows missing, {sum(extra.values())} "
                f"rows not in the reference (e.g. {example})",
            )


def _files(root: Path) -> dict[str, Path]:
    """Every file under `root` by its path relative to `root` (temp files included)."""
    if not root.is_dir():
        return {}
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _compare_shards(reference: Path, candidate: Path, result: Comparison) -> None:
    ref = {k: p for k, p in _files(reference / "shards").items() if not is_temp_name(k)}
    cand = {k: p for k, p in _files(candidate / "shards").items() if not is_temp_name(k)}
    for name in sorted(set(ref) ^ set(cand)):
        result.add("shards", f"{name}: only in {'reference' if name in ref else 'candidate'}")
    for name in sorted(set(ref) & set(cand)):
        if sha256_file(ref[name]) != sha256_file(cand[name]):
            result.add("shards", f"{name}: sha256 differs")


def _compare_exports(reference: Path, candidate: Path, result: Comparison) -> None:
    stages = sorted(
        {p.parent.name for p in reference.glob("checkpoints/*/final")}
        | {p.parent.name for p in candidate.glob("checkpoints/*/final")}
    )
    for stage in stages:
        ref = _files(reference / "checkpoints" / stage / "final")
        cand = _files(candidate / "checkpoints" / stage / "final")
        for name in sorted(set(ref) ^ set(cand)):
            where = "reference" if name in ref else "candidate"
            result.add("exports", f"{stage}/final/{name}: only in {where}")
        for name in sorted(set(ref) & set(cand)):
            problem = _file_difference(ref[name], cand[name], reference, candidate)
            if problem:
                result.add("exports", f"{stage}/final/{name}: {problem}")


def _file_difference(ref: Path, cand: Path, ref_build: Path, cand_build: Path) -> str | None:
    """How two files of an export differ by value, or None. torch.save embeds a serialization id
    of its own, so tensors compare by value, not by bytes."""
    if ref.suffix == ".json":
        a = json.loads(normalized(ref.read_text(), ref_build))
        b = json.loads(normalized(cand.read_text(), cand_build))
        return None if a == b else "JSON differs"
    if ref.suffix in (".pt", ".safetensors"):
        return _tensor_difference(ref, cand)
    return None if sha256_file(ref) == sha256_file(cand) else "bytes differ"


def _tensor_difference(ref: Path, cand: Path) -> str | None:
    import torch  # heavy; only the export check needs it

    def load(path: Path) -> dict[str, Any]:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # ships with transformers / peft

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)

    a, b = load(ref), load(cand)
    if a.keys() != b.keys():
        return f"tensor names differ: {sorted(set(a) ^ set(b))[:5]}"
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    return f"{len(unequal)} tensors differ (e.g. {unequal[0]})" if unequal else None


def _compare_stats(reference: Path, candidate: Path, result: Comparison) -> None:
    ref_path, cand_path = reference / "stats" / "stats.json", candidate / "stats" / "stats.json"
    if not ref_path.is_file() and not cand_path.is_file():
        return
    if ref_path.is_file() != cand_path.is_file():
        where = "reference" if ref_path.is_file() else "candidate"
        result.add("stats", f"stats/stats.json only in {where}")
        return
    a = json.loads(normalized(ref_path.read_text(), reference))
    b = json.loads(normalized(cand_path.read_text(), candidate))
    for key in VOLATILE_STATS_KEYS:
        a.pop(key, None)
        b.pop(key, None)
    for where in json_differences(a, b):
        result.add("stats", f"stats.json {where}")


def json_differences(a: Any, b: Any, where: str = "$") -> Iterator[str]:
    """The JSON paths at which two parsed documents differ (the shallowest one of each)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                yield f"{where}.{key}: only in {'reference' if key in a else 'candidate'}"
            else:
                yield from json_differences(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from json_differences(x, y, f"{where}[{i}]")
    elif a != b:
        yield f"{where}: {json.dumps(a)[:80]} != {json.dumps(b)[:80]}"


def _tree(root: Path) -> tuple[Counter[str], set[str]]:
    """(files, folders) under `root`, relative; TensorBoard event files named by their folder."""
    files: Counter[str] = Counter()
    dirs: set[str] = set()
    for path in root.rglob("*"):
        rel = str(path.relative_to(root))
        if path.is_dir() and not path.is_symlink():
            dirs.add(rel)
        elif path.name.startswith(TFEVENTS_PREFIX):
            files[str(Path(rel).parent / f"{TFEVENTS_PREFIX}*")] += 1
        else:
            files[rel] += 1
    return files, dirs


def _compare_files(reference: Path, candidate: Path, result: Comparison) -> None:
    ref_files, ref_dirs = _tree(reference)
    cand_files, cand_dirs = _tree(candidate)
    for name, n in sorted((cand_files - ref_files).items()):
        result.add("files", f"left behind: {name}" + (f" (x{n})" if n > 1 else ""))
    for name in sorted(cand_dirs - ref_dirs):
        result.add("files", f"folder left behind: {name}/")
    for name in sorted(ref_files - cand_files):
        result.add("files", f"missing: {name}")


# ------------------------------------------------------------------------------- one trial


@dataclass
class Trial:
    """A build killed once or more, then rerun to the end, against the reference build."""

    index: int
    runs: list[RunOutcome]  # the killed runs, then the rerun
    comparison: Comparison

    @property
    def rerun(self) -> RunOutcome:
        return self.runs[-1]

    @property
    def kills(self) -> list[RunOutcome]:
        return [r for r in self.runs if r.killed]

    @property
    def ok(self) -> bool:
        return self.comparison.ok

    def line(self) -> str:
        """One line: where each kill landed, how the rerun ended, and the verdict."""
        kills = ", ".join(_where(r) for r in self.kills) or "no kill landed"
        verdict = (
            "identical" if self.ok else "DIFFERS: " + ", ".join(self.comparison.failed_checks())
        )
        return f"trial {self.index}: killed at {kills}; rerun {self.rerun.describe()}: {verdict}"


def _where(run: RunOutcome) -> str:
    fired = f" ({run.trigger} appeared)" if run.trigger else ""
    return f"{run.seconds:.1f} s in {run.step}{fired}"


def run_trial(
    index: int,
    job: str | Path,
    reference: Path,
    build: Path,
    kills: list[KillAt],
    *,
    timeout_s: Seconds = 3600.0,
    grace_s: Seconds = 10.0,
) -> Trial:
    """Run `job` on `build`, killed at each of `kills` in turn (each in a new run, after the one
    before it was killed), then `finish_trial`."""
    runs = []
    for n, kill in enumerate(kills):
        log = build.parent / f"{build.name}.kill{n}.log"
        runs.append(run_job(job, build, log, kill, timeout_s=timeout_s, grace_s=grace_s))
    return finish_trial(index, job, reference, build, runs, timeout_s=timeout_s, grace_s=grace_s)


def finish_trial(
    index: int,
    job: str | Path,
    reference: Path,
    build: Path,
    killed: list[RunOutcome],
    *,
    timeout_s: Seconds = 3600.0,
    grace_s: Seconds = 10.0,
) -> Trial:
    """Rerun `job` on `build` (left by the `killed` runs) to the end, then check it: the rerun
    exits 0, no run left a process, `minmo verify` passes, and it matches `reference`."""
    log = build.parent / f"{build.name}.rerun.log"
    runs = [*killed, run_job(job, build, log, timeout_s=timeout_s, grace_s=grace_s)]
    comparison = Comparison()
    rerun = runs[-1]
    if rerun.returncode != 0:
        tail = rerun.log.read_text(errors="replace")[-1500:]
        comparison.add("rerun", f"exit {rerun.returncode}; log {rerun.log}: ...{tail}")
    for run in runs:
        for process in run.survivors:
            comparison.add("processes", f"alive {grace_s:.0f} s after the run ended: {process}")
    for problem in verify_shards(build):
        comparison.add("verify", problem)
    found = compare_builds(reference, build)
    for check, findings in found.findings.items():
        for finding in findings:
            comparison.add(check, finding)
    return Trial(index, runs, comparison)
