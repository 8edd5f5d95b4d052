"""Chaos testing of a job: SIGKILL `minmo run` at chosen moments, rerun it, compare the result
with an uninterrupted build.

Owns: running a job spec as a child process group (`run_job`), killing that group at a moment
(`KillAt`: seconds after start, or when a path first appears in the build: a step's first output,
a shard writer's `.tmp-` file), finding the processes a run left behind, and a trial's verdict
(`finish_trial`): the rerun exits 0, `minmo verify DIR/shards` passes (check `verify`), no process
of any run is alive `grace_s` after it ended, killed or not (check `processes`), and the build
matches the reference (minmo/testing/build_diff.py: tables, shards, exports, stats, files).
`bench/chaos.py` draws seeded random kill moments with it; `tests/test_chaos.py` kills at fixed
points.

Processes are found by an environment variable (`RUN_ENV`) set for the run's process group:
every descendant inherits it, also those that left the group (a local Ray starts its workers in
sessions of their own, so a group kill misses them), and /proc/<pid>/environ shows it. Survivors
are reported, then killed by pid, so that one bad trial does not starve the next.

Must not: change a build it compares, or kill a process that does not carry its run's marker.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from minmo.testing.build_diff import Comparison, compare_builds
from schemas.units import Seconds

RUN_ENV = "MINMO_CHAOS_RUN"
"""Set to a fresh token for each run's process group: how its processes are found afterwards."""

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


# ------------------------------------------------------------------------------ verify


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
        landed = ", ".join(_where(r) for r in self.kills)
        kills = f"killed at {landed}" if landed else "no kill landed (the run ended first)"
        verdict = (
            "identical" if self.ok else "DIFFERS: " + ", ".join(self.comparison.failed_checks())
        )
        return f"trial {self.index}: {kills}; rerun {self.rerun.describe()}: {verdict}"


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
