"""The diarize step: conversation recordings -> the speaker turns table (+ quarantine).

Owns: choosing the recordings to diarize (by task, duplicates skipped), the backend choice per
recording (`auto`: `channels` for multi-channel audio, else `pyannote` when a model is
configured, else `offline`), the Ray Data actor stage that loads audio and runs the backend,
and the step's summary. The algorithms live in minmo/diarization/; the backends, with their
settings (`backend_options` here), are named by minmo/diarization/registry.py.

Resumable and idempotent through `RecordingStep`: a recording is diarized once per build;
bad input (no speech, one speaker, fewer distinct voices than the hints ask for, a one-channel
recording forced onto `channels`, unreadable audio) is quarantined with a reason, never a crash.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch

from minmo.audio.decode import DecodeError
from minmo.config import ConfigError, StorageOptions, nearest, storage_options_field
from minmo.diarization import registry
from minmo.diarization.registry import AUTO, BackendContext, Diarizer
from minmo.diarization.types import DiarizationRejected, SpeakerHints
from pipelines.audio_source import SourceRoots, load_audio_16k
from pipelines.build import BuildDir
from pipelines.ray_runtime import ensure_ray, model_actors
from pipelines.recording_step import RecordingStep, StepTotals
from schemas import QUARANTINE, TURNS, ReasonCode
from schemas.quarantine import Rejected, quarantine_row

STEP = "diarize"
BACKENDS = (AUTO, *registry.BACKENDS)
"""The `backend` choices: `auto` and every registered backend (minmo/diarization/registry.py)."""


@dataclass
class DiarizeConfig:
    """How conversations are diarized; the `diarize:` section of a job spec maps onto it."""

    backend: str = "auto"
    """auto, channels, pyannote or offline (see the module docstring for `auto`)."""
    diarization_model: str | None = None
    """pyannote pipeline: a local directory with config.yaml, or a repo id in the HF cache."""
    num_speakers: int | None = 2
    """Speakers per conversation, an exact count that overrides the bounds; two-party
    conversations default to 2. None (command line: 0): estimate between the bounds."""
    min_speakers: int | None = None
    """Lower bound when the number of speakers is estimated (num_speakers: null)."""
    max_speakers: int | None = None
    """Upper bound when the number of speakers is estimated: 4 for meetings (AliMeeting has 2-4
    speakers), with num_speakers: null. A two-party call diarized under these bounds still gets
    2 speakers (the offline backend's estimate, minmo/diarization/offline.py; `channels` takes
    its speakers from the channels)."""
    tasks: list[str] = field(default_factory=lambda: ["conversation"])
    """Recordings whose `task` is one of these are diarized."""
    device: str | None = None
    """Torch device for model backends; default cuda when the actor has a GPU, else cpu."""
    actors: int | None = None
    """Actor pool size; default one per CPU (or per GPU when GPUs are used)."""
    gpus_per_actor: float | None = None
    """GPUs per actor; default 1 when the Ray cluster has GPUs and a model backend is used."""
    recordings_per_unit: int = 16
    """Recordings per committed unit of work: the granularity of resume."""
    units_per_wave: int = 16
    """Units in flight at once."""
    storage_options: StorageOptions = storage_options_field()
    backend_options: dict[str, Any] = field(default_factory=dict)
    """Each backend's own settings by backend name, e.g. `{offline: {window_s: 1.5}}`; a section
    maps onto that backend's settings dataclass (registry.py), an unknown key is an error naming
    the nearest one. Several may be given: `auto` can use more than one backend in a run."""

    def __post_init__(self) -> None:
        if not self.tasks:
            self.tasks = ["conversation"]
        if self.backend != AUTO and self.backend not in registry.BACKENDS:
            raise ConfigError(
                f"diarize backend must be one of {(AUTO, *registry.BACKENDS)}, "
                f"got {self.backend!r}{nearest(self.backend, registry.BACKENDS)}"
            )
        chosen = None if self.backend == AUTO else registry.get(self.backend)
        if chosen and chosen.needs_model_path and not self.diarization_model:
            raise ConfigError(f"backend {self.backend!r} needs diarization_model (a local path)")
        self.backend_options = {
            name: registry.parse_settings(name, section)
            for name, section in self.backend_options.items()
        }
        self._check_speaker_counts()
        if self.recordings_per_unit < 1 or self.units_per_wave < 1:
            raise ConfigError("recordings_per_unit and units_per_wave must be >= 1")

    def _check_speaker_counts(self) -> None:
        """Counts are >= 1, min <= max, and an exact count is not mixed with bounds: with the
        default num_speakers: 2 a `max_speakers: 4` would be silently ignored, and a meeting
        diarized as two speakers."""
        if self.num_speakers == 0:  # the command line's spelling of "estimate"
            self.num_speakers = None
        for name in ("num_speakers", "min_speakers", "max_speakers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"diarize {name} must be >= 1 (or null), got {value}")
        bounds = {"min_speakers": self.min_speakers, "max_speakers": self.max_speakers}
        given = {k: v for k, v in bounds.items() if v is not None}
        if self.num_speakers is not None and given:
            raise ConfigError(
                f"diarize num_speakers={self.num_speakers} is an exact count and would override "
                f"{', '.join(f'{k}={v}' for k, v in given.items())}: set num_speakers: null "
                "(command line: --num-speakers 0) to estimate the count between the bounds"
            )
        if len(given) == 2 and self.min_speakers > self.max_speakers:  # type: ignore[operator]
            raise ConfigError(
                f"diarize min_speakers ({self.min_speakers}) is above max_speakers "
                f"({self.max_speakers})"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def settings(self, backend: str) -> Any:
        """`backend`'s settings: its `backend_options` section, else its defaults."""
        if backend in self.backend_options:
            return self.backend_options[backend]
        return registry.get(backend).settings()


def choose_backend(config: DiarizeConfig, channels: int) -> str:
    """The backend for one recording: the configured one, or `auto`'s pick by channel count."""
    if config.backend != AUTO:
        return config.backend
    if channels >= 2:
        return "channels"
    if config.diarization_model:
        return "pyannote"
    return "offline"


def speech_and_overlap_s(turns: list[dict[str, Any]]) -> tuple[float, float]:
    """Seconds with anyone speaking, and with two or more speaking at once."""
    edges = sorted([(t["start_s"], 1) for t in turns] + [(t["end_s"], -1) for t in turns])
    speech = overlap = 0.0
    active = 0
    last = 0.0
    for time_s, delta in edges:
        if active >= 1:
            speech += time_s - last
        if active >= 2:
            overlap += time_s - last
        active += delta
        last = time_s
    return speech, overlap


class DiarizeStage:
    """Ray Data actor: one recording per call -> its turns rows or a quarantine row.

    Backends are built on first use and kept for the actor's life (model loads are the
    expensive part)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = DiarizeConfig(**config)
        self.context = BackendContext(self.config.diarization_model, self.config.device)
        self.backends: dict[str, Diarizer] = {}
        torch.set_num_threads(1)  # one CPU per actor: more threads only contend

    def _backend(self, name: str) -> Diarizer:
        if name not in self.backends:
            settings = self.config.settings(name)
            self.backends[name] = registry.build(name, settings, self.context)
        return self.backends[name]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"unit": [], "recording_id": [], "result_json": []}
        for unit, rid, item_json in zip(
            batch["unit"], batch["recording_id"], batch["item_json"], strict=True
        ):
            out["unit"].append(unit)
            out["recording_id"].append(rid)
            out["result_json"].append(json.dumps(self.diarize(json.loads(item_json))))
        return out

    def diarize(self, item: dict[str, Any]) -> dict[str, Any]:
        config = self.config
        backend = choose_backend(config, item["channels"])
        stats: dict[str, float] = {"audio_s": item["duration_s"], f"backend_{backend}": 1}

        def reject(reason: str, detail: str) -> dict[str, Any]:
            row = quarantine_row(item["source_uri"], reason, detail, step=STEP)
            row["item_key"] = item["recording_id"]
            return {"tables": {"quarantine": [row]}, "stats": stats}

        started = time.perf_counter()
        try:
            # audio_uri: where the source is now (SourceRoots); source_uri stays in the tables
            uri = item.get("audio_uri") or item["source_uri"]
            audio = load_audio_16k(uri, item["channels"], config.storage_options)
            hints = SpeakerHints(config.num_speakers, config.min_speakers, config.max_speakers)
            segments = self._backend(backend)(audio, hints)
        except DiarizationRejected as exc:
            return reject(exc.reason, exc.detail)
        except Rejected as exc:
            return reject(exc.reason.value, exc.detail)
        except DecodeError as exc:
            return reject(ReasonCode.UNDECODABLE.value, str(exc))
        except Exception as exc:  # a bug must not sink the job: quarantined with its trace
            detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
            return reject(ReasonCode.INTERNAL_ERROR.value, detail)
        stats["compute_s"] = time.perf_counter() - started
        found = len({s.speaker for s in segments})
        wanted = hints.num_speakers or hints.min_speakers or 1
        if found < wanted:  # backends that do not refuse it themselves (pyannote, channels)
            reason = ReasonCode.SINGLE_SPEAKER if found <= 1 else ReasonCode.INDISTINCT_SPEAKERS
            return reject(
                reason.value,
                f"the {backend} backend told {found} voice(s) apart; the hints ask for at least "
                f"{wanted} (num_speakers / min_speakers)",
            )
        rows = [
            {
                "recording_id": item["recording_id"],
                "speaker": s.speaker,
                "channel": s.channel,
                "start_s": round(s.start_s, 3),
                "end_s": round(s.end_s, 3),
                "backend": backend,
                "confidence": float(np.clip(s.confidence, 0.0, 1.0)),
            }
            for s in segments
        ]
        speech_s, overlap_s = speech_and_overlap_s(rows)
        stats |= {
            "conversations": 1,
            "diarized_audio_s": item["duration_s"],
            "speech_s": speech_s,
            "overlap_s": overlap_s,
        }
        return {"tables": {"turns": rows}, "stats": stats}


@dataclass
class DiarizeSummary:
    """This run and the whole build after it."""

    recordings_run: int
    wall_s: float
    run_audio_s: float
    totals: StepTotals

    def to_dict(self) -> dict[str, Any]:
        t = self.totals
        return {
            "recordings_run": self.recordings_run,
            "wall_s": self.wall_s,
            "run_audio_s": self.run_audio_s,
            "conversations": int(t.stats.get("conversations", 0)),
            "hours": t.stats.get("diarized_audio_s", 0.0) / 3600,
            "turns": t.rows.get("turns", 0),
            "speech_s": t.stats.get("speech_s", 0.0),
            "overlap_ratio": self.overlap_ratio,
            "backends": {
                k.removeprefix("backend_"): int(v)
                for k, v in t.stats.items()
                if k.startswith("backend_")
            },
            "quarantined": dict(t.quarantined),
            "real_time_factor": self.real_time_factor,
        }

    @property
    def overlap_ratio(self) -> float:
        speech = self.totals.stats.get("speech_s", 0.0)
        return self.totals.stats.get("overlap_s", 0.0) / speech if speech else 0.0

    @property
    def real_time_factor(self) -> float:
        audio = self.totals.stats.get("diarized_audio_s", 0.0)
        return self.totals.stats.get("compute_s", 0.0) / audio if audio else 0.0

    def render(self) -> str:
        d = self.to_dict()
        rate = self.run_audio_s / self.wall_s if self.wall_s else 0.0
        backends = ", ".join(f"{k} {v}" for k, v in sorted(d["backends"].items())) or "none"
        lines = [
            f"diarize: {self.recordings_run} recording(s) this run, {self.run_audio_s / 3600:.3f} "
            f"audio hours in {self.wall_s:.1f} s wall = {rate:,.0f} audio-h per wall-h",
            f"  build: {d['conversations']} conversations diarized ({d['hours']:.3f} h), "
            f"{d['turns']} turns, overlap {100 * d['overlap_ratio']:.1f}% of speech",
            f"  backends: {backends}; compute {d['real_time_factor']:.3f}x real time per actor",
            f"  quarantined: {sum(d['quarantined'].values())}"
            + "".join(f"\n    {r}: {n}" for r, n in sorted(d["quarantined"].items())),
        ]
        return "\n".join(lines)


def conversations_to_diarize(build: BuildDir, config: DiarizeConfig) -> list[dict[str, Any]]:
    """Recordings with a conversation task, duplicates skipped, sorted by recording id."""
    files = build.files(build.table_dir("recordings"), ".parquet")
    if not files:
        return []
    columns = ["recording_id", "source_uri", "channels", "duration_s", "task", "dup_of"]
    table = pads.dataset(files, filesystem=build.fs, format="parquet").to_table(
        columns=columns,
        filter=pc.field("task").isin(config.tasks) & pc.field("dup_of").is_null(),
    )
    rows = table.drop_columns(["task", "dup_of"]).to_pylist()
    roots = SourceRoots.load(build)
    for row in rows:
        row["audio_uri"] = roots.resolve(row["source_uri"])
    return sorted(rows, key=lambda r: r["recording_id"])


def run_diarize(build_uri: str, config: DiarizeConfig, progress: bool = True) -> DiarizeSummary:
    """Diarize every pending conversation of the build; resumable, idempotent."""
    build = BuildDir(build_uri, **config.storage_options)
    step = RecordingStep(
        build,
        STEP,
        {"turns": TURNS, "quarantine": QUARANTINE},
        config.recordings_per_unit,
        config.units_per_wave,
    )
    done = step.covered()
    pending = [r for r in conversations_to_diarize(build, config) if r["recording_id"] not in done]
    counts = None
    if pending:
        ensure_ray(progress=progress)
        counts = step.run(
            pending, lambda ds: _diarize_dataset(ds, config, len(pending)), progress, len(pending)
        )
    summary = DiarizeSummary(
        recordings_run=counts.recordings_run if counts else 0,
        wall_s=counts.wall_s if counts else 0.0,
        run_audio_s=counts.stats.get("audio_s", 0.0) if counts else 0.0,
        totals=step.totals(),
    )
    build.write_json_atomic(build.path("_state", STEP, "summary.json"), summary.to_dict())
    return summary


def _diarize_dataset(ds: Any, config: DiarizeConfig, n_items: int) -> Any:
    import ray  # third-party, as in every step: Ray's import is slow and only a run needs it

    uses_model = config.backend == AUTO or registry.get(config.backend).uses_model
    actors, gpus = model_actors(uses_model, config.gpus_per_actor, config.actors)
    actors = min(actors, n_items)
    return ds.map_batches(
        DiarizeStage,
        fn_constructor_kwargs={"config": config.to_dict()},
        batch_size=1,
        num_cpus=1,
        num_gpus=gpus,
        compute=ray.data.ActorPoolStrategy(size=actors),
    )
