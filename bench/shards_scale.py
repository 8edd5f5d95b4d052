"""Benchmark: how the shards step scales with the build, and with its writers.

    .venv/bin/python bench/shards_scale.py [--sizes 100000 1000000 [10000000]]
        [--max-samples 2000] [--writer-segments 4096] [--writer-max-samples 200]
        [--writer-repeats 2] [--speech-tokenizer tiny|full] [--work /tmp/DIR] [--keep]
        [--skip-append] [--skip-contextual] [--skip-writers] [--ray-cpus N]

Builds are synthetic (bench/synthetic.py): ingest-shaped units of 256 recordings x 4 segments,
every recording a real English clip of ../shared/data (its real duration, cut into 4 equal
segments, each carrying the clip's transcript, language "en"), so each segment makes asr,
contextual_asr and language_id samples in stage 1 and a tts sample in stage 2. Working data
goes under /tmp (a 1M-segment build takes ~7 GB once its plan-only shards are written).

1. Scale, per size: `run_shards(stage1 + stage2, encode_audio=False)` (the plan-only writer:
   each sample's spec as its json member, no audio, no tokens) in a fresh child process. The
   child starts Ray first (timed apart), then times ShardStep's plan and write phases per stage
   by wrapping its two methods (instrumentation only), and reports its own peak RSS (VmHWM of
   /proc/self/status: ru_maxrss would carry over the peak of whatever forked it). Ray workers
   are other processes: a sampler thread counts the child's `ray::` descendants (peak at once,
   distinct pids) and their largest RSS (the RSS target is the driver's), and sums the CPU
   seconds of the whole process tree per phase: on a shared machine the wall times follow the
   load, the CPU seconds much less, so the plan-growth target is judged on both.
2. Append 1 %: new units with 1 % more segments, then the same run again. Every committed tar's
   sha256, mtime and inode are compared before and after, and the new generation's shards are
   checked against max_samples (from index.json and from each `.idx`).
3. contextual_asr planning, in this process on the writer build, in CPU time (robust to other
   load on a shared machine), variants taking turns, best of 5: the planner's unit stage
   (`shard_plan.unit_specs`: read the unit, StageBuilder, mixture copies, hashes, JSON, the
   unit's spec file) as configured; with contextual_asr's mixture weight 0 (built, then
   dropped); with no contextual_asr at all (`StageBuilder._bias_words` patched to return []);
   StageBuilder alone with and without; `_bias_words` alone.
4. Writers: the real writer (`encode_audio=True`: decode, FLAC, text and speech tokens, tars) on
   a build of `--writer-segments` segments, `ShardsConfig.actors` 1 then 2, timing the write
   phase alone (read specs, shuffle to shards, ShardWriter actors) per stage, and the writers'
   steady pace between the first and the last shard commit (marker mtimes). The speech
   tokenizer is the tiny test checkpoint by default (`full`: the 124M S3TokenizerV2 with random
   weights, same compute as real ones, far slower on CPU).

MB here are MiB (VmHWM / 1024, as the other benchmarks print them).

Targets (printed MET / MISSED / NOT RUN): driver peak RSS grows < 10 % from 1M to 10M segments;
plan time grows <= 11x for 10x the segments; contextual_asr planning <= 50 us per segment;
0 committed shards rewritten by a 1 % append; 2 writers >= 1.7x the throughput of 1.

Measured 2026-12-06, commit 2867620, on the development VM (AMD EPYC, 2 vCPUs, 24 GiB, shared
with other engineers' test runs: load average 4-10), Python 3.11.7, Ray 2.60.0, pyarrow 26.0.1:

    segments   driver VmHWM   plan wall / CPU-s   write wall   1 % append rewrote
    100k       798 MB         33 / 35 s           82 s         0 of 236 tars
    1M         814 MB (+2 %)  207 / 197 s (6.2x)  479 s        0 of 2,354 tars
    (imports + Ray start alone: 770 MB; 10M not run: 1M took 11.5 min and 6.7 GB of /tmp)

contextual_asr planning 37 us/segment CPU (all of stage-1 planning: 109). Two writers gave 0.95x
(stage1) and 0.93x (stage2) of one: on a 2-CPU Ray node every shard was written by a single
process; with `--ray-cpus 4` two processes shared them (1.16x / 1.44x on the 2 real cores).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from machine import cpu_model, peak_rss_mb  # noqa: E402
from synthetic import (  # noqa: E402
    RECORDINGS_PER_UNIT,
    SEGMENTS_PER_CLIP,
    real_clips,
    write_unit_build,
)

STAGES = ["stage1", "stage2"]
RSS_GROWTH_MAX = 0.10
PLAN_GROWTH_MAX = 11.0
CONTEXTUAL_US_MAX = 50.0
WRITER_SPEEDUP_MIN = 1.7
SAMPLE_EVERY_S = 0.25
MIB = 2**20  # the unit of VmHWM / 1024, printed as MB like the other benchmarks


# ---- the child: one run_shards in a fresh interpreter ---------------------------------------


class ProcessSampler:
    """Samples this process's descendants: Ray workers (`ray::...` titles) at once and seen,
    their RSS, and the CPU seconds of the whole tree (driver, Ray's own processes, workers; a
    process that exits counts what it had used when last seen, at most SAMPLE_EVERY_S ago)."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.peak_workers = 0
        self.pids: set[int] = set()
        self.peak_worker_rss = 0
        self.peak_tree_rss = 0
        self.kinds: dict[str, set[int]] = {}
        self.cpu: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.sample()

    def sample(self) -> None:
        import psutil

        with self._lock:
            workers = 0
            tree = self.me.memory_info().rss
            for proc in [self.me, *self.me.children(recursive=True)]:
                try:
                    title = " ".join(proc.cmdline()[:1])
                    rss = proc.memory_info().rss
                    cpu = proc.cpu_times()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                self.cpu[proc.pid] = cpu.user + cpu.system
                if proc is self.me:
                    continue
                tree += rss
                if not title.startswith("ray::"):
                    continue
                workers += 1
                self.pids.add(proc.pid)
                self.peak_worker_rss = max(self.peak_worker_rss, rss)
                kind = title.split()[0].split(".")[0]  # "ray::Actor.method" -> "ray::Actor"
                self.kinds.setdefault(kind, set()).add(proc.pid)
            self.peak_workers = max(self.peak_workers, workers)
            self.peak_tree_rss = max(self.peak_tree_rss, tree)

    def cpu_s(self) -> float:
        """CPU seconds the tree has used so far (sampled now)."""
        self.sample()
        return sum(self.cpu.values())

    def report(self) -> dict[str, Any]:
        return {
            "peak_at_once": self.peak_workers,
            "distinct": len(self.pids),
            "peak_worker_rss_mb": self.peak_worker_rss / MIB,
            "peak_tree_rss_mb": self.peak_tree_rss / MIB,
            "kinds": {k: len(v) for k, v in sorted(self.kinds.items())},
        }


def child(job: dict[str, Any]) -> dict[str, Any]:
    """Runs in the child: Ray start, then run_shards with its plan/write phases timed."""
    from pipelines.ray_runtime import ensure_ray
    from pipelines.shards.step import ShardsConfig, ShardStep, run_shards

    t0 = time.perf_counter()
    ensure_ray(num_cpus=job.get("ray_cpus"), progress=False)
    ray_start_s = time.perf_counter() - t0
    if job.get("baseline"):
        return {"peak_rss_mb": peak_rss_mb(), "ray_start_s": ray_start_s}

    phases: list[dict[str, Any]] = []
    plan, write = ShardStep._plan_generation, ShardStep._write_generation
    sampler = ProcessSampler()

    def timed_plan(self: ShardStep, stage: str, generation: int, units: list[Any]) -> Any:
        t, cpu = time.perf_counter(), sampler.cpu_s()
        record = plan(self, stage, generation, units)
        phases.append(
            {
                "stage": stage,
                "phase": "plan",
                "generation": generation,
                "s": time.perf_counter() - t,
                "cpu_s": sampler.cpu_s() - cpu,
                "units": len(units),
                "samples": record["samples"],
                "shards": record["planned_shards"],
            }
        )
        return record

    def timed_write(self: ShardStep, record: dict[str, Any]) -> int:
        t, cpu = time.perf_counter(), sampler.cpu_s()
        written = write(self, record)
        phases.append(
            {
                "stage": record["stage"],
                "phase": "write",
                "generation": record["generation"],
                "s": time.perf_counter() - t,
                "cpu_s": sampler.cpu_s() - cpu,
                "shards_written": written,
                "samples": sum(e["samples"] for e in record["shards"]),
                "audio_s": sum(e["audio_s"] for e in record["shards"]),
            }
        )
        return written

    ShardStep._plan_generation = timed_plan  # type: ignore[method-assign]
    ShardStep._write_generation = timed_write  # type: ignore[method-assign]
    config = ShardsConfig(**job["config"])
    t0 = time.perf_counter()
    with sampler:
        summary = run_shards(
            job["build"],
            config,
            progress=False,
            rebuild=job.get("rebuild", False),
            encode_audio=job["encode_audio"],
        )
    return {
        "peak_rss_mb": peak_rss_mb(),
        "ray_start_s": ray_start_s,
        "run_s": time.perf_counter() - t0,
        "phases": phases,
        "stages": [
            {k: s[k] for k in ("stage", "generations", "new_units", "shards_written_now")}
            | {"samples": s["totals"]["samples"], "shards": s["totals"]["shards"]}
            for s in summary.stages
        ],
        "ray_workers": sampler.report(),
        "commits": {stage: commits(Path(job["build"]), stage) for stage in config.stages},
        "load_avg_1m": os.getloadavg()[0],
    }


def commits(build: Path, stage: str) -> list[dict[str, Any]]:
    """The shards committed so far, in commit order: marker mtime, samples, writer pid."""
    out = []
    for marker in (build / "_state" / "shards" / "done").glob(f"{stage}-g*.json"):
        m = json.loads(marker.read_text())
        out.append(
            {
                "t": marker.stat().st_mtime,
                "generation": m["generation"],
                "samples": sum(e["samples"] for e in m["shards"]),
                "pid": m.get("written_by", {}).get("pid"),
            }
        )
    return sorted(out, key=lambda c: c["t"])


def steady_rate(shards: list[dict[str, Any]]) -> float | None:
    """Samples per second between the first and the last shard commit (the first shard's
    samples left out): the writers' own pace, without start-up and shuffle."""
    if len(shards) < 3:
        return None
    span = shards[-1]["t"] - shards[0]["t"]
    return sum(c["samples"] for c in shards[1:]) / span if span > 0 else None


def run_child(job: dict[str, Any], log: Path, script: str = __file__) -> dict[str, Any]:
    """`script --child job` in a fresh interpreter with a local Ray (this script's `child` by
    default; bench/scale.py passes its own). Its result comes back in a file: Ray forwards
    worker output to the driver's stdout at any time, so stdout joins the log."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result_path = log.with_name(f"child-{time.time_ns()}.json")
    with log.open("a") as out:
        code = subprocess.run(
            [sys.executable, script, "--child", json.dumps(job), "--result", str(result_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        ).returncode
    if code != 0 or not result_path.exists():
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"child failed (exit {code}); log {log}:\n{tail}")
    result = json.loads(result_path.read_text())
    result_path.unlink()
    return result


def phase_s(
    result: dict[str, Any], phase: str, stage: str | None = None, measure: str = "s"
) -> float:
    """Wall ("s") or CPU ("cpu_s") seconds of a phase, summed over stages unless one is named."""
    return sum(
        p[measure]
        for p in result["phases"]
        if p["phase"] == phase and (stage is None or p["stage"] == stage)
    )


# ---- committed shards: before / after an append --------------------------------------------


def snapshot(build: Path) -> dict[str, tuple[str, int, int, int]]:
    """Every tar of every stage: path -> (sha256, mtime_ns, inode, bytes)."""
    out = {}
    for tar in sorted((build / "shards").glob("*/*.tar")):
        digest = hashlib.sha256()
        with tar.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        st = tar.stat()
        out[str(tar.relative_to(build))] = (
            digest.hexdigest(),
            st.st_mtime_ns,
            st.st_ino,
            st.st_size,
        )
    return out


def generation_shards(build: Path, generation: int) -> list[dict[str, Any]]:
    """The index entries of one generation's shards, each with its `.idx` sample count."""
    out = []
    for stage in STAGES:
        stage_dir = build / "shards" / stage
        index = json.loads((stage_dir / "_index" / "index.json").read_text())
        for entry in index["shards"]:
            if entry["generation"] == generation:
                idx = stage_dir / "_index" / f"{entry['name']}.idx"
                out.append({**entry, "idx_samples": idx.stat().st_size // 8 - 1})
    return out


# ---- contextual_asr planning, in process ---------------------------------------------------


def contextual_costs(build_dir: Path, work: Path, passes: int = 5) -> dict[str, Any]:
    """Per-segment CPU cost of stage-1 planning in this process: the planner's unit stage
    (`shard_plan.unit_specs`: read the unit, StageBuilder, mixture copies, hashes, JSON, the
    unit's spec file) and StageBuilder alone, each with and without contextual_asr; and
    `_bias_words` alone. Variants take turns within each pass (a burst of load elsewhere on a
    shared machine then hits all of them alike); the best of `passes` is kept."""
    from contextlib import nullcontext
    from unittest import mock

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipelines.build import BuildDir
    from pipelines.samples.builders import SampleConfig, StageBuilder, distractor_lexicon
    from pipelines.samples.prompts import PromptBook
    from pipelines.shards.plan import SpecParams, list_units, unit_specs

    build = BuildDir(str(build_dir))
    units = list_units(build, "stage1")
    views = [json.dumps(u.view, sort_keys=True) for u in units]
    segments = sum(pq.read_metadata(p).num_rows for u in units for p in u.view["segments"])
    batches = [pa.table({"unit": [u.key], "view": [v]}) for u, v in zip(units, views, strict=True)]
    spec_dir = work / "contextual-specs"
    config = SampleConfig(seed=0)
    book = PromptBook.load(config.prompts, 0)
    inputs = [
        (r["segment_id"], r["text"], r["language"])
        for u in units
        for p in u.view["segments"]
        for r in pq.read_table(p, columns=["segment_id", "text", "language"]).to_pylist()
    ]

    def planner(weights: dict[str, float]) -> int:
        params = SpecParams(
            build_uri=str(build_dir),
            storage_options={},
            stage="stage1",
            spec_dir=str(spec_dir),
            seed=0,
            shuffle=True,
            bucket_edges_s=[],
            weights=weights,
        )
        params_json = json.dumps(asdict(params), sort_keys=True)
        summaries = pa.concat_tables([unit_specs(b, params_json) for b in batches])
        return pc.sum(summaries.filter(pc.equal(summaries["kind"], "spec"))["n_sum"]).as_py()

    def builder(_: dict[str, float]) -> int:
        return sum(
            sum(1 for _ in StageBuilder(build, config, json.loads(v), None, book).specs("stage1"))
            for v in views
        )

    def bias_words(_: dict[str, float]) -> int:
        b = StageBuilder(build, config, None, {}, book)
        for sid, text, lang in inputs:
            b._bias_words(sid, text, lang)
        return 0

    no_bias = mock.patch.object(StageBuilder, "_bias_words", lambda self, sid, text, lang: [])
    variants = {  # name: (function, mixture weights, contextual_asr switched off)
        "plan_full": (planner, {}, False),
        "plan_zero": (planner, {"contextual_asr": 0.0}, False),
        "plan_none": (planner, {}, True),
        "builder_full": (builder, {}, False),
        "builder_none": (builder, {}, True),
        "bias": (bias_words, {}, False),
    }
    distractor_lexicon("en")  # wordfreq's list loads once per process: not a per-segment cost
    best = dict.fromkeys(variants, float("inf"))
    specs: dict[str, int] = {}
    for attempt in range(passes + 1):  # the first pass warms caches up and is not counted
        for name, (fn, weights, off) in variants.items():
            shutil.rmtree(spec_dir, ignore_errors=True)  # a unit whose spec file exists is skipped
            gc.collect()
            gc.disable()  # as timeit does: a collection mid-pass would land on one variant
            with no_bias if off else nullcontext():
                t = time.process_time()
                specs[name] = fn(weights)
                took = time.process_time() - t
            gc.enable()
            if attempt:
                best[name] = min(best[name], took)
    shutil.rmtree(spec_dir, ignore_errors=True)
    us = 1e6 / segments
    out: dict[str, Any] = {"segments": segments, "units": len(units), "passes": passes}
    for name in variants:
        out[name] = {"us": best[name] * us, "specs": specs[name] / segments}
    return out


# ---- the report ----------------------------------------------------------------------------


def code_version() -> str:
    """The commit measured, and whether the code the step runs had uncommitted changes."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip()

    dirty = git("status", "--porcelain", "--", "pipelines", "minmo", "schemas")
    return f"{git('rev-parse', '--short', 'HEAD')}" + (
        " + uncommitted changes in " + ", ".join(sorted({line[3:] for line in dirty.splitlines()}))
        if dirty
        else " (pipelines/, minmo/, schemas/ clean)"
    )


def save(work: Path, **section: Any) -> None:
    """Merge a section into work/results.json (raw figures, written as each section ends)."""
    path = work / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**results, **section}, indent=1))


def verdict(ok: bool | None) -> str:
    return "NOT RUN" if ok is None else ("MET" if ok else "MISSED")


def du_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def scale(args: argparse.Namespace, work: Path, clips: list, log: Path) -> list[dict[str, Any]]:
    config = {"stages": STAGES, "max_samples": args.max_samples}
    rows = []
    print("\n## 1. scale: plan-only writer (encode_audio=False), stage1 + stage2", flush=True)
    print(
        "| segments | units | tables written in | driver peak RSS | Ray start | plan s, wall "
        "(stage1 + stage2) | plan CPU s, all processes | plan CPU us/segment | write s, wall "
        "| write CPU s | samples | shards | Ray workers: peak at once / distinct | largest "
        "worker RSS | peak RSS driver + Ray | load avg (1 min) after |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for n in args.sizes:
        build = work / f"n{n}" / "build"
        t = time.perf_counter()
        made = write_unit_build(build, n, clips, seed=args.seed)
        made_s = time.perf_counter() - t
        job = {
            "build": str(build),
            "config": config,
            "encode_audio": False,
            "ray_cpus": args.ray_cpus,
        }
        first = run_child(job, log)
        plan = phase_s(first, "plan")
        plan_cpu = phase_s(first, "plan", measure="cpu_s")
        plans = " + ".join(f"{phase_s(first, 'plan', s):.1f}" for s in STAGES)
        w = first["ray_workers"]
        samples = sum(s["samples"] for s in first["stages"])
        shards = sum(s["shards"] for s in first["stages"])
        print(
            f"| {n:,} | {made['units']:,} | {made_s:.1f} s | {first['peak_rss_mb']:.0f} MB "
            f"| {first['ray_start_s']:.1f} s | {plan:.1f} ({plans}) | {plan_cpu:.1f} "
            f"| {plan_cpu / n * 1e6:.0f} | {phase_s(first, 'write'):.1f} "
            f"| {phase_s(first, 'write', measure='cpu_s'):.1f} | {samples:,} | {shards:,} "
            f"| {w['peak_at_once']} / {w['distinct']} | {w['peak_worker_rss_mb']:.0f} MB "
            f"| {w['peak_tree_rss_mb']:.0f} MB | {first['load_avg_1m']:.1f} |",
            flush=True,
        )
        row: dict[str, Any] = {
            "n": n,
            "made": made,
            "first": first,
            "plan_s": plan,
            "plan_cpu_s": plan_cpu,
        }
        if not args.skip_append:
            row["append"] = append(args, build, n, made, job, log, clips)
        row["disk_bytes"] = du_bytes(build)
        rows.append(row)
        if not args.keep:
            shutil.rmtree(build.parent, ignore_errors=True)
        save(work, scale=rows)
    return rows


def append(
    args: argparse.Namespace,
    build: Path,
    n: int,
    made: dict[str, int],
    job: dict[str, Any],
    log: Path,
    clips: list,
) -> dict[str, Any]:
    before = snapshot(build)
    extra = max(1, n // 100)
    added = write_unit_build(build, extra, clips, seed=args.seed, first_unit=made["units"])
    second = run_child(job, log)
    after = snapshot(build)
    changed = sorted(p for p, v in before.items() if after.get(p) != v)
    how = {
        "sha256": sum(after.get(p, ("",))[0] != before[p][0] for p in changed),
        "mtime": sum(after.get(p, ("", 0))[1] != before[p][1] for p in changed),
        "inode": sum(after.get(p, ("", 0, 0))[2] != before[p][2] for p in changed),
        "gone": sum(p not in after for p in changed),
    }
    new = generation_shards(build, 1)
    over = [e["name"] for e in new if max(e["samples"], e["idx_samples"]) > args.max_samples]
    mismatched = [e["name"] for e in new if e["samples"] != e["idx_samples"]]
    return {
        "segments": extra,
        "units": added["units"],
        "committed": len(before),
        "rewritten": len(changed),
        "how": how,
        "new_tars": len(set(after) - set(before)),
        "new_shards": len(new),
        "new_max_samples": max((e["samples"] for e in new), default=0),
        "over_max": over,
        "idx_mismatch": mismatched,
        "run": second,
    }


def print_append(rows: list[dict[str, Any]], max_samples: int) -> None:
    print("\n## 2. append 1 % (new units), same config: committed shards before / after")
    print(
        "| segments | appended (units) | committed tars | rewritten (sha256 / mtime / inode / "
        f"gone) | new tars | new-generation samples per shard, max (<= {max_samples}) | "
        "append run: plan s, write s, run s | driver peak RSS | build on disk |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        a = row.get("append")
        if not a:
            continue
        h, r = a["how"], a["run"]
        checks = (
            ""
            if not (a["over_max"] or a["idx_mismatch"])
            else (f" OVER: {a['over_max'][:3]} IDX MISMATCH: {a['idx_mismatch'][:3]}")
        )
        print(
            f"| {row['n']:,} | {a['segments']:,} ({a['units']}) | {a['committed']:,} "
            f"| {a['rewritten']} ({h['sha256']} / {h['mtime']} / {h['inode']} / {h['gone']}) "
            f"| {a['new_tars']} | {a['new_max_samples']}{checks} "
            f"| {phase_s(r, 'plan'):.1f}, {phase_s(r, 'write'):.1f}, {r['run_s']:.1f} "
            f"| {r['peak_rss_mb']:.0f} MB | {row['disk_bytes'] / 1e9:.1f} GB |",
            flush=True,
        )


def print_contextual(c: dict[str, Any]) -> float:
    """Prints the table; returns contextual_asr's planning cost per segment."""
    print(
        f"\n## 3. stage-1 planning per segment, in process ({c['segments']:,} segments, "
        f"{c['units']} units; CPU time, best of {c['passes']})"
    )
    print("| what | variant | CPU us per segment | samples per segment |")
    print("|---|---|---|---|")
    rows = (
        ("planner unit stage (unit_specs)", "as configured", "plan_full"),
        ("planner unit stage (unit_specs)", "contextual_asr mixture weight 0", "plan_zero"),
        ("planner unit stage (unit_specs)", "no contextual_asr (_bias_words -> [])", "plan_none"),
        ("StageBuilder.specs alone", "as configured", "builder_full"),
        ("StageBuilder.specs alone", "no contextual_asr (_bias_words -> [])", "builder_none"),
    )
    for what, variant, key in rows:
        print(f"| {what} | {variant} | {c[key]['us']:.1f} | {c[key]['specs']:.2f} |")
    print(f"| `_bias_words` alone | | {c['bias']['us']:.1f} | |")
    cost = c["plan_full"]["us"] - c["plan_none"]["us"]
    print(
        f"contextual_asr's planning cost: {cost:.1f} us/segment (planner as configured minus "
        f"none); of it, {c['plan_full']['us'] - c['plan_zero']['us']:.1f} us is the kept "
        f"sample's row (weight 1 minus weight 0), "
        f"{c['builder_full']['us'] - c['builder_none']['us']:.1f} us StageBuilder's share, "
        f"{c['bias']['us']:.1f} us the bias words",
        flush=True,
    )
    return cost


def writers(args: argparse.Namespace, work: Path, log: Path) -> dict[str, Any]:
    build = work / "writers" / "build"
    if args.speech_tokenizer == "tiny":
        from minmo.testing.tiny_models import build_tiny_checkpoint

        tokenizer: str | None = str(build_tiny_checkpoint(work / "writers" / "s3tiny.pt"))
    else:
        tokenizer = None
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for repeat in range(args.writer_repeats):
        # 1, 2, then 2, 1, ...: a load that drifts over the runs favours neither count.
        for actors in (1, 2) if repeat % 2 == 0 else (2, 1):
            config = {
                "stages": STAGES,
                "max_samples": args.writer_max_samples,
                "speech_tokenizer": tokenizer,
                "actors": actors,
            }
            job = {
                "build": str(build),
                "config": config,
                "encode_audio": True,
                "rebuild": True,
                "ray_cpus": args.ray_cpus,
            }
            runs[actors].append(run_child(job, log))
    return {"runs": runs, "tokenizer": args.speech_tokenizer}


def print_writers(w: dict[str, Any], segments: int, max_samples: int) -> dict[str, float]:
    """Prints the table (the best run of each writer count); returns 2-writer speedups of the
    write phase per stage."""
    print(
        f"\n## 4. writers: encode_audio=True on {segments:,} segments of real clips, "
        f"max_samples {max_samples}, speech tokenizer: {w['tokenizer']}; write phase only, "
        "best run of each"
    )
    print(
        "| stage | writers (actors) | samples | audio s | write s | samples/s | audio s per s "
        "| vs 1 writer | steady samples/s (first to last commit) | vs 1 writer | shards per "
        "writer process (marker written_by.pid) | load avg (1 min) after |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    speedups: dict[str, float] = {}
    for stage in STAGES:
        base: tuple[float, float | None] | None = None
        for actors in (1, 2):
            runs = w["runs"][actors]
            best = min(runs, key=lambda r, st=stage: phase_s(r, "write", st))
            seconds = phase_s(best, "write", stage)
            ws = [p for p in best["phases"] if p["phase"] == "write" and p["stage"] == stage]
            samples = sum(p["samples"] for p in ws)
            audio = sum(p["audio_s"] for p in ws)
            rate = samples / seconds
            steady = steady_rate(best["commits"][stage])
            base = base or (rate, steady)
            vs = rate / base[0]
            vs_steady = f"{steady / base[1]:.2f}x" if steady and base[1] else "-"
            if actors == 2:
                speedups[stage] = vs
            per_pid = Counter(c["pid"] or "?" for c in best["commits"][stage])
            print(
                f"| {stage} | {actors} | {samples:,} | {audio:,.0f} | {seconds:.1f} "
                f"| {rate:,.0f} | {audio / seconds:,.0f} | {vs:.2f}x "
                f"| {f'{steady:,.0f}' if steady else '-'} | {vs_steady} "
                f"| {' + '.join(str(n) for _, n in per_pid.most_common())} "
                f"| {best['load_avg_1m']:.1f} |",
                flush=True,
            )
    return speedups


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--max-samples", type=int, default=2000, help="ShardsConfig.max_samples")
    parser.add_argument("--writer-segments", type=int, default=4096)
    parser.add_argument("--writer-max-samples", type=int, default=200)
    parser.add_argument("--writer-repeats", type=int, default=2, help="runs per writer count")
    parser.add_argument("--speech-tokenizer", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="working folder (default: a new one in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the builds")
    parser.add_argument("--skip-append", action="store_true")
    parser.add_argument("--skip-contextual", action="store_true")
    parser.add_argument("--skip-writers", action="store_true")
    parser.add_argument(
        "--ray-cpus", type=int, help="CPUs the local Ray instance claims (default: the machine's)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.result.write_text(json.dumps(child(json.loads(args.child))))
        return

    import psutil
    import pyarrow
    import ray

    work = args.work or Path(tempfile.mkdtemp(prefix="minmo-bench-shards-scale-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "children.log"
    clips = real_clips()
    print(
        f"{datetime.date.today()}; machine: {cpu_model()}, {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB; {platform.platform()}; Python "
        f"{platform.python_version()}, Ray {ray.__version__}, pyarrow {pyarrow.__version__}"
    )
    print(f"code: {code_version()}")
    print(
        f"builds: units of {RECORDINGS_PER_UNIT} recordings x {SEGMENTS_PER_CLIP} segments over "
        f"{len(clips)} real clips ({sum(c.duration_s for c in clips):.0f} s); Ray CPUs: "
        f"{args.ray_cpus or os.cpu_count()}; work: {work}; "
        f"child output: {log}",
        flush=True,
    )
    base = run_child({"baseline": True, "ray_cpus": args.ray_cpus}, log)
    print(
        f"baseline child (imports + Ray start only): {base['peak_rss_mb']:.0f} MB peak RSS, "
        f"Ray start {base['ray_start_s']:.1f} s",
        flush=True,
    )

    rows = scale(args, work, clips, log)
    if not args.skip_append:
        print_append(rows, args.max_samples)

    contextual = None
    contextual_us = 0.0
    speedups: dict[str, float] = {}
    if not (args.skip_contextual and args.skip_writers):
        write_unit_build(work / "writers" / "build", args.writer_segments, clips, seed=args.seed)
    if not args.skip_contextual:
        contextual = contextual_costs(work / "writers" / "build", work)
        contextual_us = print_contextual(contextual)
        save(work, contextual=contextual)
    if not args.skip_writers:
        w = writers(args, work, log)
        save(work, writers=w)
        speedups = print_writers(w, args.writer_segments, args.writer_max_samples)

    print("\n## targets")
    by_n = {r["n"]: r for r in rows}
    pairs = [(a, b) for a in by_n for b in by_n if b == 10 * a]
    for a, b in pairs:
        ra, rb = by_n[a]["first"]["peak_rss_mb"], by_n[b]["first"]["peak_rss_mb"]
        growth = rb / ra - 1
        tag = "" if (a, b) == (1_000_000, 10_000_000) else " (the target's pair is 1M -> 10M)"
        print(
            f"- driver peak RSS {a:,} -> {b:,} segments grows < {RSS_GROWTH_MAX:.0%}: "
            f"{ra:.0f} -> {rb:.0f} MB = {growth:+.1%}: {verdict(growth < RSS_GROWTH_MAX)}{tag}"
        )
    if (1_000_000, 10_000_000) not in pairs:
        print(f"- driver peak RSS 1M -> 10M grows < {RSS_GROWTH_MAX:.0%}: {verdict(None)}")
    for a, b in pairs:
        for key, what in (("plan_s", "plan time (wall)"), ("plan_cpu_s", "plan CPU time")):
            ratio = by_n[b][key] / by_n[a][key]
            print(
                f"- {what} {a:,} -> {b:,} grows <= {PLAN_GROWTH_MAX:.0f}x: {by_n[a][key]:.1f} "
                f"-> {by_n[b][key]:.1f} s = {ratio:.1f}x: {verdict(ratio <= PLAN_GROWTH_MAX)}"
            )
    if not pairs:
        print(f"- plan time grows <= {PLAN_GROWTH_MAX:.0f}x for 10x: {verdict(None)}")
    if contextual:
        print(
            f"- contextual_asr planning <= {CONTEXTUAL_US_MAX:.0f} us/segment: "
            f"{contextual_us:.1f} us (whole stage-1 planning {contextual['plan_full']['us']:.1f} "
            f"us/segment): {verdict(contextual_us <= CONTEXTUAL_US_MAX)}"
        )
    else:
        print(f"- contextual_asr planning <= {CONTEXTUAL_US_MAX:.0f} us/segment: {verdict(None)}")
    appended = [r for r in rows if r.get("append")]
    for r in appended:
        a = r["append"]
        ok = a["rewritten"] == 0 and not a["over_max"] and not a["idx_mismatch"]
        print(
            f"- 1 % append at {r['n']:,}: {a['rewritten']} of {a['committed']:,} committed "
            f"shards rewritten, {a['new_shards']} new, largest {a['new_max_samples']} samples "
            f"(max_samples {args.max_samples}): {verdict(ok)}"
        )
    if not appended:
        print(f"- 0 committed shards rewritten by a 1 % append: {verdict(None)}")
    if speedups:
        for stage, v in speedups.items():
            print(
                f"- 2 writers >= {WRITER_SPEEDUP_MIN}x 1 writer ({stage}): {v:.2f}x: "
                f"{verdict(v >= WRITER_SPEEDUP_MIN)}"
            )
    else:
        print(f"- 2 writers >= {WRITER_SPEEDUP_MIN}x 1 writer: {verdict(None)}")
    if not args.keep and args.work is None:
        shutil.rmtree(work / "writers", ignore_errors=True)
    print(f"\nraw figures: {work / 'results.json'}")


if __name__ == "__main__":
    main()
