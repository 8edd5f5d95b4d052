"""Statistics of shard directories: per-stage balance and mixture from each stage's index.json,
and per-sample figures from the samples' json members.

The per-sample metadata is read once per shard, by a Ray task per shard (`ensure_ray`: a local
instance, or the cluster RAY_ADDRESS names), so the reading scales with the cluster's CPUs: on
local disk by seeking from tar header to tar header and reading only the `.json` members, a few
kB per sample, not the audio; on an object store as one sequential stream. Each task writes a
small Parquet file per shard under the stats output's `_samples/` folder, named after the
shard's sha256, and returns only an error or None: no sample row reaches the driver. A rerun
reads only shards it has not seen (a lost node's unfinished shards are simply read again), a
rebuilt shard gets a new file. DuckDB then aggregates those files like any table.

Past `max_shard_rows` shards in a stage, the balance keeps per-shard distributions and the
worst shards (`shard_balance`) instead of a row per shard: stats.json stays a few hundred kB at
250k shards.
Must not: modify the shard directories; import webdataset or torch (the Ray workers that read
shards stay light).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable, Iterator
from statistics import mean, pstdev
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from tqdm import tqdm

from minmo.io.shards import json_members
from pipelines.build import BuildDir
from pipelines.ray_runtime import ensure_ray
from pipelines.stats import dist as d
from pipelines.stats.sources import Sources
from pipelines.stats.tables import breakdown
from schemas.shards import SPLITS, shard_path, split_member

TASKS_PER_CPU = 2  # shard tasks in flight per Ray CPU: one running, one queued behind it

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("task", pa.string()),
        pa.field("language", pa.string()),
        pa.field("corpus", pa.string()),
        pa.field("shard", pa.string()),
        pa.field("duration_s", pa.float64()),
        pa.field("input_duration_s", pa.float64()),
        pa.field("target_speech_s", pa.float64()),
        pa.field("n_text_tokens", pa.int64()),
        pa.field("n_speech_tokens", pa.int64()),
        pa.field("n_labels", pa.int64()),
    ]
)

# What one shard task may fail with and still be reported (a missing, truncated or corrupt
# shard): anything else is a bug and stops the step.
READ_ERRORS = (OSError, tarfile.TarError, ValueError, EOFError)


def read_sample_meta(fs: pafs.FileSystem, path: str, shard: str) -> pa.Table:
    """The json member of every sample in one tar, as rows of SAMPLE_SCHEMA (read by
    `minmo.io.shards.json_members`: a few kB per sample, never the audio on local disk)."""
    return _rows(iter(json_members(fs, path)), shard)


def _rows(members: Iterator[tuple[str, bytes]], shard: str) -> pa.Table:
    rows: dict[str, list[Any]] = {f.name: [] for f in SAMPLE_SCHEMA}
    for member, data in members:
        split = split_member(member)
        if split is None or split[1] != "json":
            continue
        meta = json.loads(data)
        if not isinstance(meta, dict):
            raise ValueError(f"{member}: the json member is not an object")
        rows["key"].append(meta.get("key", split[0]))
        rows["shard"].append(shard)
        rows["corpus"].append((meta.get("provenance") or {}).get("corpus"))
        for name in ("stage", "task", "language"):
            rows[name].append(meta.get(name))
        for name in ("duration_s", "input_duration_s", "target_speech_s"):
            rows[name].append(float(meta.get(name) or 0.0))
        for name in ("n_text_tokens", "n_speech_tokens", "n_labels"):
            rows[name].append(int(meta.get(name) or 0))
    return pa.Table.from_pydict(rows, schema=SAMPLE_SCHEMA)


def extract_shard(
    fs: pafs.FileSystem, path: str, shard: str, cache: BuildDir, target: str
) -> str | None:
    """One shard's samples file, written atomically to `target`; the body of one Ray task.

    Returns None, or the error that kept the shard from being read (reported, not fatal)."""
    try:
        table = read_sample_meta(fs, path, shard)
    except READ_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    cache.write_bytes_atomic(target, sink.getvalue().to_pybytes())
    return None


Job = tuple[str, str, str]  # (shard path, shard name, samples file)


def _run_tasks(
    fs: pafs.FileSystem,
    cache: BuildDir,
    todo: list[Job],
    workers: int | None,
    done: Callable[[], None],
) -> Iterator[tuple[str, str]]:
    """Run `extract_shard` as one Ray task per job, at most `workers` in flight (default
    TASKS_PER_CPU per CPU of the cluster), so the driver holds a bounded number of references
    at any shard count. Yields (shard path, error) for each shard that could not be read."""
    # Ray is imported only when there are shards to read: a tables-only stats run (the 1M-row
    # memory test) must not pay for it.
    import ray

    ensure_ray(progress=False)
    # Retried when a worker or node dies (Ray's default for system failures): the task is
    # idempotent, its output written atomically.
    task = ray.remote(num_cpus=1, max_retries=3)(extract_shard)
    limit = workers or max(1, TASKS_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
    in_flight: dict[Any, str] = {}
    jobs = iter(todo)
    while True:
        for path, name, target in jobs:
            in_flight[task.remote(fs, path, name, cache, target)] = path
            if len(in_flight) >= limit:
                break
        if not in_flight:
            return
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            path = in_flight.pop(ref)
            error = ray.get(ref)
            done()
            if error is not None:
                yield path, error


def extract_samples(
    sources: Sources, cache: BuildDir, workers: int | None = None, progress: bool = True
) -> tuple[list[str], list[tuple[str, str]]]:
    """Make sure every shard listed in every index.json has its samples file in `cache`.

    Returns the samples files of all readable shards and (shard, error) for each shard that
    could not be read (missing, truncated, a json member that does not parse): those are left
    out of the sample figures and reported, not fatal. Shards already extracted (same sha256)
    are not reread (one listing per stage, not a probe per shard: cheap on object stores too);
    files of shards rebuilt since are deleted. `workers` caps the shard tasks in flight.
    """
    todo: list[Job] = []
    paths: list[str] = []
    for stage, directories in sorted(sources.shard_dirs.items()):
        have = set(cache.files(cache.path("_samples", stage), ".parquet"))
        wanted: set[str] = set()
        for directory in directories:
            for entry in sources.read_index(directory).get("shards", []):
                name = f"{entry['name']}-{entry['sha256'][:16]}.parquet"
                target = cache.path("_samples", stage, name)
                paths.append(target)
                wanted.add(target)
                if target not in have:
                    todo.append((shard_path(directory, entry["name"]), entry["name"], target))
        for stale in have - wanted:  # files of shards that were rebuilt since: not needed
            cache.delete(stale)
    unreadable: list[tuple[str, str]] = []
    if todo:
        with tqdm(
            total=len(todo), desc="stats: shard metadata", unit="shard", disable=not progress
        ) as bar:
            unreadable = list(_run_tasks(sources.fs, cache, todo, workers, bar.update))
    target_of = {path: target for path, _, target in todo}
    bad = {target_of[path] for path, _ in unreadable}
    return [p for p in paths if p not in bad], sorted(unreadable)


def samples(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Counts, hours and durations of the shard samples, by stage, task, corpus and language.
    `hours` is each sample's input audio (its target speech for text-to-speech samples)."""
    hours = "duration_s / 3600.0"
    query = f"SELECT count(*), {d.exact_sum(hours)} FROM samples"
    n, total = con.execute(query).fetchone() or (0, 0)
    groups = ("stage", "task", "corpus", "language")
    tokens = con.execute(
        f"SELECT stage, sum(n_speech_tokens), {d.exact_sum('target_speech_s')}, "
        f"sum(n_text_tokens), {d.exact_sum('input_duration_s')} FROM samples "
        "GROUP BY stage ORDER BY stage"
    ).fetchall()
    return {
        "count": int(n),
        "hours": round(float(total or 0.0), 6),
        "by": {g: breakdown(con, "samples", g, hours) for g in groups},
        "by_stage_task": [
            {"stage": s, "task": t, "count": int(c), "hours": round(float(h or 0), 6)}
            for s, t, c, h in con.execute(
                f"SELECT stage, task, count(*), {d.exact_sum(hours)} FROM samples "
                f"GROUP BY stage, task ORDER BY stage, {d.exact_sum('duration_s')} DESC, task"
            ).fetchall()
        ],
        "duration_s": d.distribution(
            con, "samples", "duration_s", d.DURATION_S, weight=hours, group_by=("stage", "task")
        ),
        "tokens": {
            stage: {
                "speech_tokens": int(st or 0),
                "speech_tokens_per_s": round(st / ss, 3) if ss else None,
                "text_tokens": int(tt or 0),
                "text_tokens_per_input_s": round(tt / ins, 3) if ins else None,
            }
            for stage, st, ss, tt, ins in tokens
        },
    }


def _spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"min": None, "max": None, "mean": None, "cv": None}
    m = mean(values)
    return {
        "min": round(min(values), 6),
        "max": round(max(values), 6),
        "mean": round(m, 6),
        "cv": round(pstdev(values) / m, 6) if m else None,  # coefficient of variation
    }


SHARD_SCHEMA = pa.schema(
    [("name", pa.string()), ("samples", pa.int64()), ("hours", pa.float64()), ("bytes", pa.int64())]
)
# Per-shard metrics: column of the per-shard table -> its fixed bins (dist.py).
SHARD_METRICS = {"samples": d.SHARD_SAMPLES, "hours": d.SHARD_HOURS, "bytes": d.SHARD_BYTES}

# The worst shards kept past `max_shard_rows`, each list ordered worst first. Why these: the
# least-filled shards (fewest samples, least audio) are what a generation leaves over or an
# append adds; many of them mean many small files, a per-shard open cost in the loader and
# uneven work per rank. The most-filled (most samples, most audio, most bytes) are the loader's
# stragglers: the longest reads, the largest object-store GETs, the longest training step of a
# rank. index.json records no per-shard quarantine or write time, so neither can rank here
# (quarantine is per stage, unreadable shards are listed in `errors`).
WORST = {
    "fewest_samples": ("samples", "ASC"),
    "most_samples": ("samples", "DESC"),
    "fewest_hours": ("hours", "ASC"),
    "most_hours": ("hours", "DESC"),
    "most_bytes": ("bytes", "DESC"),
}


def _shard_table(
    con: duckdb.DuckDBPyConnection, columns: dict[str, list[Any]], k: int
) -> dict[str, Any]:
    """Distributions of the per-shard metrics and the `k` worst shards per WORST criterion,
    computed by DuckDB over one stage's shards (registered as the view `stage_shards`)."""
    con.register("stage_shards", pa.table(columns, schema=SHARD_SCHEMA))
    try:
        dists = {
            m: d.distribution(con, "stage_shards", m, bins) for m, bins in SHARD_METRICS.items()
        }
        worst = {
            why: [
                {"name": n, "samples": int(smp), "hours": float(h), "bytes": int(b)}
                for n, smp, h, b in con.execute(
                    "SELECT name, samples, hours, bytes FROM stage_shards "
                    f"ORDER BY {column} {order}, name LIMIT {int(k)}"
                ).fetchall()
            ]
            for why, (column, order) in WORST.items()
        }
    finally:
        con.unregister("stage_shards")
    return {"per_shard_dist": dists, "worst": worst}


def shard_balance(sources: Sources, max_shard_rows: int = 1000, worst: int = 10) -> dict[str, Any]:
    """Per stage: each shard's samples, hours and bytes, their spread, speech tokens per second
    of target speech, and the task mixture achieved against the job's weights.

    Every stage has the per-shard distributions (`per_shard_dist`, fixed bins, so two builds
    compare bin for bin) and its `worst` shards (see WORST); `per_shard` lists every shard only
    up to `max_shard_rows` shards, and is null beyond.

    The target share of a task is weight x samples built / the same summed over tasks (what the
    mixture asks for); the achieved share is the task's samples in the shards / all samples.
    """
    out: dict[str, Any] = {}
    con = duckdb.connect()
    for stage, directories in sorted(sources.shard_dirs.items()):
        # one column per figure, not a dict per shard: a stage may hold 250k shards
        columns: dict[str, list[Any]] = {"name": [], "samples": [], "hours": [], "bytes": []}
        speech_tokens, speech_s = 0, 0.0
        tasks: dict[str, dict[str, float]] = {}
        mixture: dict[str, dict[str, float]] = {}
        quarantined: dict[str, int] = {}
        filtered: dict[tuple[str, str], dict[str, float]] = {}
        splits: dict[str, dict[str, float]] = {}
        for directory in directories:
            index = sources.read_index(directory)
            split = index.get("split")
            relative = directory[len(sources.root) :].strip("/").rpartition("/")[0]
            if split:  # a split stage's directory: <stage>/<split>; name shards by both
                relative = relative.rpartition("/")[0]
                agg = splits.setdefault(split, {"shards": 0, "samples": 0, "hours": 0.0})
                agg["shards"] += len(index.get("shards", []))
                agg["samples"] += int(index.get("totals", {}).get("samples", 0))
                agg["hours"] += float(index.get("totals", {}).get("audio_s", 0.0)) / 3600
            # several builds under the input: name shards by their folder, e.g. "b1/shards/"
            prefix = f"{relative}/" if len(directories) > 1 and relative else ""
            if split:
                prefix = f"{prefix}{split}/"
            for s in index.get("shards", []):
                columns["name"].append(prefix + s["name"])
                columns["samples"].append(int(s["samples"]))
                columns["hours"].append(round(float(s["audio_s"]) / 3600, 6))
                columns["bytes"].append(int(s["bytes"]))
                speech_tokens += int(s.get("speech_tokens", 0))
                speech_s += float(s.get("speech_s", 0.0))
            for task, t in index.get("tasks", {}).items():
                agg = tasks.setdefault(task, {"samples": 0, "hours": 0.0})
                agg["samples"] += int(t["samples"])
                agg["hours"] += float(t["audio_s"]) / 3600
            # Counted before samples had a split: every split's index.json repeats them, so
            # they are read from the first split's alone (pipelines/shards/step.py).
            stage_wide = not split or split == SPLITS[0]
            for task, m in index.get("mixture", {}).items() if stage_wide else ():
                agg = mixture.setdefault(
                    task, {"weight": float(m["weight"]), "built": 0, "kept": 0}
                )
                agg["built"] += int(m["built"])
                agg["kept"] += int(m["kept"])
            for reason, n in index.get("quarantined", {}).items():
                quarantined[reason] = quarantined.get(reason, 0) + int(n)
            for task, reasons in index.get("filtered", {}).items() if stage_wide else ():
                for reason, v in reasons.items():
                    agg = filtered.setdefault((task, reason), {"samples": 0, "hours": 0.0})
                    agg["samples"] += int(v["samples"])
                    agg["hours"] += float(v["hours"])
        n_shards = len(columns["name"])
        total = sum(t["samples"] for t in tasks.values())
        asked = sum(m["weight"] * m["built"] for m in mixture.values())
        out[stage] = {
            "shards": n_shards,
            "samples": sum(columns["samples"]),
            "hours": round(sum(columns["hours"]), 6),
            "bytes": sum(columns["bytes"]),
            "per_shard": [
                dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)
            ]
            if n_shards <= max_shard_rows
            else None,
            **_shard_table(con, columns, worst),
            "spread": {k: _spread(columns[k]) for k in ("samples", "hours", "bytes")},
            "speech_tokens": speech_tokens,
            "speech_tokens_per_s": round(speech_tokens / speech_s, 3) if speech_s else None,
            "mixture": [
                {
                    "task": task,
                    "weight": m["weight"],
                    "built": m["built"],
                    "kept": m["kept"],
                    "samples": tasks.get(task, {}).get("samples", 0),
                    "hours": round(tasks.get(task, {}).get("hours", 0.0), 6),
                    "target_share": round(m["weight"] * m["built"] / asked, 6) if asked else None,
                    "share": round(tasks.get(task, {}).get("samples", 0) / total, 6)
                    if total
                    else None,
                }
                for task, m in sorted(mixture.items())
            ],
            "quarantined": dict(sorted(quarantined.items())),
            # what each quality filter left out, per task (samples and hours)
            "filtered": [
                {
                    "task": task,
                    "reason": reason,
                    "samples": v["samples"],
                    "hours": round(v["hours"], 6),
                }
                for (task, reason), v in sorted(filtered.items())
            ],
            # a split stage's samples per split (train / valid / test); empty when unsplit
            "splits": {
                split: {**v, "hours": round(v["hours"], 6)}
                for split, v in sorted(
                    splits.items(),
                    key=lambda kv: SPLITS.index(kv[0]) if kv[0] in SPLITS else len(SPLITS),
                )
            },
        }
        for row in out[stage]["mixture"]:
            both = row["share"] is not None and row["target_share"] is not None
            row["share_delta"] = round(row["share"] - row["target_share"], 6) if both else None
    con.close()
    return out
