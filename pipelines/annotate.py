"""The annotate step: segments -> the `annotations` table of SenseVoice pseudo-labels (+ quarantine).

    committed segments units (ingest's, synthesize's), one listing of DIR/segments/
      -> per pending unit: its segments joined to its own recordings (where the audio lives)
      -> Ray tasks (CPU): each segment's span decoded to 16 kHz (pipelines.audio_source)
      -> Ray actors (one GPU each when the cluster has GPUs, else one CPU): SenseVoiceSmall,
         loaded once per actor, batched (minmo.annotate.sensevoice)
      -> driver: a unit's rows, once all are back, staged and committed by the StepLedger

Owns: choosing the segments to label, the actor pool, the step's unit of resume and its summary.
The model, its tags and their mapping onto our vocabularies live in minmo/annotate/.

One annotate unit per segments unit, named `StepLedger.derived_unit_id(source step, unit)`, so
its part files are `annotations/annotate~<step>.<unit>_NNNN.parquet` and the shards planner
folds them into the view of the unit whose segments they label. It writes only its own table:
a human label in `segments` / `recordings` is never touched. Resumable and idempotent: a rerun
labels only units without a done marker, and a unit's files appear only at its commit (staged,
then moved, then marked; `StepLedger.recover` clears what a crash left). A segment whose audio
cannot be read becomes a quarantine row (step `annotate`) and is counted; a segment outside
[min_segment_s, max_segment_s] is not labelled and is counted as skipped (its input is fine).
"""

from __future__ import annotations

import json
import math
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.dataset as pads

from minmo.audio.decode import DecodeError
from minmo.config import ConfigError, StorageOptions, storage_options_field
from minmo.io.parquet import write_table
from minmo.io.trees import local_dir
from pipelines.audio_source import RecordingCache, SourceRoots
from pipelines.build import BuildDir, StepLedger
from pipelines.ray_runtime import ensure_ray, model_actors
from schemas import QUARANTINE, ReasonCode
from schemas.annotations import ANNOTATIONS
from schemas.quarantine import Rejected, quarantine_row
from schemas.units import SAMPLE_RATE_HZ

if TYPE_CHECKING:  # the labeller module imports torch and funasr; only actors load it
    from minmo.annotate.sensevoice import ClipLabels

STEP = "annotate"
TABLES = {"annotations": ANNOTATIONS, "quarantine": QUARANTINE}
SOURCE_TABLE = "segments"
SEGMENT_COLUMNS = ["segment_id", "recording_id", "channel", "start_s", "end_s", "duration_s"]
RECORDING_COLUMNS = ["recording_id", "source_uri", "channels"]


@dataclass
class AnnotateConfig:
    """How segments are pseudo-labelled; the `annotate:` section of a job spec maps onto it."""

    model: str | None = None
    """SenseVoiceSmall directory (config.yaml, model.pt, am.mvn, the .bpe.model and, as
    released, configuration.json): a local path, or a URI on the build's store, which each node
    copies once into its cache ($MINMO_CACHE, default ~/.cache/minmo). Required; minmo never
    downloads it from a model hub."""
    batch_size: int = 16
    """Segments per model call (padded to the longest; SenseVoice's forward is one pass)."""
    actors: int | None = None
    """Actor pool size; default one per GPU when the cluster has GPUs, else one per CPU."""
    gpus_per_actor: float | None = None
    """GPUs per actor; default 1 when the Ray cluster has GPUs, else 0 (CPU)."""
    device: str | None = None
    """Torch device inside an actor; default cuda when the actor has a GPU, else cpu."""
    min_segment_s: float = 0.2
    """Shorter segments are not labelled (too little audio for the model; counted as skipped)."""
    max_segment_s: float = 60.0
    """Longer segments are not labelled (SenseVoice attends over the whole clip: memory grows
    with the square of its length; ingest cuts at max_segment_s ~30 s anyway)."""
    audio_batch_size: int = 64
    """Segments per audio-decoding task (a recording's segments are decoded in one task)."""
    units_per_wave: int = 8
    """Segments units in flight at once: what the driver holds results of."""
    storage_options: StorageOptions = storage_options_field()

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError(
                "annotate needs model: a local SenseVoiceSmall directory (--model DIR)"
            )
        if self.batch_size < 1 or self.audio_batch_size < 1 or self.units_per_wave < 1:
            raise ConfigError("batch_size, audio_batch_size and units_per_wave must be >= 1")
        if not 0 <= self.min_segment_s < self.max_segment_s:
            raise ConfigError(
                f"need 0 <= min_segment_s < max_segment_s, got {self.min_segment_s} and "
                f"{self.max_segment_s}"
            )
        if self.actors is not None and self.actors < 1:
            raise ConfigError("actors must be >= 1 (or unset: one per GPU / CPU)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- what is to do ---------------------------------------------------------------------------


@dataclass
class SourceUnit:
    """One committed segments unit of another step, and its part files."""

    step: str
    unit: str
    segment_files: list[str] = field(default_factory=list)
    recording_files: list[str] = field(default_factory=list)

    @property
    def unit_id(self) -> str:
        """This step's unit id for it (the shards planner folds it into the source unit)."""
        return StepLedger.derived_unit_id(self.step, self.unit)


def source_units(build: BuildDir) -> list[SourceUnit]:
    """Every committed segments unit, sorted, with its own recordings files (ingest and
    synthesize commit a recording and its segments in one unit). One listing per table."""
    units: dict[tuple[str, str], SourceUnit] = {}
    for table in (SOURCE_TABLE, "recordings"):
        for path in build.files(build.table_dir(table), ".parquet"):
            owner = StepLedger.table_file_owner(path.rsplit("/", 1)[-1])
            if table == SOURCE_TABLE:
                units.setdefault(owner, SourceUnit(*owner)).segment_files.append(path)
            elif owner in units:
                units[owner].recording_files.append(path)
    return [units[k] for k in sorted(units)]


def unit_items(
    build: BuildDir, unit: SourceUnit, config: AnnotateConfig
) -> tuple[list[dict[str, Any]], Counter]:
    """The unit's segments to label (with their recording's source), and counts of the rest."""
    segments = _read(build, unit.segment_files, SEGMENT_COLUMNS)
    recordings = {
        r["recording_id"]: r for r in _read(build, unit.recording_files, RECORDING_COLUMNS)
    }
    skipped: Counter = Counter()
    items = []
    for s in segments:
        if s["duration_s"] < config.min_segment_s:
            skipped["too_short"] += 1
            continue
        if s["duration_s"] > config.max_segment_s:
            skipped["too_long"] += 1
            continue
        rec = recordings.get(s["recording_id"], {})
        items.append(
            {
                "unit": unit.unit_id,
                **s,
                "source_uri": rec.get("source_uri"),
                "channels": rec.get("channels"),
            }
        )
    items.sort(key=lambda i: (i["recording_id"], i["start_s"], i["segment_id"]))
    return items, skipped


def _read(build: BuildDir, files: list[str], columns: list[str]) -> list[dict[str, Any]]:
    if not files:
        return []
    dataset = pads.dataset(files, filesystem=build.fs, format="parquet")
    return dataset.to_table(columns=columns).to_pylist()


# ---- Ray stages ------------------------------------------------------------------------------


def load_segment_audio(
    batch: dict[str, np.ndarray], build_uri: str, storage_options: dict[str, Any]
) -> dict[str, list[Any]]:
    """Ray task: segments -> their 16 kHz mono float32 samples (bytes), or an error.

    `reason` is the quarantine code of a failure (missing file, undecodable, a span outside
    its audio...), `error` its detail; the actor turns them into quarantine rows."""
    build = BuildDir(build_uri, **storage_options)
    cache = RecordingCache(storage_options, SourceRoots.load(build))
    out: dict[str, list[Any]] = {"item_json": [], "pcm": [], "reason": [], "error": []}
    for item_json in batch["item_json"]:
        item = json.loads(item_json)
        pcm, reason, error = b"", "", ""
        try:
            if item["source_uri"] is None:
                raise LookupError(f"recording {item['recording_id']} is not in its unit")
            ref = {
                "uri": item["source_uri"],
                "channels": item["channels"],
                "channel": item["channel"] if item["channels"] > 1 else None,
                "start_s": item["start_s"],
                "end_s": item["end_s"],
            }
            pcm = cache.span(ref).mean(axis=0).astype(np.float32).tobytes()
        except Rejected as exc:  # missing or unreadable source (minmo.io.fs.read_source)
            reason, error = exc.reason.value, exc.detail
        except DecodeError as exc:
            reason, error = ReasonCode.UNDECODABLE.value, str(exc)
        except ValueError as exc:  # an empty span, a missing channel, NaN samples
            reason, error = ReasonCode.BAD_SEGMENT.value, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug must not sink the job: quarantined with its trace
            reason = ReasonCode.INTERNAL_ERROR.value
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
        out["item_json"].append(item_json)
        out["pcm"].append(pcm)
        out["reason"].append(reason)
        out["error"].append(error)
    return out


def annotation_row(
    item: dict[str, Any], labels: ClipLabels, version: str, model: str
) -> dict[str, Any]:
    """The annotations row of one labelled segment (schemas/annotations.py)."""
    return {
        "segment_id": item["segment_id"],
        "recording_id": item["recording_id"],
        "model": model,
        "model_version": version,
        "transcript": labels.transcript,
        "transcript_confidence": labels.transcript_confidence,
        "language": labels.language,
        "language_confidence": labels.language_confidence,
        "emotion": labels.emotion,
        "emotion_confidence": labels.emotion_confidence,
        "audio_events": labels.audio_events,
        "audio_events_confidence": labels.audio_events_confidence,
    }


class AnnotateStage:
    """Ray Data actor: a batch of decoded segments -> one result row each (an annotation or a
    quarantine row). The model is loaded once, in __init__."""

    def __init__(self, config: dict[str, Any], version: str) -> None:
        # Deferred: minmo.annotate.sensevoice imports torch and funasr (seconds, hundreds of
        # MB); only these actors need them, not the driver or the audio tasks.
        import torch

        # torch + funasr: heavy, actor-only (see above)
        from minmo.annotate.sensevoice import MODEL_NAME, SenseVoiceLabeler

        self.config = AnnotateConfig(**config)
        torch.set_num_threads(1)  # one CPU per actor: more threads only contend
        # A model directory on a store is copied once per node into minmo's cache.
        model_dir = local_dir(self.config.model, self.config.storage_options)  # type: ignore[arg-type]
        self.labeler = SenseVoiceLabeler(model_dir, self.config.device)
        self.version = version
        self.model_name = MODEL_NAME

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        items = [json.loads(j) for j in batch["item_json"]]
        results: list[dict[str, Any] | None] = [None] * len(items)
        good = []
        for i, item in enumerate(items):
            if batch["reason"][i]:
                results[i] = self._reject(item, str(batch["reason"][i]), str(batch["error"][i]))
            else:
                good.append(i)
        started = time.perf_counter()
        clips = {i: np.frombuffer(batch["pcm"][i], dtype=np.float32) for i in good}
        labelled = self._label(good, clips, items, results)
        compute_s = time.perf_counter() - started
        audio_s = sum(clips[i].size for i in labelled) / SAMPLE_RATE_HZ
        out: dict[str, list[Any]] = {"unit": [], "result_json": []}
        for i, item in enumerate(items):
            result = results[i] or {}
            # the batch's compute time is shared by its labelled segments, by audio length
            share = clips[i].size / SAMPLE_RATE_HZ / audio_s if i in labelled and audio_s else 0.0
            result["stats"] = {**result.get("stats", {}), "compute_s": compute_s * share}
            out["unit"].append(item["unit"])
            out["result_json"].append(json.dumps(result))
        return out

    def _label(
        self,
        good: list[int],
        clips: dict[int, np.ndarray],
        items: list[dict[str, Any]],
        results: list[dict[str, Any] | None],
    ) -> set[int]:
        """Label `good` in one pass; a failing batch is retried one by one to isolate a bad
        clip. Returns the indices labelled."""
        try:
            labels = dict(zip(good, self.labeler.label([clips[i] for i in good]), strict=True))
        except Exception:  # noqa: BLE001 - retry one by one below
            labels = {}
            for i in good:
                try:
                    labels[i] = self.labeler.label([clips[i]])[0]
                except Exception as exc:  # noqa: BLE001 - quarantined with its trace
                    detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
                    results[i] = self._reject(items[i], ReasonCode.INTERNAL_ERROR.value, detail)
        for i, lab in labels.items():
            row = annotation_row(items[i], lab, self.version, self.model_name)
            stats = {"segments": 1, "audio_s": clips[i].size / SAMPLE_RATE_HZ}
            for name in ("language", "emotion", "audio_events"):
                if row[name] is not None:
                    stats[f"with_{name}"] = 1
            results[i] = {"table": "annotations", "row": row, "stats": stats}
        return set(labels)

    def _reject(self, item: dict[str, Any], reason: str, detail: str) -> dict[str, Any]:
        row = quarantine_row(
            item.get("source_uri") or item["recording_id"], reason, detail, step=STEP
        )
        row["item_key"] = item["segment_id"]
        return {"table": "quarantine", "row": row, "stats": {}}


# ---- the run ---------------------------------------------------------------------------------


@dataclass
class AnnotateSummary:
    """This run and the whole build after it (summed from the done markers)."""

    units_run: int
    segments_run: int
    wall_s: float
    run_audio_s: float
    compute_s: float
    actors: int
    gpus_per_actor: float
    cores: int
    """CPUs of the Ray cluster this run held (its core-hours are wall_s x cores)."""
    model: str
    model_version: str
    units: int = 0
    segments: int = 0
    audio_s: float = 0.0
    with_labels: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)

    @property
    def hours_per_core_hour(self) -> float:
        """Audio hours labelled per core-hour of this run (wall time x the cluster's CPUs)."""
        core_s = self.cores * self.wall_s
        return self.run_audio_s / core_s if core_s else 0.0

    @property
    def hours_per_gpu_hour(self) -> float | None:
        gpu_s = self.actors * self.gpus_per_actor * self.wall_s
        return self.run_audio_s / gpu_s if gpu_s else None

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "hours": self.audio_s / 3600,
            "run_hours": self.run_audio_s / 3600,
            "audio_hours_per_core_hour": self.hours_per_core_hour,
            "audio_hours_per_gpu_hour": self.hours_per_gpu_hour,
        }

    def render(self) -> str:
        rate = self.run_audio_s / self.wall_s if self.wall_s else 0.0
        gpu = self.hours_per_gpu_hour
        lines = [
            f"annotate: {self.units_run} unit(s), {self.segments_run} segment(s) this run, "
            f"{self.run_audio_s / 3600:.3f} audio hours in {self.wall_s:.1f} s wall = "
            f"{rate:,.0f} audio-h per wall-h, {self.hours_per_core_hour:,.1f} per core-h"
            + (f", {gpu:,.1f} per GPU-h" if gpu is not None else ""),
            f"  model: {self.model} {self.model_version} on {self.actors} actor(s)"
            + (f" x {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else " (CPU)"),
            f"  build: {self.units} unit(s), {self.segments} segments labelled "
            f"({self.audio_s / 3600:.3f} h); with a label: "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.with_labels.items())) or "none"),
            "  skipped (outside min/max_segment_s): "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"),
            f"  quarantined: {sum(self.quarantined.values())}"
            + "".join(f"\n    {r}: {n}" for r, n in sorted(self.quarantined.items())),
        ]
        return "\n".join(lines)


class _UnitResults:
    """What the driver holds for one unit in flight: rows by table, and counts."""

    def __init__(self, expected: int, skipped: Counter) -> None:
        self.expected = expected
        self.received = 0
        self.rows: dict[str, list[dict[str, Any]]] = {t: [] for t in TABLES}
        self.stats: Counter = Counter()
        self.skipped = skipped

    def add(self, result: dict[str, Any]) -> None:
        self.received += 1
        self.rows[result["table"]].append(result["row"])
        self.stats.update(result.get("stats", {}))

    @property
    def complete(self) -> bool:
        return self.received >= self.expected


def _commit(
    build: BuildDir, ledger: StepLedger, unit_id: str, res: _UnitResults, version: str
) -> None:
    """Stage the unit's tables, then let the ledger move them in and write the marker."""
    staging = ledger.staging_dir(unit_id)
    for name, contract in TABLES.items():
        rows = sorted(res.rows[name], key=lambda r: r.get("item_key") or r.get("segment_id"))
        if rows:
            write_table(build.fs, f"{staging}/{name}/part.parquet", contract.from_rows(rows))
    quarantined = Counter(q["reason_code"] for q in res.rows["quarantine"])
    ledger.commit(
        unit_id,
        {
            "rows": {name: len(rows) for name, rows in res.rows.items()},
            "quarantined": dict(quarantined),
            "skipped": dict(res.skipped),
            "stats": dict(res.stats),
            "model_version": version,
        },
    )


def run_annotate(build_uri: str, config: AnnotateConfig, progress: bool = True) -> AnnotateSummary:
    """Label every segments unit of the build without a done marker; resumable, idempotent."""
    # Deferred: the labeller module imports torch and funasr (see AnnotateStage).
    from minmo.annotate.sensevoice import MODEL_NAME, check_model_dir, model_version

    started = time.perf_counter()
    model_dir = local_dir(config.model, config.storage_options)  # type: ignore[arg-type]
    check_model_dir(model_dir)  # fail before Ray starts
    version = model_version(model_dir)
    build = BuildDir(build_uri, **config.storage_options)
    ledger = StepLedger(build, STEP, tuple(TABLES))
    check_same_model(ledger, version)
    pending = [u for u in source_units(build) if not ledger.is_done(u.unit_id)]
    segments_run = units_run = 0
    run_stats: Counter = Counter()
    actors, gpus, cores = 0, 0.0, 0
    if pending:
        ensure_ray(progress=progress)
        import ray  # third-party, as in every step: Ray's import is slow and only a run needs it

        ledger.recover()
        actors, gpus = model_actors(True, config.gpus_per_actor, config.actors)
        cores = int(ray.cluster_resources().get("CPU", 1))
        from tqdm.auto import tqdm  # third-party, as in RecordingStep: only a run needs it

        bar = tqdm(desc=STEP, unit="unit", total=len(pending), disable=not progress)
        try:
            for first in range(0, len(pending), config.units_per_wave):
                wave = pending[first : first + config.units_per_wave]
                counts = _run_wave(build, ledger, wave, config, version, actors, gpus, bar)
                units_run += len(wave)
                segments_run += counts["segments_run"]
                run_stats.update(counts)
        finally:
            ledger.finish()
        bar.close()
    summary = AnnotateSummary(
        units_run=units_run,
        segments_run=segments_run,
        wall_s=time.perf_counter() - started,
        run_audio_s=run_stats.get("audio_s", 0.0),
        compute_s=run_stats.get("compute_s", 0.0),
        actors=actors,
        gpus_per_actor=gpus,
        cores=cores,
        model=MODEL_NAME,
        model_version=version,
    )
    _add_totals(summary, ledger)
    build.write_json_atomic(build.path("_state", STEP, "summary.json"), summary.to_dict())
    return summary


def check_same_model(ledger: StepLedger, version: str) -> None:
    """Refuse to mix models in one build: units labelled by another model version would stay
    as they are while new units got this model's labels. Relabelling is explicit: delete
    DIR/annotations and DIR/_state/annotate, then run again."""
    older = sorted({m.get("model_version") or "?" for m in ledger.done_units()} - {version})
    if older:
        raise ConfigError(
            f"the build's annotations come from model version {', '.join(older)}, this model is "
            f"{version}: to relabel with it, delete {ledger.build.table_dir('annotations')} and "
            f"{ledger.build.path('_state', STEP)} and run annotate again"
        )


def _add_totals(summary: AnnotateSummary, ledger: StepLedger) -> None:
    with_labels: Counter = Counter()
    skipped: Counter = Counter()
    quarantined: Counter = Counter()
    for marker in ledger.done_units():
        summary.units += 1
        summary.segments += marker["rows"].get("annotations", 0)
        summary.audio_s += marker["stats"].get("audio_s", 0.0)
        with_labels.update(
            {
                k.removeprefix("with_"): v
                for k, v in marker["stats"].items()
                if k.startswith("with_")
            }
        )
        skipped.update(marker.get("skipped", {}))
        quarantined.update(marker.get("quarantined", {}))
    summary.with_labels = dict(with_labels)
    summary.skipped = dict(skipped)
    summary.quarantined = dict(quarantined)


def _run_wave(
    build: BuildDir,
    ledger: StepLedger,
    wave: list[SourceUnit],
    config: AnnotateConfig,
    version: str,
    actors: int,
    gpus: float,
    bar: Any,
) -> Counter:
    import ray  # third-party, as in every step: Ray's import is slow and only a run needs it

    counts: Counter = Counter()
    in_flight: dict[str, _UnitResults] = {}
    items: list[dict[str, Any]] = []
    for unit in wave:
        unit_items_, skipped = unit_items(build, unit, config)
        res = _UnitResults(len(unit_items_), skipped)
        if res.complete:  # nothing to label: committed at once, so a rerun skips it
            _commit(build, ledger, unit.unit_id, res, version)
            bar.update(1)
            continue
        in_flight[unit.unit_id] = res
        items.extend(unit_items_)
    if not items:
        return counts
    rows = [{"item_json": json.dumps(i)} for i in items]
    blocks = max(1, math.ceil(len(rows) / config.audio_batch_size))
    ds = (
        ray.data.from_items(rows, override_num_blocks=blocks)
        .map_batches(
            load_segment_audio,
            fn_kwargs={"build_uri": build.uri, "storage_options": config.storage_options},
            batch_size=config.audio_batch_size,
            num_cpus=1,
        )
        .map_batches(
            AnnotateStage,
            fn_constructor_kwargs={"config": config.to_dict(), "version": version},
            batch_size=config.batch_size,
            num_cpus=1,
            num_gpus=gpus,
            compute=ray.data.ActorPoolStrategy(size=min(actors, len(items))),
        )
    )
    for row in ds.iter_rows():
        unit_id = row["unit"]
        result = json.loads(row["result_json"])
        res = in_flight[unit_id]
        res.add(result)
        counts["segments_run"] += 1
        counts.update(result.get("stats", {}))
        if res.complete:
            _commit(build, ledger, unit_id, in_flight.pop(unit_id), version)
            bar.update(1)
            bar.set_postfix(audio_h=f"{counts['audio_s'] / 3600:.2f}")
    if in_flight:
        raise RuntimeError(f"{STEP}: units {sorted(in_flight)} incomplete; rerun to resume")
    return counts
