"""Benchmark: `minmo stats`'s shard-metadata phase on many shards, with 1 and 2 Ray workers.

    .venv/bin/python bench/stats_shards.py [--shards 1000] [--samples-per-shard 2000]
        [--distinct 20] [--flac-bytes 2048] [--repeats 2] [--work /tmp/DIR] [--keep]

Shards are synthetic: one stage directory of `--shards` tars written by the shards step's own
writer (`minmo.io.shards.ShardTarWriter`, with its `.idx` files) and an index.json of the
current version. Each sample has the members a real one has (flac, json, speech_tokens.npy,
text_tokens.npy): random bytes for the audio, a json member shaped like the tokenizer's
(`pipelines/shards/tokenize.py`: messages, durations, token counts, provenance, tokenizers). Only
`--distinct` shards are written, the others are hard links to them under their own names
(2,000 samples per shard, the shards step's default, would otherwise take an hour to write
here); each is still read whole, header by header, by its own task.

Each measurement runs in a fresh child interpreter that starts its own local Ray instance with
`num_cpus` 1 or 2 (so the two never share workers), warms one Ray worker per CPU (importing
the stats module: worker start-up is Ray's fixed cost, timed apart), then times
`shard_stats.extract_samples` into an empty cache: one Ray task per shard reading its json
members into a Parquet file. Runs alternate (1, 2, 1, 2, ...) so a change in the machine's
load hits both; the best of `--repeats` per worker count is compared. The load average is
printed before and after: on a shared 2-core machine other processes take cores away from the
2-worker run first.

Afterwards the build is summarised twice with compute_stats, from the last run's samples files
(every shard listed, and past `max_shard_rows`: distributions and worst shards), printing both
stats.json sizes.

Target (printed MET / MISSED): 2 workers >= 1.7x the shards per second of 1 worker.

Measured 2026-12-06 on the development VM (AMD EPYC, 2 vCPUs, shared with four other sessions'
benchmarks), Python 3.11.7, Ray 2.60.0, pyarrow 26.0.1; 1,000 shards x 2,000 samples:

    run  load average  1 worker          2 workers         wall ratio  CPU, all processes
    A    24-36         352 s (2.8 sh/s)  287 s (3.5 sh/s)  1.23x       104 s / 99 s
    B    17-31         242 s (4.1 sh/s)  247 s (4.0 sh/s)  0.98x       91 s / 98 s

Target MISSED in wall time both times: with 20-30 runnable processes on 2 cores, a second
worker process gains little more than its own share of the machine. The work does not grow
with the workers (the CPU column), and one worker's own CPU was 93 / 84 s against 50 / 49 s
for all of the 2-worker phase's CPU over 2 cores: 1.88x / 1.72x at best on two free cores.
Workers spend 42-47 us of CPU per sample (tarfile took 171). stats.json: 144 kB with every
shard listed, 22 kB past max_shard_rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from machine import cpu_model  # noqa: E402

STAGE = "stage1"
TASKS = ("asr", "contextual_asr", "language_id", "emotion")
SPEEDUP_MIN = 1.7


def _meta(key: str, task: str, seconds: float, rng: np.random.Generator) -> dict[str, Any]:
    """A json member shaped like the tokenizer's (pipelines/shards/tokenize.py `_members`)."""
    words = " ".join(f"w{int(i)}" for i in rng.integers(0, 5000, 20))
    n_text = int(rng.integers(30, 120))
    return {
        "key": key,
        "stage": STAGE,
        "task": task,
        "language": "en",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "text", "text": f"{task}:"}, {"audio": 0}]},
            {"role": "assistant", "content": words},
        ],
        "duration_s": round(seconds, 3),
        "input_duration_s": round(seconds, 3),
        "target_speech_s": 0.0,
        "sample_rate_hz": 16000,
        "input_channels": 1,
        "n_text_tokens": n_text,
        "target_start": n_text - 20,
        "n_speech_tokens": 0,
        "n_labels": 0,
        "provenance": {
            "corpus": f"corpus{int(rng.integers(0, 8))}",
            "recording_id": f"{int(rng.integers(0, 2**62)):016x}",
            "source_uri": f"corpus/{key}.flac",
            "start_s": 0.0,
            "end_s": round(seconds, 3),
        },
        "tokenizers": {"text": "qwen2.5", "speech": "s3tokenizer_v2_25hz"},
    }


def write_shards(
    root: Path, shards: int, per_shard: int, flac_bytes: int, distinct: int | None = None
) -> dict[str, int]:
    """`shards` tars of `per_shard` samples under root/shards/STAGE, and its index.json.

    Only the first `distinct` shards are written; the others are hard links to them (tar and
    `.idx`) under their own names, so 1,000 shards of 2,000 samples take minutes and no disk.
    The reader's work per shard is the same: it reads every header of every shard."""
    import pyarrow.fs as pafs

    from minmo.io.atomic import write_bytes_atomic
    from minmo.io.shards import ShardTarWriter, encode_sample
    from schemas.shards import INDEX_VERSION, index_path, offsets_relpath, shard_name

    stage_dir = root / "shards" / STAGE
    rng = np.random.default_rng(0)
    entries, tasks = [], {t: {"samples": 0, "audio_s": 0.0} for t in TASKS}
    distinct = min(shards, distinct or shards)
    for i in range(shards):
        name = shard_name(STAGE, i)
        if i >= distinct:  # a hard link to an earlier shard, under this shard's name
            source = entries[i % distinct]
            for relpath in (lambda n: n, offsets_relpath):
                os.link(stage_dir / relpath(source["name"]), stage_dir / relpath(name))
            entries.append({**source, "name": name})
            for task, n in source["tasks"].items():
                tasks[task]["samples"] += n["samples"]
                tasks[task]["audio_s"] += n["audio_s"]
            continue
        own = {t: {"samples": 0, "audio_s": 0.0} for t in TASKS}
        writer = ShardTarWriter(stage_dir, name)
        audio_s = 0.0
        for j in range(per_shard):
            key = f"s{i:06d}x{j:05d}"
            task = TASKS[(i + j) % len(TASKS)]
            seconds = float(rng.uniform(1.0, 30.0))
            writer.add(
                encode_sample(
                    {
                        "__key__": key,
                        "json": _meta(key, task, seconds, rng),
                        "flac": rng.bytes(flac_bytes),
                        "text_tokens.npy": rng.integers(0, 150_000, 80, dtype=np.int32),
                        "speech_tokens.npy": rng.integers(0, 6561, 50, dtype=np.int32),
                    }
                )
            )
            audio_s += seconds
            own[task]["samples"] += 1
            own[task]["audio_s"] += seconds
        for task, n in own.items():
            tasks[task]["samples"] += n["samples"]
            tasks[task]["audio_s"] += n["audio_s"]
        size, digest = writer.close()
        entries.append(
            {
                "name": name,
                "generation": 0,
                "samples": per_shard,
                "audio_s": round(audio_s, 6),
                "text_tokens": 80 * per_shard,
                "speech_tokens": 50 * per_shard,
                "bytes": size,
                "sha256": digest,
                "tasks": own,
            }
        )
    index = {
        "version": INDEX_VERSION,
        "stage": STAGE,
        "seed": 0,
        "shuffle": True,
        "generations": [{"generation": 0, "shards": shards}],
        "shards": [{k: v for k, v in e.items() if k != "tasks"} for e in entries],
        "tasks": tasks,
        "mixture": {
            t: {"weight": 1.0, "built": v["samples"], "kept": v["samples"]}
            for t, v in tasks.items()
        },
        "totals": {"shards": shards, "samples": shards * per_shard},
    }
    write_bytes_atomic(
        pafs.LocalFileSystem(), index_path(str(stage_dir)), json.dumps(index).encode()
    )
    return {
        "shards": shards,
        "samples": shards * per_shard,
        "bytes": sum(e["bytes"] for e in entries),
    }


# ---- the child: one timed extraction in a fresh interpreter with its own Ray -----------------

CHILD = """
import json, sys, time
root, out, cpus, result = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
t0 = time.perf_counter()
import ray
from pipelines.ray_runtime import ensure_ray
from pipelines.build import BuildDir
from pipelines.stats import shard_stats
from pipelines.stats.sources import discover
ensure_ray(num_cpus=cpus, progress=False)
started = time.perf_counter() - t0

@ray.remote(num_cpus=1)
def warm():
    import pipelines.stats.shard_stats  # what a shard task imports
    time.sleep(0.5)  # held, so each CPU's task lands on its own worker

t0 = time.perf_counter()
ray.get([warm.remote() for _ in range(cpus)])
warmed = time.perf_counter() - t0
sources = discover(root)
cache = BuildDir(out)
import psutil

def cpu_by_kind():
    # CPU seconds so far of this process and its descendants (Ray's own processes and its
    # workers), split into shard-reading workers and the rest.
    out = {"workers": 0.0, "other": 0.0}
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            title, t = " ".join(proc.cmdline()[:1]), proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        out["workers" if title.startswith("ray::") else "other"] += t.user + t.system
    return out

before = cpu_by_kind()
t0, c0 = time.perf_counter(), time.process_time()
files, bad = shard_stats.extract_samples(sources, cache, progress=False)
seconds = time.perf_counter() - t0
after = cpu_by_kind()
with open(result, "w") as f:
    json.dump({"cpus": cpus, "ray_start_s": started, "warm_s": warmed, "seconds": seconds,
               "driver_cpu_s": time.process_time() - c0, "files": len(files),
               "worker_cpu_s": after["workers"] - before["workers"],
               "other_cpu_s": after["other"] - before["other"], "unreadable": len(bad)}, f)
"""

SUMMARY = """
import json, os, sys
from pipelines.stats.compute import StatsConfig, compute_stats
from pipelines.ray_runtime import ensure_ray
ensure_ray(num_cpus=2, progress=False)
sizes = {}
for rows in (10**9, 0):
    stats = compute_stats(sys.argv[1], StatsConfig(out=sys.argv[2], max_shard_rows=rows), progress=False)
    sizes[str(rows)] = len(json.dumps(stats, indent=1, sort_keys=True))
    listed = stats["shards"]["stage1"]["per_shard"] is not None
    sizes[str(rows) + "_listed"] = listed
with open(sys.argv[3], "w") as f:
    json.dump(sizes, f)
"""


def _child(code: str, *args: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        subprocess.run(
            [sys.executable, "-c", code, *args, result.name],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,  # Ray forwards worker output; results come by file
        )
        return json.loads(Path(result.name).read_text())


def measure(root: Path, out: Path, cpus: int) -> dict[str, Any]:
    """One timed extraction into an empty `out` (left filled, for the summary to reuse)."""
    shutil.rmtree(out, ignore_errors=True)
    return _child(CHILD, str(root), str(out), str(cpus))


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--samples-per-shard", type=int, default=2000)  # ShardsConfig's max
    parser.add_argument("--distinct", type=int, default=20, help="shards written; the rest linked")
    parser.add_argument("--flac-bytes", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--work", type=Path, default=None, help="working folder (default: a temp one)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args()

    import pyarrow
    import ray

    work = args.work or Path(tempfile.mkdtemp(prefix="stats-shards-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {cpu_model()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, Ray {ray.__version__}, "
        f"pyarrow {pyarrow.__version__}"
    )
    try:
        root = work / "build"
        if not (root / "shards" / STAGE / "_index" / "index.json").exists():
            t0 = time.perf_counter()
            made = write_shards(
                root, args.shards, args.samples_per_shard, args.flac_bytes, args.distinct
            )
            print(
                f"wrote {made['shards']:,} shards, {made['samples']:,} samples, "
                f"{made['bytes'] / 2**20:,.0f} MB in {time.perf_counter() - t0:.0f} s"
            )
        print(_load())
        runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
        for run in range(args.repeats):
            for cpus in (1, 2):
                m = measure(root, work / "out", cpus)
                runs[cpus].append(m)
                samples = m["files"] * args.samples_per_shard
                print(
                    f"  {cpus} worker(s), run {run + 1}: {m['seconds']:.1f} s for {m['files']:,} "
                    f"shards ({m['files'] / m['seconds']:.1f} shards/s, "
                    f"{m['seconds'] * cpus / samples * 1e6:.0f} us per sample per worker; "
                    f"CPU: workers {m['worker_cpu_s']:.1f} s, driver + Ray "
                    f"{m['other_cpu_s']:.1f} s; Ray start {m['ray_start_s']:.1f} s, "
                    f"worker warm-up {m['warm_s']:.1f} s), {_load()}"
                )
        best = {cpus: min(rs, key=lambda r: r["seconds"]) for cpus, rs in runs.items()}
        speedup = best[1]["seconds"] / best[2]["seconds"]
        verdict = "MET" if speedup >= SPEEDUP_MIN else "MISSED"
        print(
            f"best: 1 worker {best[1]['seconds']:.1f} s, 2 workers {best[2]['seconds']:.1f} s: "
            f"{speedup:.2f}x (target >= {SPEEDUP_MIN}x: {verdict})"
        )
        # What 2 free cores would give, from CPU seconds (robust to other load, unlike the
        # wall times above): one worker takes at least its own CPU time (driver and Ray run
        # beside it on the other core); two take at least all the phase's CPU over 2 cores.
        cpu1, cpu2 = (best[n]["worker_cpu_s"] + best[n]["other_cpu_s"] for n in (1, 2))
        one, two = best[1]["worker_cpu_s"], cpu2 / 2
        print(
            f"CPU of the phase, all processes: 1 worker {cpu1:.1f} s, 2 workers {cpu2:.1f} s; "
            f"on 2 free cores: 1 worker >= {one:.1f} s, 2 workers >= {two:.1f} s: "
            f"{one / two:.2f}x at best"
        )
        sizes = _child(SUMMARY, str(root), str(work / "out"))  # the samples files are there
        print(
            f"stats.json: {sizes['1000000000'] / 1e3:,.0f} kB with every shard listed, "
            f"{sizes['0'] / 1e3:,.0f} kB with max_shard_rows 0 "
            f"({'listed' if sizes['0_listed'] else 'distributions + worst shards'})"
        )
        print(_load())
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
