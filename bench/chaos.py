"""Chaos benchmark: SIGKILL the demo job at random moments, rerun it, compare with a clean build.

    .venv/bin/python bench/chaos.py --trials 20 [--seed 0] [--job jobs/demo.yaml]
                                    [--work build/chaos] [--reference DIR] [--twice 0.3] [--keep]

1. One uninterrupted `minmo run JOB --build WORK/reference` (or `--reference DIR`, a finished
   build of the same job, to skip it); its wall time T sets the scale of the kill moments.
2. Each trial builds WORK/trial-NN from nothing: `minmo run` is started in its own process group
   and the whole group is SIGKILLed at a seeded random moment (a fraction of T drawn from
   `--seed`); with probability `--twice` the rerun is killed once more, at a random moment of the
   work left. Then the job is rerun to the end, and the build is compared with the reference
   (minmo/testing/chaos.py: tables, shard sha256, checkpoint exports, stats.json, `minmo verify`,
   files left behind, processes left alive).
3. One line per trial, then a summary; the exit status is 0 only when every trial was identical.

The kill moments are fractions of T, so one seed gives the same moments relative to the job's
length on any machine. A trial's build is deleted when it matched (kept with `--keep`, and always
kept when it differed, with the logs of each run beside it).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minmo.testing.chaos import KillAt, Trial, run_job, run_trial  # noqa: E402
from minmo.testing.chaos import verify_shards as verify  # noqa: E402

# A kill lands between these fractions of the work left: not in the first instant (nothing
# started) nor after the end (nothing to kill).
KILL_RANGE = (0.02, 0.98)


def draw_kills(rng: random.Random, total_s: float, twice: float) -> list[KillAt]:
    """One kill at a random moment of the job, sometimes a second in the rerun's remaining work."""
    first = rng.uniform(*KILL_RANGE) * total_s
    kills = [KillAt(after_s=first)]
    if rng.random() < twice:
        kills.append(KillAt(after_s=rng.uniform(*KILL_RANGE) * max(total_s - first, 1.0)))
    return kills


def reference_build(args: argparse.Namespace) -> tuple[Path, float]:
    if args.reference:
        build = Path(args.reference).resolve()
        if not (build / "_state").is_dir():
            sys.exit(f"--reference {build}: not a finished build of the job")
        total = args.reference_s
        print(f"reference: {build} (given; kill moments scaled to {total:.0f} s)")
        return build, total
    build = args.work / "reference"
    shutil.rmtree(build, ignore_errors=True)
    outcome = run_job(
        args.job, build, args.work / "reference.log", timeout_s=args.timeout_s, grace_s=args.grace_s
    )
    if outcome.returncode != 0:
        sys.exit(f"reference: {outcome.describe()}; see {outcome.log}")
    for process in outcome.survivors:  # a finding of its own, but the reference build stands
        print(f"reference: left alive {args.grace_s:.0f} s after it ended: {process}")
    problems = verify(build)
    if problems:
        sys.exit(f"reference: minmo verify failed: {problems}")
    print(f"reference: {build} in {outcome.seconds:.0f} s, verified", flush=True)
    return build, outcome.seconds


def summary(trials: list[Trial], reference_s: float) -> str:
    identical = sum(t.ok for t in trials)
    steps = Counter(r.step for t in trials for r in t.kills)
    failed = Counter(check for t in trials for check in t.comparison.failed_checks())
    reruns = [t.rerun.seconds for t in trials]
    twice = sum(len(t.kills) > 1 for t in trials)
    lines = [
        f"chaos: {identical}/{len(trials)} builds identical to an uninterrupted one "
        f"({sum(len(t.kills) for t in trials)} kills; killed twice: {twice} of the trials)",
        "  kills by step: " + ", ".join(f"{s} {n}" for s, n in sorted(steps.items(), key=str)),
        f"  uninterrupted job {reference_s:.0f} s; reruns after the kills "
        f"{min(reruns):.0f}-{max(reruns):.0f} s",
    ]
    if failed:
        lines.append("  failed checks: " + ", ".join(f"{c} in {n}" for c, n in failed.items()))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--job", default=str(REPO / "jobs" / "demo.yaml"))
    parser.add_argument("--work", type=Path, default=REPO / "build" / "chaos")
    parser.add_argument("--reference", help="a finished build of the job: skip the clean run")
    parser.add_argument("--reference-s", type=float, default=300.0, help="its wall time (s)")
    parser.add_argument("--twice", type=float, default=0.3, help="chance of a second kill")
    parser.add_argument("--grace-s", type=float, default=10.0, help="for processes to exit")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per run of the job")
    parser.add_argument("--keep", action="store_true", help="keep the builds that matched")
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    reference, total_s = reference_build(args)
    rng = random.Random(args.seed)
    trials = []
    for index in range(1, args.trials + 1):
        kills = draw_kills(rng, total_s, args.twice)
        build = args.work / f"trial-{index:02d}"
        shutil.rmtree(build, ignore_errors=True)
        trial = run_trial(
            index,
            args.job,
            reference,
            build,
            kills,
            timeout_s=args.timeout_s,
            grace_s=args.grace_s,
        )
        trials.append(trial)
        print(trial.line(), flush=True)
        if not trial.ok:
            print(trial.comparison.describe(), flush=True)
            print(f"  kept: {build}", flush=True)
        elif not args.keep:
            shutil.rmtree(build)
            for log in args.work.glob(f"{build.name}.*.log"):
                log.unlink()
    print(summary(trials, total_s))
    print(
        f"  {args.trials} trials in {(time.monotonic() - started) / 60:.1f} min, seed {args.seed}"
    )
    return 0 if all(t.ok for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
