"""Statistics of shard directories: per-stage balance and mixture from each stage's index.json,
and per-sample figures from the samples' json members.

The per-sample metadata is read once per shard (on local disk by seeking from tar header to tar
header and reading only the `.json` members, a few kB per sample, not the audio; on an object
store as one sequential stream), into a small Parquet file per shard under the stats output's
`_samples/` folder, named after the shard's sha256: a rerun reads only shards it has not seen, a
rebuilt shard gets a new file. DuckDB then aggregates those files like any table.
Must not: modify the shard directories.
"""

from __future__ import annotations

import contextlib
import json
import tarfile
from concurrent.futures import ThreadPoolExecutor
from statistics import mean, pstdev
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from tqdm import tqdm

from pipelines.build import BuildDir
from pipelines.shards import is_local, shard_path, split_member
from pipelines.stats import dist as d
from pipelines.stats.sources import Sources
from pipelines.stats.tables import breakdown

STREAM_BUFFER_BYTES = 1 << 22

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


def _open_tar(fs: pafs.FileSystem, path: str) -> contextlib.AbstractContextManager[Any]:
    """Local: a seekable file, so tarfile ("r:") skips member data by seeking. Object stores:
    one sequential stream ("r|"); seeking there would cost a ranged GET per member header, and
    the audio members sit between the json ones anyway."""
    if is_local(fs):
        return fs.open_input_file(path)
    return fs.open_input_stream(path, buffer_size=STREAM_BUFFER_BYTES)


def read_sample_meta(sources: Sources, path: str, shard: str) -> pa.Table:
    """The json member of every sample in one tar, as rows of SAMPLE_SCHEMA."""
    rows: dict[str, list[Any]] = {f.name: [] for f in SAMPLE_SCHEMA}
    with (
        _open_tar(sources.fs, path) as raw,
        tarfile.open(fileobj=raw, mode="r:" if is_local(sources.fs) else "r|") as tar,
    ):
        for member in tar:
            split = split_member(member.name) if member.isfile() else None
            if split is None or split[1] != "json":
                continue
            handle = tar.extractfile(member)
            meta = json.loads(handle.read()) if handle else {}
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


def extract_samples(
    sources: Sources, cache: BuildDir, workers: int = 4, progress: bool = True
) -> tuple[list[str], list[tuple[str, str]]]:
    """Make sure every shard listed in every index.json has its samples file in `cache`.

    Returns the samples files of all readable shards and (shard, error) for each shard that
    could not be read (missing, truncated, a json member that does not parse): those are left
    out of the sample figures and reported, not fatal. Shards already extracted (same sha256)
    are not reread; files of shards rebuilt since are deleted.
    """
    todo: list[tuple[str, str, str]] = []
    paths: list[str] = []
    for stage, directories in sorted(sources.shard_dirs.items()):
        for directory in directories:
            for entry in sources.read_index(directory).get("shards", []):
                name = f"{entry['name']}-{entry['sha256'][:16]}.parquet"
                target = cache.path("_samples", stage, name)
                paths.append(target)
                if not cache.exists(target):
                    todo.append((shard_path(directory, entry["name"]), entry["name"], target))
    unreadable: list[tuple[str, str]] = []

    def one(job: tuple[str, str, str]) -> None:
        path, name, target = job
        try:
            table = read_sample_meta(sources, path, name)
        except (OSError, tarfile.TarError, ValueError, EOFError) as exc:
            unreadable.append((path, f"{type(exc).__name__}: {exc}"))
            return
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        cache.write_bytes_atomic(target, sink.getvalue().to_pybytes())

    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(
            total=len(todo),
            desc="stats: shard metadata",
            unit="shard",
            disable=not progress or not todo,
        ) as bar,
    ):
        for _ in pool.map(one, todo):
            bar.update()
    for stage in sources.shard_dirs:  # files of shards that were rebuilt since: not needed
        for stale in set(cache.files(cache.path("_samples", stage), ".parquet")) - set(paths):
            cache.delete(stale)
    target_of = {path: target for path, _, target in todo}
    bad = {target_of[path] for path, _ in unreadable}
    return [p for p in paths if p not in bad], sorted(unreadable)


def samples(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Counts, hours and durations of the shard samples, by stage, task, corpus and language.
    `hours` is each sample's input audio (its target speech for text-to-speech samples)."""
    hours = "duration_s / 3600.0"
    n, total = con.execute(f"SELECT count(*), sum({hours}) FROM samples").fetchone() or (0, 0)
    groups = ("stage", "task", "corpus", "language")
    tokens = con.execute(
        "SELECT stage, sum(n_speech_tokens), sum(target_speech_s), sum(n_text_tokens), "
        "sum(input_duration_s) FROM samples GROUP BY stage ORDER BY stage"
    ).fetchall()
    return {
        "count": int(n),
        "hours": round(float(total or 0.0), 6),
        "by": {g: breakdown(con, "samples", g, hours) for g in groups},
        "by_stage_task": [
            {"stage": s, "task": t, "count": int(c), "hours": round(float(h or 0), 6)}
            for s, t, c, h in con.execute(
                f"SELECT stage, task, count(*), sum({hours}) FROM samples "
                "GROUP BY stage, task ORDER BY stage, sum(duration_s) DESC, task"
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


def shard_balance(sources: Sources) -> dict[str, Any]:
    """Per stage: each shard's samples, hours and bytes, their spread, speech tokens per second
    of target speech, and the task mixture achieved against the job's weights.

    The target share of a task is weight x samples built / the same summed over tasks (what the
    mixture asks for); the achieved share is the task's samples in the shards / all samples.
    """
    out: dict[str, Any] = {}
    for stage, directories in sorted(sources.shard_dirs.items()):
        shards: list[dict[str, Any]] = []
        tasks: dict[str, dict[str, float]] = {}
        mixture: dict[str, dict[str, float]] = {}
        quarantined: dict[str, int] = {}
        for directory in directories:
            index = sources.read_index(directory)
            # several builds under the input: name shards by their folder, e.g. "b1/shards/"
            relative = directory[len(sources.root) :].strip("/").rpartition("/")[0]
            prefix = f"{relative}/" if len(directories) > 1 and relative else ""
            for s in index.get("shards", []):
                shards.append(
                    {
                        "name": prefix + s["name"],
                        "samples": int(s["samples"]),
                        "hours": round(float(s["audio_s"]) / 3600, 6),
                        "bytes": int(s["bytes"]),
                        "speech_tokens": int(s.get("speech_tokens", 0)),
                        "speech_s": float(s.get("speech_s", 0.0)),
                    }
                )
            for task, t in index.get("tasks", {}).items():
                agg = tasks.setdefault(task, {"samples": 0, "hours": 0.0})
                agg["samples"] += int(t["samples"])
                agg["hours"] += float(t["audio_s"]) / 3600
            for task, m in index.get("mixture", {}).items():
                agg = mixture.setdefault(
                    task, {"weight": float(m["weight"]), "built": 0, "kept": 0}
                )
                agg["built"] += int(m["built"])
                agg["kept"] += int(m["kept"])
            for reason, n in index.get("quarantined", {}).items():
                quarantined[reason] = quarantined.get(reason, 0) + int(n)
        speech_tokens = sum(s["speech_tokens"] for s in shards)
        speech_s = sum(s.pop("speech_s") for s in shards)
        total = sum(t["samples"] for t in tasks.values())
        asked = sum(m["weight"] * m["built"] for m in mixture.values())
        out[stage] = {
            "shards": len(shards),
            "samples": sum(s["samples"] for s in shards),
            "hours": round(sum(s["hours"] for s in shards), 6),
            "bytes": sum(s["bytes"] for s in shards),
            "per_shard": shards,
            "spread": {k: _spread([s[k] for s in shards]) for k in ("samples", "hours", "bytes")},
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
        }
        for row in out[stage]["mixture"]:
            both = row["share"] is not None and row["target_share"] is not None
            row["share_delta"] = round(row["share"] - row["target_share"], 6) if both else None
    return out
