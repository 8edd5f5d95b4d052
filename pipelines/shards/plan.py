"""Planning a stage's shards as a distributed computation: units -> specs -> shard slots.

    committed units (one listing per table folder; the driver holds one entry per unit)
      -> Ray Data, one task per unit: StageBuilder over that unit's part files only
         (conversation rows first join their recordings, which live in other units)
      -> mixture copies, duration bucket, seeded slot and order per sample
      -> the unit's spec file, DIR/_state/shards/<stage>/g<N>-specs/<unit>.parquet (atomic;
         a rerun keeps it), and a few summary rows back to the driver
      -> layout: shards per (split, bucket); shard = offset + slot mod shards-in-it

Owns which sample goes into which shard of a generation, and the generation's record. The
driver never holds a row per sample: it holds the unit list, per-task and per-bucket counts, and
the layout. A sample's key, content, slot and order are functions of its own row and the config
(distractors come from a fixed lexicon, not a corpus-wide pool), so they do not depend on which
other data the build holds; which shard a slot lands in depends on how many shards its
generation has. A sample's split (pipelines/shards/splits.py) is a function of its speaker or
recording alone. A generation is the set of units that were new when it was planned: data added
later becomes a new generation and never moves a committed sample.

Must not: read audio, write shards.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from minmo.io.atomic import write_bytes_atomic
from pipelines.build import BuildDir, StepLedger
from pipelines.samples import sources
from pipelines.samples.builders import SampleConfig, StageBuilder
from pipelines.samples.prompts import PromptBook
from pipelines.samples.spec import estimated_bytes, span_s
from pipelines.shards.splits import SplitConfig, split_of
from schemas.shards import SPLITS, is_temp_name

# Tables whose rows make a stage's samples: a unit is an input of the stage when it has a part
# file in one of them.
DRIVING_TABLES = {
    "stage1": ("segments", "turns", "s2s_samples"),
    "stage2": ("segments",),
    "stage3": ("s2s_samples",),
    "stage4": ("frame_labels",),
}
# Tables a unit task reads through its view (lookups written by the same unit included).
VIEW_TABLES = (
    "recordings",
    "segments",
    "dialogues",
    "s2s_samples",
    "turns",
    "frame_labels",
    "events",  # stage 4's user back-channel times (label-turns writes them beside frame_labels)
    "annotations",
)
# Tables another step adds to a unit after the fact (`annotate`'s labels of one unit's segments,
# under a StepLedger.derived_unit_id): folded into the view of the unit they describe.
DERIVED_TABLES = ("annotations",)
# Rows of these tables name recordings committed by other steps' units: joined, not looked up.
JOIN_TABLES = ("turns", "frame_labels")
# A shard is planned at this fraction of max_samples / max_bytes, so that the spread of a
# seeded hash rarely overfills one; a shard that does is split by its writer.
FILL = 0.85

SPEC_SCHEMA = pa.schema(
    [
        # "spec"; "built" (a task's specs before mixture weights, counted per unit), "skip"
        # (a counted reason rows made no sample) or "filter" (samples a quality filter left out)
        ("kind", pa.string()),
        ("task", pa.string()),  # the task; for skips and filters "<task>: <why>"
        ("n", pa.int64()),  # 1 for a spec; the count for a built or skip row
        ("key", pa.string()),
        ("bucket", pa.int64()),
        ("est_bytes", pa.int64()),
        ("slot", pa.int64()),  # seeded hash of the key: which shard of its bucket
        ("order", pa.int64()),  # seeded hash of the key: position inside its shard
        ("spec", pa.string()),  # the spec as JSON
        ("split", pa.string()),  # train / valid / test; "" unsplit (and for count rows)
        ("seconds", pa.float64()),  # a spec's duration; a filter row's seconds left out
    ]
)


def hash63(*parts: Any) -> int:
    """A seeded, process-independent 63-bit hash (fits Arrow's int64 without a sign)."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def mixture_copies(spec: dict[str, Any], weight: float, seed: int) -> list[dict[str, Any]]:
    """A task weight w keeps floor(w) copies of each sample plus one more with probability
    frac(w), decided by a seeded hash of the key: w = 0.25 keeps a quarter, w = 2 doubles."""
    whole = math.floor(weight)
    extra = (hash63(seed, "mixture", spec["key"]) / 2**63) < (weight - whole)
    copies = []
    for r in range(whole + int(extra)):
        if r == 0:
            copies.append(spec)
        else:
            copies.append(
                {**spec, "key": f"{spec['key']}-r{r}", "meta": {**spec["meta"], "repeat": r}}
            )
    return copies


def sample_duration_s(spec: dict[str, Any]) -> float:
    return span_s(spec["input_audio"]) if spec["input_audio"] else span_s(spec["target_speech"])


def bucket_of(duration_s: float, edges: list[float]) -> int:
    return sum(duration_s >= e for e in edges)


# ---- units ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One committed unit of some step: its key (`<step>~<unit id>`) and its part files."""

    key: str
    view: dict[str, list[str]]

    @property
    def needs_join(self) -> bool:
        return any(self.view.get(t) for t in JOIN_TABLES)


def unit_key(file_name: str, table: str = "") -> str:
    """`<step>~<unit>` of a part file; a derived table's file keys on the unit it describes."""
    step, unit = StepLedger.table_file_owner(file_name)
    source = StepLedger.derived_source(unit) if table in DERIVED_TABLES else None
    if source is not None:
        step, unit = source
    return f"{step}~{unit}"


def list_units(build: BuildDir, stage: str) -> list[Unit]:
    """The committed units holding rows that make `stage`'s samples, sorted by key.

    One directory listing per table; the result is one small entry per unit."""
    views: dict[str, dict[str, list[str]]] = {}
    for table in VIEW_TABLES:
        for path in sources.table_files(build, table):
            name = path.rsplit("/", 1)[-1]
            if is_temp_name(name):
                continue
            views.setdefault(unit_key(name, table), {}).setdefault(table, []).append(path)
    driving = DRIVING_TABLES[stage]
    return [
        Unit(key, view) for key, view in sorted(views.items()) if any(view.get(t) for t in driving)
    ]


# ---- specs, one unit at a time (runs in Ray workers) ------------------------------------------


@dataclass
class SpecParams:
    """What a unit task needs to build specs; plain data so that it travels to workers."""

    build_uri: str
    storage_options: dict[str, Any]
    stage: str
    spec_dir: str  # where each unit's spec file goes
    seed: int
    shuffle: bool
    bucket_edges_s: list[float]
    weights: dict[str, float]
    samples: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, Any] = field(default_factory=dict)  # SplitConfig's fields


@functools.lru_cache(maxsize=4)
def _context(params_json: str) -> tuple[SpecParams, BuildDir, SampleConfig, Any]:
    """Per worker process: the params, build, sample config and prompt book, loaded once."""

    p = SpecParams(**json.loads(params_json))
    sample_config = SampleConfig(**{"seed": p.seed, **p.samples})
    build = BuildDir(p.build_uri, **p.storage_options)
    return p, build, sample_config, PromptBook.load(sample_config.prompts, p.seed)


SUMMARY_COLUMNS = ["kind", "task", "bucket", "split", "n", "est_bytes", "seconds"]


def conform(table: pa.Table) -> pa.Table:
    """A spec table as SPEC_SCHEMA: a file an older checkout wrote lacks `split` and `seconds`
    (it was written unsplit, with no filter rows); they read as "" and 0."""
    for name, default in (("split", ""), ("seconds", 0.0)):
        if name not in table.column_names:
            typ = SPEC_SCHEMA.field(name).type
            table = table.append_column(name, pa.array([default] * len(table), typ))
    return table


def unit_specs(batch: pa.Table, params: str) -> pa.Table:
    """Ray Data stage: units -> each unit's spec file, and its summary rows.

    A batch is one unit (from `map_batches`, batch_size=1) or one unit's join group (from
    `map_groups`, one row per recording, with the recordings' columns). Each unit's specs go to
    `<spec_dir>/<unit>.parquet` in one atomic write; a unit whose file exists is not built
    again (a rerun after a crash). Returns per (kind, task, bucket) sums: a handful of rows."""
    p, build, sample_config, book = _context(params)
    rows = batch.to_pylist()
    recs = None
    if "source_uri" in batch.column_names:  # a join group: the unit's recordings
        recs = {
            r["recording_id"]: sources.recording_info(r)
            for r in rows
            if r.get("source_uri") is not None
        }
    summaries = []
    for unit, view_json in sorted({r["unit"]: r["view"] for r in rows}.items()):
        path = f"{p.spec_dir}/{unit}.parquet"
        if build.exists(path):
            present = pq.read_schema(path, filesystem=build.fs).names
            columns = [c for c in SUMMARY_COLUMNS if c in present]
            table = conform(pq.read_table(path, filesystem=build.fs, columns=columns))
        else:
            builder = StageBuilder(build, sample_config, json.loads(view_json), recs, book)
            table = pa.Table.from_pylist(_spec_rows(builder, p), schema=SPEC_SCHEMA)
            buffer = pa.BufferOutputStream()
            pq.write_table(table, buffer, compression="zstd")
            write_bytes_atomic(build.fs, path, buffer.getvalue().to_pybytes())
        summaries.append(summary_rows(table))
    return pa.concat_tables(summaries) if summaries else _EMPTY_SUMMARY


def summary_rows(table: pa.Table) -> pa.Table:
    """A unit's spec table -> its sums per (kind, task, bucket, split): what `summarize` reads."""
    return (
        table.select(SUMMARY_COLUMNS)
        .group_by(["kind", "task", "bucket", "split"])
        .aggregate([("n", "sum"), ("est_bytes", "sum"), ("seconds", "sum")])
    )


_EMPTY_SUMMARY = pa.table(
    {
        "kind": pa.array([], pa.string()),
        "task": pa.array([], pa.string()),
        "bucket": pa.array([], pa.int64()),
        "split": pa.array([], pa.string()),
        "n_sum": pa.array([], pa.int64()),
        "est_bytes_sum": pa.array([], pa.int64()),
        "seconds_sum": pa.array([], pa.float64()),
    }
)


def _spec_rows(builder: StageBuilder, p: SpecParams) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    splits = SplitConfig(**p.splits)
    for spec in builder.specs(p.stage):
        # Before the mixture: a repeat shares its original's speaker, so its split too.
        split = split_of(spec.get("meta") or {}, splits, spec["key"])
        for copy in mixture_copies(spec, float(p.weights.get(spec["task"], 1.0)), p.seed):
            key = copy["key"]
            duration = sample_duration_s(copy)
            out.append(
                {
                    "kind": "spec",
                    "task": copy["task"],
                    "n": 1,
                    "key": key,
                    "bucket": bucket_of(duration, p.bucket_edges_s),
                    "est_bytes": estimated_bytes(copy),
                    "slot": hash63(p.seed, "slot", key),
                    # Without shuffle, samples sit in key order inside their shard.
                    "order": hash63(p.seed, "order", key) if p.shuffle else 0,
                    "spec": json.dumps(copy, sort_keys=True, ensure_ascii=False),
                    "split": split,
                    "seconds": duration,
                }
            )
    for kind, counts in (("built", builder.counts.built), ("skip", builder.counts.skipped)):
        for task, n in sorted(counts.items()):
            out.append({"kind": kind, "task": task, "n": n, "est_bytes": 0, "split": ""})
    # The builder's quality-filter counts ("<task>: <reason>" -> samples, and -> seconds); a
    # builder without filters has none.
    filtered = getattr(builder.counts, "filtered", None) or {}
    filtered_s = getattr(builder.counts, "filtered_s", None) or {}
    for why, n in sorted(filtered.items()):
        out.append(
            {
                "kind": "filter",
                "task": why,
                "n": n,
                "est_bytes": 0,
                "split": "",
                "seconds": float(filtered_s.get(why, 0.0)),
            }
        )
    return out


def _recording_ids(batch: pa.Table, params: str) -> pa.Table:
    """A join unit -> one row per recording its join-table rows name (plus unit and view)."""
    _, build, _, _ = _context(params)
    out: list[dict[str, Any]] = []
    for row in batch.to_pylist():
        view = json.loads(row["view"])
        ids: set[str] = set()
        for table in JOIN_TABLES:
            got = sources.read_table(build, table, ["recording_id"], view)
            if got is not None:
                ids.update(got.column("recording_id").to_pylist())
        for rid in sorted(ids) or [""]:  # an empty unit still reaches its group
            out.append({"unit": row["unit"], "view": row["view"], "recording_id": rid})
    schema = pa.schema(
        [("unit", pa.string()), ("view", pa.string()), ("recording_id", pa.string())]
    )
    return pa.Table.from_pylist(out, schema=schema)


def spec_summaries(build: BuildDir, units: list[Unit], params: SpecParams) -> Any:
    """Build the generation's spec files unit by unit on Ray; the summary rows, lazily."""
    import ray

    p = json.dumps(asdict(params), sort_keys=True)
    parts = []
    local = [u for u in units if not u.needs_join]
    joined = [u for u in units if u.needs_join]
    items = [{"unit": u.key, "view": json.dumps(u.view, sort_keys=True)} for u in local]
    if items:
        parts.append(
            ray.data.from_items(items).map_batches(
                unit_specs, batch_size=1, batch_format="pyarrow", fn_kwargs={"params": p}
            )
        )
    if joined:
        # Conversation rows name recordings that other steps' units committed: a distributed
        # join brings each unit the few recordings it needs.
        rec_ds = ray.data.read_parquet(
            sources.table_files(build, "recordings"), filesystem=build.fs
        ).select_columns(sources.RECORDING_COLUMNS)
        ids = ray.data.from_items(
            [{"unit": u.key, "view": json.dumps(u.view, sort_keys=True)} for u in joined]
        ).map_batches(_recording_ids, batch_size=1, batch_format="pyarrow", fn_kwargs={"params": p})
        partitions = max(1, min(64, len(joined)))
        grouped = ids.join(
            rec_ds, join_type="left_outer", num_partitions=partitions, on=("recording_id",)
        ).groupby("unit", num_partitions=partitions)
        parts.append(
            grouped.map_groups(unit_specs, batch_format="pyarrow", fn_kwargs={"params": p})
        )
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


# ---- the generation's layout --------------------------------------------------------------


@dataclass
class SpecSummary:
    """What a generation's spec table holds, aggregated by Ray Data (small: tasks x buckets)."""

    built: Counter
    kept: Counter
    skipped: Counter
    bucket_samples: Counter  # layout key (`layout_key`) -> samples
    bucket_bytes: Counter  # layout key -> estimated bytes
    filtered: Counter = field(default_factory=Counter)  # "<task>: <reason>" -> samples
    filtered_s: Counter = field(default_factory=Counter)  # "<task>: <reason>" -> seconds
    split_kept: Counter = field(default_factory=Counter)  # split -> samples ("" unsplit)


def layout_key(split: str, bucket: int) -> str:
    """A layout entry's key in the generation record: the bucket alone when unsplit (the
    record an unsplit stage always had), `<split>/<bucket>` otherwise."""
    return f"{split}/{bucket}" if split else str(bucket)


def _layout_order(key: str) -> tuple[int, int]:
    split, _, bucket = key.rpartition("/")
    return (SPLITS.index(split) if split else -1, int(bucket))


def summarize(rows: list[dict[str, Any]]) -> SpecSummary:
    """Per-unit summary rows (from `unit_specs`) -> the generation's totals."""
    summary = SpecSummary(Counter(), Counter(), Counter(), Counter(), Counter())
    for row in rows:
        n, task = int(row["n_sum"]), row["task"]
        if row["kind"] == "filter":
            summary.filtered[task] += n
            summary.filtered_s[task] += float(row.get("seconds_sum") or 0.0)
            continue
        if row["kind"] != "spec":
            (summary.skipped if row["kind"] == "skip" else summary.built)[task] += n
            continue
        split = row.get("split") or ""
        key = layout_key(split, int(row["bucket"]))
        summary.kept[task] += n
        summary.split_kept[split] += n
        summary.bucket_samples[key] += n
        summary.bucket_bytes[key] += int(row["est_bytes_sum"])
    return summary


def layout(summary: SpecSummary, max_samples: int, max_bytes: int) -> dict[str, list[int]]:
    """layout key (split and bucket) -> [first shard, shards]: enough shards that each is about
    FILL full. Shard numbers run across splits, so that every shard of a generation has its
    own name and marker."""
    out: dict[str, list[int]] = {}
    first = 0
    for key in sorted(summary.bucket_samples, key=_layout_order):
        n = summary.bucket_samples[key]
        size = summary.bucket_bytes[key]
        shards = max(
            1,
            math.ceil(n / (max_samples * FILL)),
            math.ceil(size / (max_bytes * FILL)),
        )
        out[key] = [first, shards]
        first += shards
    return out


def assign_shards(
    table: pa.Table, bucket_layout: dict[str, list[int]], done: list[int] | None = None
) -> pa.Table:
    """Specs only, each with its shard (its split and bucket's first shard + slot mod their
    shards), leaving out the shards in `done` (committed by an earlier run)."""
    import pyarrow.compute as pc

    table = conform(table).filter(pc.field("kind") == "spec")
    keys = [
        layout_key(split or "", b)
        for split, b in zip(
            table.column("split").to_pylist(), table.column("bucket").to_pylist(), strict=True
        )
    ]
    slots = table.column("slot").to_pylist()
    shard = [
        bucket_layout[k][0] + s % bucket_layout[k][1] for k, s in zip(keys, slots, strict=True)
    ]
    out = table.append_column("shard", pa.array(shard, pa.int64()))
    if done:
        out = out.filter(pc.invert(pc.is_in(out.column("shard"), pa.array(done, pa.int64()))))
    return out
