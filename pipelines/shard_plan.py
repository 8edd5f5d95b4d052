"""Planning a stage's shards as a distributed computation: units -> specs -> shard slots.

    committed units (one listing per table folder; the driver holds one entry per unit)
      -> Ray Data, one task per unit: StageBuilder over that unit's part files only
         (conversation rows first join their recordings, which live in other units)
      -> mixture copies, duration bucket, seeded slot and order per sample
      -> the generation's spec table: Parquet under DIR/_state/shards/<stage>/g<N>/specs/
      -> Ray Data aggregation: samples and estimated bytes per (bucket), counts per task
      -> layout: shards per bucket; shard = bucket offset + slot mod shards-in-bucket

Owns which sample goes into which shard of a generation, and the generation's record. The
driver never holds a row per sample: it holds the unit list, per-task and per-bucket counts, and
the layout. A sample's key, content, slot and order are functions of its own row and the config
(distractors come from a fixed lexicon, not a corpus-wide pool), so they do not depend on which
other data the build holds; which shard a slot lands in depends on how many shards its
generation has. A generation is the set of units that were new when it was planned: data added
later becomes a new generation and never moves a committed sample.

Must not: read audio, write shards.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipelines.build import BuildDir, StepLedger
from pipelines.samples import sources
from pipelines.samples.builders import SampleConfig, StageBuilder
from pipelines.samples.spec import estimated_bytes, span_s

# Tables whose rows make a stage's samples: a unit is an input of the stage when it has a part
# file in one of them.
DRIVING_TABLES = {
    "stage1": ("segments", "turns", "s2s_samples"),
    "stage2": ("segments",),
    "stage3": ("s2s_samples",),
    "stage4": ("frame_labels",),
}
# Tables a unit task reads through its view (lookups written by the same unit included).
VIEW_TABLES = ("recordings", "segments", "dialogues", "s2s_samples", "turns", "frame_labels")
# Rows of these tables name recordings committed by other steps' units: joined, not looked up.
JOIN_TABLES = ("turns", "frame_labels")
# A shard is planned at this fraction of max_samples / max_bytes, so that the spread of a
# seeded hash rarely overfills one; a shard that does is split by its writer.
FILL = 0.85

SPEC_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # "spec" or "skip" (a counted reason a row made no sample)
        ("task", pa.string()),  # the task; for skips "<task>: <why>"
        ("n", pa.int64()),  # 1 for a spec; the count for a skip row
        ("built", pa.int64()),  # 1 for a spec's first copy (mixture copies repeat a spec)
        ("key", pa.string()),
        ("bucket", pa.int64()),
        ("est_bytes", pa.int64()),
        ("slot", pa.int64()),  # seeded hash of the key: which shard of its bucket
        ("order", pa.int64()),  # seeded hash of the key: position inside its shard
        ("spec", pa.string()),  # the spec as JSON
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


def unit_key(file_name: str) -> str:
    step, unit = StepLedger.table_file_owner(file_name)
    return f"{step}~{unit}"


def list_units(build: BuildDir, stage: str) -> list[Unit]:
    """The committed units holding rows that make `stage`'s samples, sorted by key.

    One directory listing per table; the result is one small entry per unit."""
    views: dict[str, dict[str, list[str]]] = {}
    for table in VIEW_TABLES:
        for path in sources.table_files(build, table):
            name = path.rsplit("/", 1)[-1]
            if ".tmp-" in name:
                continue
            views.setdefault(unit_key(name), {}).setdefault(table, []).append(path)
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
    seed: int
    shuffle: bool
    bucket_edges_s: list[float]
    weights: dict[str, float]
    samples: dict[str, Any] = field(default_factory=dict)


class UnitSpecs:
    """Ray Data stage: one unit (a batch of one row, or a join group of one unit) -> spec rows.

    A callable class so that the prompt book, the lexicons and the side inputs load once per
    worker, not once per unit."""

    def __init__(self, params: dict[str, Any]) -> None:
        from pipelines.samples.prompts import PromptBook

        self.p = SpecParams(**params)
        self.build = BuildDir(self.p.build_uri, **self.p.storage_options)
        self.sample_config = SampleConfig(**{"seed": self.p.seed, **self.p.samples})
        self.book = PromptBook.load(self.sample_config.prompts, self.p.seed)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        recs = None
        if "source_uri" in batch.column_names:  # a join group: the unit's recordings
            recs = {
                r["recording_id"]: sources.recording_info(r)
                for r in rows
                if r.get("source_uri") is not None
            }
        out: list[dict[str, Any]] = []
        for unit in {r["unit"]: r["view"] for r in rows}.items():
            out += self.unit_rows(unit[1], recs)
        return pa.Table.from_pylist(out, schema=SPEC_SCHEMA)

    def unit_rows(
        self, view_json: str, recs: dict[str, sources.RecordingInfo] | None
    ) -> list[dict[str, Any]]:
        p = self.p
        builder = StageBuilder(
            self.build, self.sample_config, json.loads(view_json), recs, self.book
        )
        out: list[dict[str, Any]] = []
        for spec in builder.specs(p.stage):
            for copy in mixture_copies(spec, float(p.weights.get(spec["task"], 1.0)), p.seed):
                key = copy["key"]
                out.append(
                    {
                        "kind": "spec",
                        "task": copy["task"],
                        "n": 1,
                        "built": int(copy is spec),
                        "key": key,
                        "bucket": bucket_of(sample_duration_s(copy), p.bucket_edges_s),
                        "est_bytes": estimated_bytes(copy),
                        "slot": hash63(p.seed, "slot", key),
                        # Without shuffle, samples sit in key order inside their shard.
                        "order": hash63(p.seed, "order", key) if p.shuffle else 0,
                        "spec": json.dumps(copy, sort_keys=True, ensure_ascii=False),
                    }
                )
        for why, n in sorted(builder.counts.skipped.items()):
            out.append({"kind": "skip", "task": why, "n": n, "built": 0, "est_bytes": 0})
        return out


def _recording_ids(batch: pa.Table) -> pa.Table:
    """A join unit -> one row per recording its join-table rows name (plus the unit, view)."""
    # Only ever called from Ray Data with one-row batches of (unit, view).
    build_cache: dict[str, BuildDir] = {}
    out: list[dict[str, Any]] = []
    for row in batch.to_pylist():
        params = json.loads(row["params"])
        build = build_cache.setdefault(
            params["build_uri"], BuildDir(params["build_uri"], **params["storage_options"])
        )
        view = json.loads(row["view"])
        ids: set[str] = set()
        for table in JOIN_TABLES:
            got = sources.read_table(build, table, ["recording_id"], view)
            if got is not None:
                ids.update(got.column("recording_id").to_pylist())
        for rid in sorted(ids) or [""]:  # an empty unit still reaches its group
            out.append({"unit": row["unit"], "view": row["view"], "recording_id": rid})
    return pa.Table.from_pylist(
        out,
        schema=pa.schema(
            [("unit", pa.string()), ("view", pa.string()), ("recording_id", pa.string())]
        ),
    )


def spec_dataset(build: BuildDir, units: list[Unit], params: SpecParams, workers: int) -> Any:
    """The generation's spec rows as a Ray Data dataset (lazy), built unit by unit."""
    from dataclasses import asdict

    import ray

    p = asdict(params)
    parts = []
    local = [u for u in units if not u.needs_join]
    joined = [u for u in units if u.needs_join]
    if local:
        parts.append(
            ray.data.from_items(
                [{"unit": u.key, "view": json.dumps(u.view, sort_keys=True)} for u in local]
            ).map_batches(
                UnitSpecs,
                batch_size=1,
                batch_format="pyarrow",
                fn_constructor_kwargs={"params": p},
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
                num_cpus=1,
            )
        )
    if joined:
        recordings = sources.table_files(build, "recordings")
        rec_ds = ray.data.read_parquet(
            recordings, filesystem=build.fs, columns=sources.RECORDING_COLUMNS
        )
        ids = ray.data.from_items(
            [
                {
                    "unit": u.key,
                    "view": json.dumps(u.view, sort_keys=True),
                    "params": json.dumps(p),
                }
                for u in joined
            ]
        ).map_batches(_recording_ids, batch_size=1, batch_format="pyarrow")
        partitions = max(1, min(64, len(joined)))
        grouped = ids.join(
            rec_ds, join_type="left_outer", num_partitions=partitions, on=("recording_id",)
        ).groupby("unit")
        parts.append(
            grouped.map_groups(
                UnitSpecs,
                batch_format="pyarrow",
                fn_constructor_kwargs={"params": p},
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
                num_cpus=1,
            )
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
    bucket_samples: Counter
    bucket_bytes: Counter


def summarize_specs(build: BuildDir, spec_dir: str) -> SpecSummary:
    import ray

    files = build.files(spec_dir, ".parquet")
    summary = SpecSummary(Counter(), Counter(), Counter(), Counter(), Counter())
    if not files:
        return summary
    ds = ray.data.read_parquet(
        files, filesystem=build.fs, columns=["kind", "task", "n", "built", "bucket", "est_bytes"]
    )
    for row in ds.groupby(["kind", "task", "bucket"]).sum(["n", "built", "est_bytes"]).take_all():
        n, task = int(row["sum(n)"]), row["task"]
        if row["kind"] == "skip":
            summary.skipped[task] += n
            continue
        summary.kept[task] += n
        summary.built[task] += int(row["sum(built)"])
        summary.bucket_samples[int(row["bucket"])] += n
        summary.bucket_bytes[int(row["bucket"])] += int(row["sum(est_bytes)"])
    return summary


def layout(summary: SpecSummary, max_samples: int, max_bytes: int) -> dict[int, list[int]]:
    """bucket -> [first shard, shards]: enough shards that each is about FILL full."""
    out: dict[int, list[int]] = {}
    first = 0
    for bucket in sorted(summary.bucket_samples):
        n = summary.bucket_samples[bucket]
        size = summary.bucket_bytes[bucket]
        shards = max(
            1,
            math.ceil(n / (max_samples * FILL)),
            math.ceil(size / (max_bytes * FILL)),
        )
        out[bucket] = [first, shards]
        first += shards
    return out


def assign_shards(
    table: pa.Table, bucket_layout: dict[int, list[int]], done: list[int] | None = None
) -> pa.Table:
    """Specs only, each with its shard (its bucket's first shard + slot mod the bucket's
    shards), leaving out the shards in `done` (committed by an earlier run)."""
    import pyarrow.compute as pc

    table = table.filter(pc.field("kind") == "spec")
    buckets = table.column("bucket").to_pylist()
    slots = table.column("slot").to_pylist()
    shard = [
        bucket_layout[b][0] + s % bucket_layout[b][1] for b, s in zip(buckets, slots, strict=True)
    ]
    out = table.append_column("shard", pa.array(shard, pa.int64()))
    if done:
        out = out.filter(pc.invert(pc.is_in(out.column("shard"), pa.array(done, pa.int64()))))
    return out
