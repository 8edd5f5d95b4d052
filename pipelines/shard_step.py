"""The shards step: build tables -> per-stage WebDataset shards, resumable shard by shard.

    specs (pipelines/samples)  ->  mixture weights, seeded shuffle, duration buckets  ->  plan
    plan  ->  Ray Data: load_audio_batch (tasks)  ->  TokenizeStage (actors, GPU when present)
          ->  driver: ShardTarWriter per shard, in plan order  ->  DIR/shards/<stage>/

Owns planning (which sample goes to which shard), running the plan, committing each shard (tar +
.idx, then a done marker in DIR/_state/shards/ holding its index entry), quarantining samples whose
audio or tokens fail, and the stage's index.json and summary.

Resume and idempotence: the plan is a pure function of the tables and the config, so a rerun
computes the same plan; its fingerprint is stored, and shards with a marker (and a file of the
recorded size) are skipped. A changed plan (new tables, new config) rebuilds the stage. Shards are
byte-identical across reruns: same members, fixed tar metadata, and every shard is tokenized in
fixed batches that never span two shards.

Memory: the plan holds one small entry per sample (key, sort key, estimated bytes, the spec JSON,
about 0.5-1 kB) on the driver: about 1 GB per million samples of a stage. Audio and tokens stream.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.build import BuildDir, StepLedger
from pipelines.ingest.items import quarantine_row
from pipelines.ingest.sink import write_table
from pipelines.ray_runtime import ensure_ray
from pipelines.samples.builders import STAGE_TASKS, STAGES, SampleConfig, StageBuilder
from pipelines.samples.spec import estimated_bytes, span_s
from pipelines.shards import INDEX_NAME, INDEX_VERSION, ShardTarWriter, shard_name
from pipelines.tokenize import TokenizeStage, load_audio_batch, tokenizer_info
from schemas import QUARANTINE, ReasonCode

STEP = "shards"
MEMBER_COLUMNS = ("json", "flac", "speech_tokens", "text_tokens", "labels")


@dataclass
class ShardsConfig:
    """What goes into the shards and how they are cut. Sizes are targets per shard."""

    stages: list[str] = field(default_factory=lambda: list(STAGES))
    text_tokenizer: str | None = None  # HF tokenizer dir (Qwen2.5-7B-Instruct); None: built-in
    speech_tokenizer: str | None = None  # S3TokenizerV2 .pt; None: RANDOM weights, flagged
    max_samples: int = 2000
    max_bytes: int = 500_000_000
    seed: int = 0
    shuffle: bool = True
    bucket_edges_s: list[float] = field(default_factory=list)  # e.g. [5, 10, 20]: 4 buckets
    mixture: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> task -> weight
    samples: dict[str, Any] = field(default_factory=dict)  # SampleConfig fields
    batch_size: int = 16  # samples per tokenizer batch
    actors: int | None = None  # tokenizer actors; default: one per GPU, else 1
    gpus_per_actor: float | None = None  # default: 1 when the cluster has a GPU, else 0
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stages in ("all", ["all"]):
            self.stages = list(STAGES)
        for stage in self.stages:
            if stage not in STAGES:
                raise ValueError(f"unknown stage {stage!r}; expected {', '.join(STAGES)} or all")
        for stage, weights in self.mixture.items():
            if stage not in STAGES:
                raise ValueError(f"mixture: unknown stage {stage!r}")
            for task, weight in weights.items():
                if task not in STAGE_TASKS[stage]:
                    raise ValueError(
                        f"mixture.{stage}: unknown task {task!r}; {stage} has "
                        f"{', '.join(STAGE_TASKS[stage])}"
                    )
                if not (isinstance(weight, (int, float)) and weight >= 0):
                    raise ValueError(f"mixture.{stage}.{task}: weight must be >= 0")
        if sorted(self.bucket_edges_s) != list(self.bucket_edges_s):
            raise ValueError("bucket_edges_s must be increasing")
        if self.max_samples < 1 or self.max_bytes < 1 or self.batch_size < 1:
            raise ValueError("max_samples, max_bytes and batch_size must be >= 1")

    def sample_config(self) -> SampleConfig:
        return SampleConfig(**{"seed": self.seed, **self.samples})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hash64(*parts: Any) -> int:
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def mixture_copies(spec: dict[str, Any], weight: float, seed: int) -> Iterator[dict[str, Any]]:
    """A task weight w keeps floor(w) copies of each sample plus one more with probability
    frac(w), decided by a seeded hash of the key: w = 0.25 keeps a quarter, w = 2 doubles."""
    whole = math.floor(weight)
    extra = (_hash64(seed, "mixture", spec["key"]) / 2**64) < (weight - whole)
    for r in range(whole + int(extra)):
        if r == 0:
            yield spec
        else:
            yield {**spec, "key": f"{spec['key']}-r{r}", "meta": {**spec["meta"], "repeat": r}}


def sample_duration_s(spec: dict[str, Any]) -> float:
    return span_s(spec["input_audio"]) if spec["input_audio"] else span_s(spec["target_speech"])


def bucket_of(duration_s: float, edges: list[float]) -> int:
    return sum(duration_s >= e for e in edges)


@dataclass
class StagePlan:
    stage: str
    rows: list[dict[str, Any]]  # key, shard, spec (JSON), in write order
    shards: int
    buckets: list[int]  # duration bucket of each shard
    fingerprint: str
    built: Counter
    skipped: Counter
    kept: Counter  # task -> samples after mixture weights


def plan_stage(build: BuildDir, config: ShardsConfig, stage: str) -> StagePlan:
    builder = StageBuilder(build, config.sample_config())
    weights = config.mixture.get(stage, {})
    entries: list[tuple[int, bytes, str, int, str]] = []
    kept: Counter = Counter()
    seen: set[str] = set()
    for position, spec in enumerate(builder.specs(stage)):
        for copy in mixture_copies(spec, float(weights.get(spec["task"], 1.0)), config.seed):
            if copy["key"] in seen:
                raise ValueError(f"{stage}: two samples share the key {copy['key']}")
            seen.add(copy["key"])
            kept[copy["task"]] += 1
            order = (
                hashlib.sha256(f"{config.seed}:{copy['key']}".encode()).digest()
                if config.shuffle
                else position.to_bytes(8, "big")
            )
            bucket = bucket_of(sample_duration_s(copy), config.bucket_edges_s)
            spec_json = json.dumps(copy, sort_keys=True, ensure_ascii=False)
            entries.append((bucket, order, copy["key"], estimated_bytes(copy), spec_json))
    entries.sort()

    rows: list[dict[str, Any]] = []
    buckets: list[int] = []
    shard, count, size = -1, 0, 0
    for bucket, _, key, est, spec_json in entries:
        new_shard = (
            shard < 0
            or count >= config.max_samples
            or size + est > config.max_bytes
            or bucket != buckets[-1]
        )
        if new_shard:
            shard, count, size = shard + 1, 0, 0
            buckets.append(bucket)
        rows.append({"key": key, "shard": shard, "spec": spec_json})
        count += 1
        size += est
    h = hashlib.sha256()
    h.update(
        json.dumps(
            tokenizer_info(config.text_tokenizer, config.speech_tokenizer), sort_keys=True
        ).encode()
    )
    h.update(json.dumps([config.batch_size, config.bucket_edges_s]).encode())
    for row in rows:
        h.update(f"{row['shard']}\0{row['spec']}\n".encode())
    return StagePlan(
        stage,
        rows,
        shard + 1,
        buckets,
        h.hexdigest(),
        builder.counts.built,
        builder.counts.skipped,
        kept,
    )


def _zero() -> dict[str, Any]:
    return {"samples": 0, "audio_s": 0.0, "speech_s": 0.0, "text_tokens": 0, "speech_tokens": 0}


def _add(totals: dict[str, Any], meta: dict[str, Any]) -> None:
    totals["samples"] += 1
    totals["audio_s"] = round(totals["audio_s"] + meta["duration_s"], 3)
    totals["speech_s"] = round(totals["speech_s"] + meta["target_speech_s"], 3)
    totals["text_tokens"] += meta["n_text_tokens"]
    totals["speech_tokens"] += meta["n_speech_tokens"]


class _OpenShard:
    """The shard being written: its tar writer, per-task totals and quarantined samples."""

    def __init__(self, out_dir: Path, stage: str, index: int, bucket: int) -> None:
        self.unit = f"{stage}-{index:06d}"
        self.name = shard_name(stage, index)
        self.writer = ShardTarWriter(out_dir / self.name)
        self.bucket = bucket
        self.totals = _zero()
        self.tasks: dict[str, dict[str, Any]] = {}
        self.quarantine: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        sample: dict[str, bytes | str] = {"__key__": row["key"]}
        for name in MEMBER_COLUMNS:
            if row[name]:
                sample[
                    "json" if name == "json" else ("flac" if name == "flac" else f"{name}.npy")
                ] = row[name]
        self.writer.add(sample)
        meta = json.loads(row["json"])
        _add(self.totals, meta)
        _add(self.tasks.setdefault(meta["task"], _zero()), meta)


class ShardStep:
    """Runs the plan of one stage at a time; see the module docstring."""

    def __init__(self, build: BuildDir, config: ShardsConfig, progress: bool = True) -> None:
        self.build = build
        self.config = config
        self.progress = progress
        self.ledger = StepLedger(build, STEP, ("quarantine",))
        self._vocab: int | None = None

    def out_dir(self, stage: str) -> Path:
        path = self.build.path("shards", stage)
        if "://" in path:
            raise ValueError(f"shards are written to a local build directory; got {path}")
        return Path(path)

    def run_stage(self, stage: str) -> dict[str, Any]:
        started = time.perf_counter()
        plan = plan_stage(self.build, self.config, stage)
        out = self.out_dir(stage)
        out.mkdir(parents=True, exist_ok=True)
        self._forget_if_changed(plan)
        self.ledger.recover()
        pending = [i for i in range(plan.shards) if not self._shard_done(plan.stage, i, out)]
        rows = [r for r in plan.rows if r["shard"] in set(pending)]
        written = self._write(plan, rows, out) if rows else 0
        index = self._index(plan, out)
        summary = {
            "stage": stage,
            "shards_written_now": written,
            "samples_planned": len(plan.rows),
            "built": dict(sorted(plan.built.items())),
            "kept_after_mixture": dict(sorted(plan.kept.items())),
            "skipped": dict(sorted(plan.skipped.items())),
            "wall_s": round(time.perf_counter() - started, 2),
            **{k: index[k] for k in ("totals", "tasks", "quarantined", "tokenizers")},
        }
        return summary

    # ---- resume ----------------------------------------------------------------------------

    def _plan_path(self, stage: str) -> str:
        return self.build.path("_state", STEP, f"{stage}-plan.json")

    def _forget_if_changed(self, plan: StagePlan) -> None:
        path = self._plan_path(plan.stage)
        old = self.build.read_json(path) if self.build.exists(path) else None
        if old and old["fingerprint"] == plan.fingerprint:
            return
        for marker in list(self.ledger.done_units()):
            if marker["stage"] == plan.stage:
                self.build.delete(f"{self.ledger.done_dir}/{marker['unit']}.json")
        self.build.write_json_atomic(path, {"fingerprint": plan.fingerprint, "shards": plan.shards})

    def _shard_done(self, stage: str, index: int, out: Path) -> bool:
        unit = f"{stage}-{index:06d}"
        if not self.ledger.is_done(unit):
            return False
        marker = self.build.read_json(f"{self.ledger.done_dir}/{unit}.json")
        tar = out / marker["shard"]["name"]
        return tar.is_file() and tar.stat().st_size == marker["shard"]["bytes"]

    # ---- run -------------------------------------------------------------------------------

    def _dataset(self, rows: list[dict[str, Any]]) -> Any:
        import ray

        cfg = self.config
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        # One block per shard-batch: batches then never span shards and are the same on a rerun.
        blocks: list[list[dict[str, Any]]] = []
        for row in rows:
            if (
                not blocks
                or blocks[-1][0]["shard"] != row["shard"]
                or len(blocks[-1]) >= cfg.batch_size
            ):
                blocks.append([])
            blocks[-1].append(row)
        import pyarrow as pa

        # from_arrow makes one block per table, and batch_size=None hands each block whole.
        ds = ray.data.from_arrow([pa.Table.from_pylist(block) for block in blocks])
        resources = ray.cluster_resources()
        gpus = cfg.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        actors = cfg.actors or (max(1, int(resources.get("GPU", 0) / gpus)) if gpus else 1)
        ds = ds.map_batches(
            load_audio_batch,
            batch_size=None,
            fn_kwargs={"storage_options": cfg.storage_options},
            num_cpus=1,
        )
        return ds.map_batches(
            TokenizeStage,
            batch_size=None,
            fn_constructor_kwargs={
                "text_tokenizer": cfg.text_tokenizer,
                "speech_tokenizer": cfg.speech_tokenizer,
            },
            num_cpus=0 if gpus else 1,
            num_gpus=gpus,
            compute=ray.data.ActorPoolStrategy(size=actors),
        )

    def _write(self, plan: StagePlan, rows: list[dict[str, Any]], out: Path) -> int:
        from tqdm.auto import tqdm

        ensure_ray(progress=self.progress)
        specs = {r["key"]: r["spec"] for r in rows}
        bar = tqdm(
            desc=f"shards {plan.stage}", unit="sample", total=len(rows), disable=not self.progress
        )
        current: _OpenShard | None = None
        written = 0
        try:
            for row in self._dataset(rows).iter_rows():
                if current is None or row["shard"] != int(current.unit.rsplit("-", 1)[1]):
                    if current is not None:
                        self._commit(plan, current)
                        written += 1
                    current = _OpenShard(out, plan.stage, row["shard"], plan.buckets[row["shard"]])
                if row["error"]:
                    spec = json.loads(specs[row["key"]])
                    current.quarantine.append(
                        quarantine_row(
                            spec["meta"].get("source_uri", ""),
                            ReasonCode.SAMPLE_FAILED.value,
                            row["error"],
                            step=STEP,
                            item_key=row["key"],
                        )
                    )
                else:
                    current.add(row)
                bar.update(1)
            if current is not None:
                self._commit(plan, current)
                written += 1
                current = None
        finally:
            if current is not None:
                current.writer.abort()
            bar.close()
        return written

    def _commit(self, plan: StagePlan, shard: _OpenShard) -> None:
        size, digest = shard.writer.close()
        entry = {
            "name": shard.name,
            **shard.totals,
            "bytes": size,
            "sha256": digest,
        }
        if self.config.bucket_edges_s:
            edges = [0.0, *self.config.bucket_edges_s, None]
            entry["duration_bucket_s"] = [edges[shard.bucket], edges[shard.bucket + 1]]
        staging = self.ledger.staging_dir(shard.unit)
        if shard.quarantine:
            write_table(
                self.build.fs,
                f"{staging}/quarantine/part.parquet",
                QUARANTINE.from_rows(shard.quarantine),
            )
        self.ledger.commit(
            shard.unit,
            {
                "stage": plan.stage,
                "shard": entry,
                "tasks": shard.tasks,
                "quarantined": dict(Counter(q["reason_code"] for q in shard.quarantine)),
            },
        )

    def _text_vocab_size(self) -> int:
        if self._vocab is None:
            from minmo.tokens.text import load_text_tokenizer

            self._vocab = len(load_text_tokenizer(self.config.text_tokenizer))
        return self._vocab

    def _index(self, plan: StagePlan, out: Path) -> dict[str, Any]:
        markers = sorted(
            (m for m in self.ledger.done_units() if m["stage"] == plan.stage),
            key=lambda m: m["unit"],
        )
        if len(markers) != plan.shards:
            raise RuntimeError(f"{plan.stage}: {len(markers)} of {plan.shards} shards done; rerun")
        keep = {m["shard"]["name"] for m in markers}
        for old in out.glob(f"{plan.stage}-*.tar"):  # leftovers of an earlier, larger plan
            if old.name not in keep:
                old.unlink()
                old.with_name(old.name + ".idx").unlink(missing_ok=True)
        tasks: dict[str, dict[str, Any]] = {}
        totals = {**_zero(), "shards": 0, "bytes": 0}
        quarantined: Counter = Counter()
        for m in markers:
            for task, t in m["tasks"].items():
                agg = tasks.setdefault(task, _zero())
                for k in agg:
                    agg[k] = round(agg[k] + t[k], 3)
            for k in _zero():
                totals[k] = round(totals[k] + m["shard"][k], 3)
            totals["shards"] += 1
            totals["bytes"] += m["shard"]["bytes"]
            quarantined.update(m["quarantined"])
        totals["speech_tokens_per_s"] = (
            round(totals["speech_tokens"] / totals["speech_s"], 3) if totals["speech_s"] else None
        )
        weights = self.config.mixture.get(plan.stage, {})
        info = {
            **tokenizer_info(self.config.text_tokenizer, self.config.speech_tokenizer),
            "text_vocab_size": self._text_vocab_size(),
        }
        index = {
            "version": INDEX_VERSION,
            "stage": plan.stage,
            "seed": self.config.seed,
            "shuffle": self.config.shuffle,
            "bucket_edges_s": self.config.bucket_edges_s,
            "tokenizers": info,
            "shards": [m["shard"] for m in markers],
            "tasks": dict(sorted(tasks.items())),
            "mixture": {
                task: {
                    "weight": float(weights.get(task, 1.0)),
                    "built": plan.built.get(task, 0),
                    "kept": plan.kept.get(task, 0),
                }
                for task in sorted(plan.built)
            },
            "quarantined": dict(sorted(quarantined.items())),
            "totals": totals,
        }
        self.build.write_bytes_atomic(
            str(out / INDEX_NAME), (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
        )
        return index


@dataclass
class ShardsSummary:
    stages: list[dict[str, Any]]
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        lines = [f"shards: {len(self.stages)} stages in {self.wall_s:.1f} s"]
        for s in self.stages:
            t = s["totals"]
            rate = t.get("speech_tokens_per_s")
            lines.append(
                f"  {s['stage']}: {t['samples']} samples, {t['audio_s'] / 3600:.3f} audio h, "
                f"{t['shards']} shards ({t['bytes'] / 1e6:.1f} MB, {s['shards_written_now']} "
                f"written now), {t['text_tokens']} text tokens, {t['speech_tokens']} speech tokens"
                + (f" = {rate:.2f}/s of target speech" if rate else "")
                + f", quarantined {sum(s['quarantined'].values())}"
            )
            for task, v in s["tasks"].items():
                lines.append(f"    {task}: {v['samples']} samples, {v['audio_s'] / 3600:.4f} h")
            for why, n in s["skipped"].items():
                lines.append(f"    not built: {why}: {n}")
        if any(s["tokenizers"].get("warning") for s in self.stages):
            lines.append("  !!! " + self.stages[0]["tokenizers"]["warning"] + " !!!")
        return "\n".join(lines)


def run_shards(build_uri: str, config: ShardsConfig, progress: bool = True) -> ShardsSummary:
    started = time.perf_counter()
    build = BuildDir(build_uri, **config.storage_options)
    step = ShardStep(build, config, progress)
    stages = [step.run_stage(stage) for stage in config.stages]
    summary = ShardsSummary(stages, round(time.perf_counter() - started, 2))
    build.write_json_atomic(build.path("_state", STEP, "summary.json"), summary.to_dict())
    return summary
