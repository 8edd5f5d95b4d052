"""The shards step: build tables -> per-stage WebDataset shards, planned and written on Ray.

    new units  ->  pipelines/shard_plan: spec table + layout (Ray Data; a generation record)
    spec table ->  Ray Data: shard per spec -> groupby(shard) -> write_shard tasks, each:
                   audio spans -> FLAC, text + S3 speech tokens (GPU when present), tar + .idx
                   straight to DIR/shards/<stage>/ (local or object store), then a done marker
    markers    ->  driver: the generation's record, then _index/index.json over all generations

Owns running a stage's generations, the writers, each shard's commit (tar + .idx, then a marker
in DIR/_state/shards/done/ holding its index entries), quarantining samples whose audio or tokens
fail, and the stage's index.json and summary.

Splits: with `splits:` fractions set, each shard holds one split (the plan lays shards out per
split and bucket) and is written to DIR/shards/<stage>/<split>/; each split directory gets its
own index.json (its shards, tasks, totals and quarantine; plus the stage-wide built, skipped,
filtered and mixture counts, which precede any split). Without splits the layout is the one
stage directory. Filtered samples (quality filters) are counted per task and reason, with their
hours, in the generation record, index.json and the summary; never quarantined.

Append, don't rewrite. Each run plans one new generation from the units no earlier generation
consumed; committed shards are never touched. A changed config (tokenizers, sizes, seed,
mixture, sample options, prompt or side-input files) rebuilds the stage, and says so on stderr
before it deletes anything; `rebuild=True` forces that.

Resume and idempotence: a generation's spec table and layout are committed (its record) before
any shard is written, so a rerun writes exactly the shards that have no marker. A shard's bytes
depend only on its samples and the config: same members, fixed tar metadata, tokenizer batches
that never span two shards, so reruns are byte-identical.

Memory: the driver holds the unit list, one record per generation and one entry per shard. Tar
bytes never pass through it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from minmo.config import ConfigError, StorageOptions, section_field, storage_options_field
from minmo.io.atomic import sweep_temp_files, write_bytes_atomic
from minmo.io.fs import to_uri
from minmo.io.parquet import write_table
from minmo.io.shards import ShardTarWriter
from minmo.tokens.text import load_text_tokenizer
from pipelines.audio_source import SourceRoots
from pipelines.build import BuildDir, StepLedger
from pipelines.ray_runtime import ensure_ray, model_actors
from pipelines.samples.builders import STAGE_TASKS, STAGES, SampleConfig
from pipelines.samples.filters import QualityFilters
from pipelines.shards.plan import (
    SpecParams,
    assign_shards,
    layout,
    list_units,
    spec_summaries,
    summarize,
)
from pipelines.shards.records import STEP, record_path, shard_unit, state_dir
from pipelines.shards.splits import SplitConfig
from pipelines.shards.tokenize import (
    MEMBER_COLUMNS,
    TokenizeStage,
    load_audio_batch,
    tokenizer_info,
)
from schemas import QUARANTINE, ReasonCode
from schemas.labels import LabelSource
from schemas.quarantine import quarantine_row
from schemas.shards import INDEX_VERSION, META_DIR, SPLITS, index_path, shard_name, split_dir


@dataclass
class Mixture:
    """The `mixture:` section of ShardsConfig: per stage, task -> weight (the tasks are
    pipelines/samples/builders.py STAGE_TASKS); a stage left out keeps every task at 1."""

    stage1: dict[str, float] = field(default_factory=dict)
    """e.g. {asr: 1.0, speech_translation: 2.0} (JSON on the command line)."""
    stage2: dict[str, float] = field(default_factory=dict)
    stage3: dict[str, float] = field(default_factory=dict)
    stage4: dict[str, float] = field(default_factory=dict)


@dataclass
class ShardsConfig:
    """What goes into the shards and how they are cut. Sizes are targets per shard."""

    stages: list[str] = field(default_factory=lambda: list(STAGES))
    """The stages to write (stage1 .. stage4, or all)."""
    text_tokenizer: str | None = None
    """HF tokenizer directory (Qwen2.5-7B-Instruct); None: the built-in demo BPE."""
    speech_tokenizer: str | None = None
    """S3TokenizerV2 state_dict .pt; None: RANDOM weights, flagged in every index.json."""
    max_samples: int = 2000
    """Samples per shard (a target)."""
    max_bytes: int = 500_000_000
    """Bytes per shard (a target)."""
    seed: int = 0
    """Shuffle, prompt and mixture seed (and the samples' seed unless `samples` sets one)."""
    shuffle: bool = True
    """Shuffle samples across shards."""
    bucket_edges_s: list[float] = field(default_factory=list)
    """Duration bucket edges, increasing, e.g. [5, 10, 20]: 4 buckets."""
    mixture: dict[str, dict[str, float]] = section_field(Mixture)
    """Per stage, task -> weight (a weight over 1 repeats a task's samples, under 1
    subsamples)."""
    samples: dict[str, Any] = section_field(SampleConfig)
    """Which rows make samples: SampleConfig's fields (pipelines/samples/builders.py). The seed
    defaults to the step's."""
    label_source: dict[str, str] = field(default_factory=dict)
    """Per stage-1 task, which labels it reads: human (the corpus'), model (`annotate`'s) or
    human_then_model, e.g. {emotion: human_then_model}; default human."""
    filters: dict[str, Any] = section_field(QualityFilters)
    """Quality filters (pipelines/samples/filters.py), e.g. {min_snr_db: 10}; a filtered
    sample is counted per task and reason, not quarantined."""
    splits: dict[str, Any] = section_field(SplitConfig)
    """Held-out splits, e.g. {valid: 0.01, test: 0.01, by: speaker}: writes
    DIR/shards/<stage>/{train,valid,test}/, each with its index.json."""
    batch_size: int = 16
    """Samples per tokenizer batch."""
    actors: int | None = None
    """Shard writers at once; default: one per GPU, else one per CPU."""
    gpus_per_actor: float | None = None
    """GPUs per shard writer; default: 1 when the cluster has a GPU, else 0."""
    storage_options: StorageOptions = storage_options_field()

    def __post_init__(self) -> None:
        if self.stages in ("all", ["all"]):
            self.stages = list(STAGES)
        for stage in self.stages:
            if stage not in STAGES:
                raise ConfigError(f"unknown stage {stage!r}; expected {', '.join(STAGES)} or all")
        for stage, weights in self.mixture.items():
            if stage not in STAGES:
                raise ConfigError(f"mixture: unknown stage {stage!r}")
            for task, weight in weights.items():
                if task not in STAGE_TASKS[stage]:
                    raise ConfigError(
                        f"mixture.{stage}: unknown task {task!r}; {stage} has "
                        f"{', '.join(STAGE_TASKS[stage])}"
                    )
                if not (isinstance(weight, (int, float)) and weight >= 0):
                    raise ConfigError(f"mixture.{stage}.{task}: weight must be >= 0")
        if sorted(self.bucket_edges_s) != list(self.bucket_edges_s):
            raise ConfigError("bucket_edges_s must be increasing")
        if self.max_samples < 1 or self.max_bytes < 1 or self.batch_size < 1:
            raise ConfigError("max_samples, max_bytes and batch_size must be >= 1")
        sources = {s.value for s in LabelSource}
        for task, source in self.label_source.items():
            if task not in STAGE_TASKS["stage1"]:
                raise ConfigError(
                    f"label_source: unknown task {task!r}; stage1 has "
                    f"{', '.join(STAGE_TASKS['stage1'])}"
                )
            if source not in sources:
                raise ConfigError(
                    f"label_source.{task}: {source!r} is not one of {', '.join(sorted(sources))}"
                )
        self.split_config()  # its own checks: fractions and `by`

    def split_config(self) -> SplitConfig:
        return SplitConfig(**self.splits)

    def sample_config(self) -> SampleConfig:
        return SampleConfig(
            **{
                "seed": self.seed,
                **self.samples,
                "label_source": dict(self.label_source),
                "filters": dict(self.filters),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _file_digest(path: str | None) -> str | None:
    """sha256 of a local side-input file, so that editing it counts as a config change."""
    if not path:
        return None
    file = Path(path)
    return hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else f"missing:{path}"


def stage_config(config: ShardsConfig, stage: str) -> dict[str, Any]:
    """Everything that shapes a stage's shard bytes: its fingerprint decides append vs rebuild."""
    samples = asdict(config.sample_config())
    return {
        "tokenizers": tokenizer_info(config.text_tokenizer, config.speech_tokenizer),
        "max_samples": config.max_samples,
        "max_bytes": config.max_bytes,
        "seed": config.seed,
        "shuffle": config.shuffle,
        "bucket_edges_s": list(config.bucket_edges_s),
        "batch_size": config.batch_size,
        "mixture": dict(sorted(config.mixture.get(stage, {}).items())),
        "samples": samples,
        "splits": dict(sorted(config.splits.items())),
        "files": {
            "prompts": _file_digest(samples["prompts"]),
            "audio_events": _file_digest(samples["audio_events"]),
            "translations": [_file_digest(t) for t in samples["translations"]],
        },
    }


def _zero() -> dict[str, Any]:
    return {"samples": 0, "audio_s": 0.0, "speech_s": 0.0, "text_tokens": 0, "speech_tokens": 0}


def _add(totals: dict[str, Any], meta: dict[str, Any]) -> None:
    totals["samples"] += 1
    totals["audio_s"] = round(totals["audio_s"] + meta["duration_s"], 3)
    totals["speech_s"] = round(totals["speech_s"] + meta["target_speech_s"], 3)
    totals["text_tokens"] += meta["n_text_tokens"]
    totals["speech_tokens"] += meta["n_speech_tokens"]


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for k, v in other.items():
        into[k] = round(into.get(k, 0) + v, 3)


# ---- the writer (a Ray actor) -------------------------------------------------------------


@dataclass
class WriterParams:
    build_uri: str
    storage_options: dict[str, Any]
    stage: str
    generation: int
    max_samples: int
    max_bytes: int
    batch_size: int
    bucket_edges_s: list[float]
    text_tokenizer: str | None
    speech_tokenizer: str | None
    encode_audio: bool = True  # False: the bench's plan-only mode (no audio, no tokens)
    run_id: str | None = None  # the driver's ledger run: writers stage under its folder


@functools.lru_cache(maxsize=2)
def _shard_writer(params_json: str) -> ShardWriter:
    return ShardWriter(json.loads(params_json))


def write_shard(group: pa.Table, params: str) -> pa.Table:
    """Ray Data `map_groups` stage: one shard's specs -> its tar(s), .idx and marker.

    A task, not an actor pool: a pool holds its CPUs while the shuffle that feeds it still
    needs them (a deadlock on a small cluster), where tasks give them back between groups. The
    writer, with its tokenizers, is built once per worker process and reused."""
    return _shard_writer(params)(group)


class ShardWriter:
    """All specs of one shard -> its tar(s) + .idx + marker (see `write_shard`).

    Runs where Ray puts it and writes straight to the build's filesystem. Samples go in order
    of their seeded rank; a group the hash overfilled (more than max_samples, or more estimated
    bytes than max_bytes) is cut into parts `<shard>-1.tar`, `-2`, ... by the same rules the
    plan used. Returns one row per shard: its marker, for the driver's index."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.p = WriterParams(**params)
        self.build = BuildDir(self.p.build_uri, **self.p.storage_options)
        self.ledger = StepLedger(self.build, STEP, ("quarantine",), run_id=self.p.run_id)
        self.roots = SourceRoots.load(self.build)  # moved sources (--source-root)
        self.stage_dir = self.build.path("shards", self.p.stage)
        self.tokenize = (
            TokenizeStage(self.p.text_tokenizer, self.p.speech_tokenizer)
            if self.p.encode_audio
            else None
        )

    def __call__(self, group: pa.Table) -> pa.Table:
        rows = sorted(group.to_pylist(), key=lambda r: (r["order"], r["key"]))
        shard = int(rows[0]["shard"])
        split = rows[0].get("split") or ""  # one split per shard: the layout is per split
        unit = shard_unit(self.p.stage, self.p.generation, shard)
        if self.ledger.is_done(unit):
            # A retry of a group already committed: Ray re-runs a finished task whose output
            # was lost with its node. The commit stands as written; the shard is not redone.
            committed = self.build.read_json(f"{self.ledger.done_dir}/{unit}.json")
            return pa.table({"unit": [unit], "marker": [json.dumps(committed)]})
        entries: list[dict[str, Any]] = []
        tasks: dict[str, dict[str, Any]] = {}
        quarantine: list[dict[str, Any]] = []
        for part, chunk in enumerate(self._parts(rows)):
            name = shard_name(self.p.stage, shard, self.p.generation, part)
            entry = self._write_tar(name, chunk, tasks, quarantine, split)
            if entry is not None:
                entries.append(entry)
        if quarantine:
            write_table(
                self.build.fs,
                f"{self.ledger.staging_dir(unit)}/quarantine/part.parquet",
                QUARANTINE.from_rows(quarantine),
            )
        marker = {
            "stage": self.p.stage,
            "generation": self.p.generation,
            "shards": entries,
            "tasks": tasks,
            "quarantined": dict(Counter(q["reason_code"] for q in quarantine)),
            "split": split,
            # Where the bytes were written from: the driver never touches them.
            "written_by": {"node": _node_id(), "pid": os.getpid()},
        }
        self.ledger.commit(unit, marker)
        return pa.table({"unit": [unit], "marker": [json.dumps({"unit": unit, **marker})]})

    def _parts(self, rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        parts: list[list[dict[str, Any]]] = [[]]
        size = 0
        for row in rows:
            full = (
                len(parts[-1]) >= self.p.max_samples or size + row["est_bytes"] > self.p.max_bytes
            )
            if parts[-1] and full:
                parts.append([])
                size = 0
            parts[-1].append(row)
            size += row["est_bytes"]
        return parts

    def _write_tar(
        self,
        name: str,
        rows: list[dict[str, Any]],
        tasks: dict[str, dict[str, Any]],
        quarantine: list[dict[str, Any]],
        split: str = "",
    ) -> dict[str, Any] | None:
        writer = ShardTarWriter(split_dir(self.stage_dir, split), name, self.build.fs)
        totals = _zero()
        try:
            for start in range(0, len(rows), self.p.batch_size):
                batch = rows[start : start + self.p.batch_size]
                for key, spec, members, error in self._members(batch):
                    if error:
                        quarantine.append(
                            quarantine_row(
                                _provenance_uri(json.loads(spec)["meta"]),
                                ReasonCode.SAMPLE_FAILED.value,
                                error,
                                step=STEP,
                                item_key=key,
                            )
                        )
                        continue
                    sample: dict[str, bytes | str] = {"__key__": key}
                    for column in MEMBER_COLUMNS:
                        if members[column]:
                            ext = column if column in ("json", "flac") else f"{column}.npy"
                            sample[ext] = members[column]
                    writer.add(sample)
                    meta = json.loads(members["json"])
                    _add(totals, meta)
                    _add(tasks.setdefault(meta["task"], _zero()), meta)
        except BaseException:
            writer.abort()
            raise
        if not writer.offsets:  # every sample of this part failed: no empty tar
            writer.abort()
            return None
        size, digest = writer.close()
        entry: dict[str, Any] = {
            "name": name,
            "generation": self.p.generation,
            **totals,
            "bytes": size,
            "sha256": digest,
        }
        if split:
            entry["split"] = split
        if self.p.bucket_edges_s:
            edges = [0.0, *self.p.bucket_edges_s, None]
            bucket = int(rows[0]["bucket"])
            entry["duration_bucket_s"] = [edges[bucket], edges[bucket + 1]]
        return entry

    def _members(self, batch: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any], str]]:
        """(key, spec, members, error) per row: audio + tokens, or the plan-only stand-in."""
        keys = [r["key"] for r in batch]
        specs = [r["spec"] for r in batch]
        if self.tokenize is None:
            return [(k, s, _plan_only_members(s), "") for k, s in zip(keys, specs, strict=True)]
        loaded = load_audio_batch(
            {"key": keys, "shard": [r["shard"] for r in batch], "spec": specs},
            self.p.storage_options,
            self.roots,
        )
        out = self.tokenize(loaded)
        return [
            (k, s, {c: out[c][i] for c in MEMBER_COLUMNS}, out["error"][i])
            for i, (k, s) in enumerate(zip(keys, specs, strict=True))
        ]


def _provenance_uri(meta: dict[str, Any]) -> str:
    """A failed sample's source for its quarantine row: the relocatable key where it has one."""
    return meta.get("source_key") or meta.get("source_uri") or ""


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def _plan_only_members(spec_json: str) -> dict[str, Any]:
    """The bench's cheap writer mode: the spec as the json member, nothing decoded or tokenized,
    so that a run times planning, shuffling and tar writing alone."""
    spec = json.loads(spec_json)
    meta = {
        "key": spec["key"],
        "task": spec["task"],
        "duration_s": 0.0,
        "target_speech_s": 0.0,
        "n_text_tokens": 0,
        "n_speech_tokens": 0,
        "plan_only": True,
        "spec": spec,
    }
    members = dict.fromkeys(MEMBER_COLUMNS, b"")
    members["json"] = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    return members


# ---- the driver ----------------------------------------------------------------------------


class ShardStep:
    """Runs one stage at a time: config check, unfinished generations, one new generation."""

    def __init__(
        self,
        build: BuildDir,
        config: ShardsConfig,
        progress: bool = True,
        rebuild: bool = False,
        encode_audio: bool = True,
    ) -> None:
        self.build = build
        self.config = config
        self.progress = progress
        self.rebuild = rebuild
        self.encode_audio = encode_audio
        self.ledger = StepLedger(build, STEP, ("quarantine",))
        self._vocab: int | None = None

    def state_dir(self, stage: str) -> str:
        return state_dir(self.build, stage)

    def stage_dir(self, stage: str) -> str:
        return self.build.path("shards", stage)

    def run_stage(self, stage: str) -> dict[str, Any]:
        started = time.perf_counter()
        ensure_ray(progress=self.progress)
        rebuilt = self._check_config(stage)
        self.ledger.recover()
        self._sweep(stage)
        generations = self._generations(stage)
        written = 0
        for record in generations:
            if not record["complete"]:
                written += self._write_generation(record)
        consumed = {u for record in generations for u in record["units"]}
        new = [u for u in list_units(self.build, stage) if u.key not in consumed]
        if new:
            record = self._plan_generation(stage, len(generations), new)
            generations.append(record)
            written += self._write_generation(record)
        index = self._index(stage, generations)
        return {
            "stage": stage,
            "rebuilt": rebuilt,
            "generations": len(generations),
            "new_units": len(new),
            "shards_written_now": written,
            "built": index["built"],
            "kept_after_mixture": {t: v["kept"] for t, v in index["mixture"].items()},
            "skipped": index["skipped"],
            "filtered": index["filtered"],
            "splits": index["splits"],
            "wall_s": round(time.perf_counter() - started, 2),
            **{k: index[k] for k in ("totals", "tasks", "quarantined", "tokenizers")},
        }

    def _sweep(self, stage: str) -> None:
        """Remove dead writers' temp tars and `.idx`/index files from the stage's directories
        (minmo/io/atomic.py `sweep_temp_files`): a killed shard write leaves a whole tar's
        worth of bytes under a temp name, which nothing else would ever delete."""
        for directory in (
            self.stage_dir(stage),
            *(split_dir(self.stage_dir(stage), s) for s in SPLITS),
        ):
            for where in (directory, f"{directory}/{META_DIR}"):
                sweep_temp_files(self.build.fs, where)

    # ---- config and generations ---------------------------------------------------------------

    def _check_config(self, stage: str) -> str | None:
        """Delete the stage when its config changed (or `rebuild`); say why first."""
        current = stage_config(self.config, stage)
        fingerprint = hashlib.sha256(json.dumps(current, sort_keys=True).encode()).hexdigest()
        path = f"{self.state_dir(stage)}/config.json"
        stored = self.build.read_json(path) if self.build.exists(path) else None
        has_output = self.build.exists(self.stage_dir(stage)) or self.build.exists(
            self.state_dir(stage)
        )
        reason = None
        if self.rebuild and has_output:
            reason = "--rebuild was given"
        elif stored is None and has_output:
            reason = "no record of the config its shards were built with"
        elif stored is not None and stored["fingerprint"] != fingerprint:
            changed = sorted(k for k in current if current[k] != stored.get("config", {}).get(k))
            reason = f"the config changed ({', '.join(changed) or 'fingerprint'})"
        if reason:
            print(
                f"minmo shards: rebuilding {stage} because {reason}: deleting "
                f"{self.stage_dir(stage)} and its shard state",
                file=sys.stderr,
            )
            self._delete_stage(stage)
        if reason or stored is None:
            self.build.write_json_atomic(path, {"fingerprint": fingerprint, "config": current})
        return reason

    def _delete_stage(self, stage: str) -> None:
        self.build.delete(self.stage_dir(stage))
        self.build.delete(self.state_dir(stage))
        prefix = f"{stage}-"
        for marker in self.build.files(self.ledger.done_dir, ".json"):
            if marker.rsplit("/", 1)[-1].startswith(prefix):
                self.build.delete(marker)
        for part in self.build.files(self.build.table_dir("quarantine")):
            if part.rsplit("/", 1)[-1].startswith(f"{STEP}~{prefix}"):
                self.build.delete(part)

    def _record_path(self, stage: str, generation: int) -> str:
        return record_path(self.build, stage, generation)

    def _generations(self, stage: str) -> list[dict[str, Any]]:
        records = [
            self.build.read_json(p)
            for p in self.build.files(self.state_dir(stage), ".json")
            if p.rsplit("/", 1)[-1].startswith("g")
        ]
        return sorted(records, key=lambda r: r["generation"])

    def _workers(self) -> tuple[int, float]:
        # The speech tokenizer is the model; the bench's plan-only mode runs none.
        return model_actors(self.encode_audio, self.config.gpus_per_actor, self.config.actors)

    def _plan_generation(self, stage: str, generation: int, units: list[Any]) -> dict[str, Any]:
        cfg = self.config
        spec_dir = f"{self.state_dir(stage)}/g{generation:04d}-specs"
        params = SpecParams(
            build_uri=to_uri(self.build.fs, self.build.root),
            storage_options=cfg.storage_options,
            stage=stage,
            spec_dir=spec_dir,
            seed=cfg.seed,
            shuffle=cfg.shuffle,
            bucket_edges_s=list(cfg.bucket_edges_s),
            weights=dict(cfg.mixture.get(stage, {})),
            samples=asdict(cfg.sample_config()),
            splits=dict(cfg.splits),
        )
        ds = spec_summaries(self.build, units, params)
        summary = summarize(ds.take_all() if ds is not None else [])
        bucket_layout = layout(summary, cfg.max_samples, cfg.max_bytes)
        record = {
            "stage": stage,
            "generation": generation,
            "units": [u.key for u in units],
            "spec_dir": spec_dir,
            "layout": bucket_layout,
            "planned_shards": sum(v[1] for v in bucket_layout.values()),
            "samples": sum(summary.kept.values()),
            "built": dict(sorted(summary.built.items())),
            "kept": dict(sorted(summary.kept.items())),
            "skipped": dict(sorted(summary.skipped.items())),
            "filtered": dict(sorted(summary.filtered.items())),
            "filtered_s": {k: round(v, 3) for k, v in sorted(summary.filtered_s.items())},
            "complete": False,
        }
        self.build.write_json_atomic(self._record_path(stage, generation), record)
        return record

    def _write_generation(self, record: dict[str, Any]) -> int:
        """Write every shard of the generation that has no marker yet; returns how many."""
        import ray

        cfg = self.config
        stage = record["stage"]
        generation = record["generation"]
        done_units = set(self._done_names(stage, generation))
        written: dict[str, dict[str, Any]] = {}
        files = self.build.files(record["spec_dir"], ".parquet")
        if files:
            bucket_layout = dict(record["layout"])
            done = sorted(int(u.rsplit("-", 1)[1]) for u in done_units)
            planned = int(record["planned_shards"])
            actors, gpus = self._workers()
            params = WriterParams(
                build_uri=to_uri(self.build.fs, self.build.root),
                storage_options=cfg.storage_options,
                stage=stage,
                generation=generation,
                max_samples=cfg.max_samples,
                max_bytes=cfg.max_bytes,
                batch_size=cfg.batch_size,
                bucket_edges_s=list(cfg.bucket_edges_s),
                text_tokenizer=cfg.text_tokenizer,
                speech_tokenizer=cfg.speech_tokenizer,
                encode_audio=self.encode_audio,
                run_id=self.ledger.run_id,
            )
            ds = ray.data.read_parquet(files, filesystem=self.build.fs).map_batches(
                assign_shards,
                batch_format="pyarrow",
                fn_kwargs={"bucket_layout": bucket_layout, "done": done},
            )
            # No more shuffle partitions than shards: tiny generations pay no 200-way fan-out.
            context = ray.data.DataContext.get_current()
            partitions = max(1, min(context.default_hash_shuffle_parallelism, planned))
            out = ds.groupby("shard", num_partitions=partitions).map_groups(
                write_shard,
                batch_format="pyarrow",
                fn_kwargs={"params": json.dumps(asdict(params), sort_keys=True)},
                concurrency=actors,
                num_cpus=0 if gpus else 1,
                num_gpus=gpus,
            )
            for row in out.take_all():
                written[row["unit"]] = json.loads(row["marker"])
        # Markers are read back only for shards an earlier, interrupted run committed.
        markers = {
            unit: self.build.read_json(f"{self.ledger.done_dir}/{unit}.json")
            for unit in sorted(done_units)
        }
        markers.update(written)
        entries = sorted(
            (e for m in markers.values() for e in m["shards"]), key=lambda e: e["name"]
        )
        tasks: dict[str, dict[str, Any]] = {}
        quarantined: Counter = Counter()
        # Per split ("" unsplit): its tasks and quarantine counts, for its own index.json.
        by_split: dict[str, dict[str, Any]] = {}
        for m in markers.values():
            part = by_split.setdefault(m.get("split", ""), {"tasks": {}, "quarantined": {}})
            for task, t in m["tasks"].items():
                _merge(tasks.setdefault(task, {}), t)
                _merge(part["tasks"].setdefault(task, {}), t)
            quarantined.update(m["quarantined"])
            for reason, n in m["quarantined"].items():
                part["quarantined"][reason] = part["quarantined"].get(reason, 0) + n
        record.update(
            complete=True,
            shards=entries,
            tasks=dict(sorted(tasks.items())),
            quarantined=dict(sorted(quarantined.items())),
            by_split=dict(sorted(by_split.items())),
        )
        self.build.write_json_atomic(self._record_path(stage, generation), record)
        return len(written)

    def _done_names(self, stage: str, generation: int) -> list[str]:
        prefix = f"{stage}-g{generation:04d}-"
        return [
            p.rsplit("/", 1)[-1][: -len(".json")]
            for p in self.build.files(self.ledger.done_dir, ".json")
            if p.rsplit("/", 1)[-1].startswith(prefix)
        ]

    # ---- the index ---------------------------------------------------------------------------

    def _text_vocab_size(self) -> int:
        if self._vocab is None:
            self._vocab = len(load_text_tokenizer(self.config.text_tokenizer))
        return self._vocab

    def _index(self, stage: str, generations: list[dict[str, Any]]) -> dict[str, Any]:
        """Write the stage's index.json (one per split when the stage is split); return the
        stage's figures over every split, for the summary."""
        common = self._stage_counts(stage, generations)
        if not self.config.split_config().enabled:
            index = self._split_index(stage, generations, "", common)
            self._write_index(self.stage_dir(stage), index)
            return {**index, "splits": {}}
        indexes = {s: self._split_index(stage, generations, s, common) for s in SPLITS}
        counts = {
            s: {k: i["totals"][k] for k in ("samples", "shards", "audio_s")}
            for s, i in indexes.items()
        }
        tasks: dict[str, dict[str, Any]] = {}
        quarantined: Counter = Counter()
        totals = {**_zero(), "shards": 0, "bytes": 0}
        for split, index in indexes.items():
            index["splits"] = counts
            self._write_index(split_dir(self.stage_dir(stage), split), index)
            for task, t in index["tasks"].items():
                _merge(tasks.setdefault(task, {}), t)
            quarantined.update(index["quarantined"])
            for k in totals:
                totals[k] = round(totals[k] + index["totals"][k], 3)
        totals["speech_tokens_per_s"] = (
            round(totals["speech_tokens"] / totals["speech_s"], 3) if totals["speech_s"] else None
        )
        return {
            **indexes[SPLITS[0]],
            "tasks": dict(sorted(tasks.items())),
            "quarantined": dict(sorted(quarantined.items())),
            "totals": totals,
            "splits": counts,
        }

    def _write_index(self, directory: str, index: dict[str, Any]) -> None:
        write_bytes_atomic(
            self.build.fs,
            index_path(directory),
            (json.dumps(index, indent=2, sort_keys=True) + "\n").encode(),
        )

    def _stage_counts(self, stage: str, generations: list[dict[str, Any]]) -> dict[str, Any]:
        """What the plan counted before any sample had a split: built, skipped, filtered and
        the mixture. Every split's index.json carries them whole (each split directory
        describes its stage); `minmo stats` counts them once per stage (pipelines/stats)."""
        built: Counter = Counter()
        kept: Counter = Counter()
        skipped: Counter = Counter()
        filtered: Counter = Counter()
        filtered_s: Counter = Counter()
        for g in generations:
            built.update(g["built"])
            kept.update(g["kept"])
            skipped.update(g["skipped"])
            filtered.update(g.get("filtered", {}))
            filtered_s.update(g.get("filtered_s", {}))
        weights = self.config.mixture.get(stage, {})
        return {
            "mixture": {
                task: {
                    "weight": float(weights.get(task, 1.0)),
                    "built": built.get(task, 0),
                    "kept": kept.get(task, 0),
                }
                for task in sorted(built)
            },
            "built": dict(sorted(built.items())),
            "skipped": dict(sorted(skipped.items())),
            "filtered": filtered_by_task(filtered, filtered_s),
        }

    def _split_index(
        self, stage: str, generations: list[dict[str, Any]], split: str, common: dict[str, Any]
    ) -> dict[str, Any]:
        """One directory's index.json: the shards of `split` ("" = the unsplit stage)."""

        def mine(g: dict[str, Any]) -> list[dict[str, Any]]:
            return [e for e in g.get("shards", []) if e.get("split", "") == split]

        def part(g: dict[str, Any], key: str) -> dict[str, Any]:
            if "by_split" in g:
                return g["by_split"].get(split, {}).get(key, {})
            return g.get(key, {}) if not split else {}  # a record from before splits

        shards = [e for g in generations for e in mine(g)]
        tasks: dict[str, dict[str, Any]] = {}
        quarantined: Counter = Counter()
        for g in generations:
            for task, t in part(g, "tasks").items():
                _merge(tasks.setdefault(task, {}), t)
            quarantined.update(part(g, "quarantined"))
        totals = {**_zero(), "shards": len(shards), "bytes": 0}
        for e in shards:
            for k in _zero():
                totals[k] = round(totals[k] + e[k], 3)
            totals["bytes"] += e["bytes"]
        totals["speech_tokens_per_s"] = (
            round(totals["speech_tokens"] / totals["speech_s"], 3) if totals["speech_s"] else None
        )
        index = {
            "version": INDEX_VERSION,
            "stage": stage,
            "seed": self.config.seed,
            "shuffle": self.config.shuffle,
            "bucket_edges_s": self.config.bucket_edges_s,
            "tokenizers": {
                **tokenizer_info(self.config.text_tokenizer, self.config.speech_tokenizer),
                "text_vocab_size": self._text_vocab_size(),
            },
            "generations": [
                {
                    "generation": g["generation"],
                    "units": len(g["units"]),
                    "shards": len(mine(g)),
                    "samples": sum(e["samples"] for e in mine(g)),
                }
                for g in generations
            ],
            "shards": shards,
            "tasks": dict(sorted(tasks.items())),
            **common,
            "quarantined": dict(sorted(quarantined.items())),
            "totals": totals,
        }
        if split:
            index["split"] = split
            index["split_by"] = self.config.split_config().by
        return index


def filtered_by_task(samples: Counter, seconds: Counter) -> dict[str, dict[str, Any]]:
    """ "<task>: <reason>" counters -> {task: {reason: {samples, hours}}}, as index.json and
    the stats report show what each filter removed."""
    out: dict[str, dict[str, Any]] = {}
    for why, n in sorted(samples.items()):
        task, _, reason = why.partition(": ")
        out.setdefault(task, {})[reason or "filtered"] = {
            "samples": int(n),
            "hours": round(float(seconds.get(why, 0.0)) / 3600, 6),
        }
    return out


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
            if s["rebuilt"]:
                lines.append(f"    rebuilt: {s['rebuilt']}")
            lines.append(
                f"    {s['generations']} generation(s); {s['new_units']} new unit(s) this run"
            )
            for task, v in s["tasks"].items():
                lines.append(f"    {task}: {v['samples']} samples, {v['audio_s'] / 3600:.4f} h")
            for why, n in s["skipped"].items():
                lines.append(f"    not built: {why}: {n}")
            for task, reasons in s.get("filtered", {}).items():
                for reason, v in reasons.items():
                    lines.append(
                        f"    filtered: {task}: {reason}: {v['samples']} samples, "
                        f"{v['hours']:.4f} h"
                    )
            if s.get("splits"):
                lines.append(
                    "    splits: "
                    + ", ".join(
                        f"{split} {v['samples']} samples ({v['shards']} shards, "
                        f"{v['audio_s'] / 3600:.4f} h)"
                        for split, v in s["splits"].items()
                    )
                )
        if any(s["tokenizers"].get("warning") for s in self.stages):
            lines.append("  !!! " + self.stages[0]["tokenizers"]["warning"] + " !!!")
        return "\n".join(lines)


def run_shards(
    build_uri: str,
    config: ShardsConfig,
    progress: bool = True,
    rebuild: bool = False,
    encode_audio: bool = True,
) -> ShardsSummary:
    """Plan and write every configured stage; `rebuild` deletes each stage first (announced),
    `encode_audio=False` is the bench's plan-only writer mode."""
    started = time.perf_counter()
    build = BuildDir(build_uri, **config.storage_options)
    step = ShardStep(build, config, progress, rebuild, encode_audio)
    try:
        stages = [step.run_stage(stage) for stage in config.stages]
    finally:
        step.ledger.finish()
    summary = ShardsSummary(stages, round(time.perf_counter() - started, 2))
    build.write_json_atomic(build.path("_state", STEP, "summary.json"), summary.to_dict())
    return summary
