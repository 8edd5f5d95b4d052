"""Capacity plan: what a corpus build costs on a cluster, from measured rates and a task mixture.

Owns the planning model and its inputs: the rates file `bench/scale.py` writes
(`bench/rates.json`), the task mixture (`jobs/plan/*.yaml`), the cluster, and the pure function
`make_plan` from those three to one row per step. Must not: measure anything, read a build, or
start Ray: a plan is arithmetic, so `minmo plan` answers at once and tests need no fixtures.

The model, every assumption in plain sight:

* A mixture entry is a task with audio-hours, a mean sample duration and a *pipeline*: the steps
  its audio passes through (`[ingest, shards, stats]` for transcribed speech, `[synthesize, ...]`
  for simulated dialogues). Each step handles every audio-hour routed through it once; the shards
  step is planned per stage (`shards:stage1` ...), from the entry's stage.
* Rates are audio-hours per core-hour and, where one was measured, per GPU-hour. A step with a GPU
  rate runs on the GPUs when the cluster has some (its CPU-side work is assumed to overlap the GPU
  work and is not counted); every other step runs on the cores.
* Throughput grows linearly with cores and GPUs (`bench/scale.py` checks the per-step half of that
  on one machine: the rate at 100x the demo against 10x). Steps run one after another, each on
  the whole cluster, so a step's wall time is its core-hours over the cluster's cores (or GPU-hours
  over its GPUs), the total is their sum, and the bottleneck is the step with the largest wall
  time. Overlapping steps would shorten the total, never the bottleneck.
* Training (when the mixture has a `train` section) is planned from a formula, not a rate:
  FLOPs = 6 x parameters x tokens, tokens = audio seconds x LLM tokens per audio second x epochs,
  at an assumed MFU of the GPUs' peak; GPU-hours = FLOPs / (MFU x peak x 3600).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from minmo.config import StorageOptions, nearest, storage_options_field
from minmo.io.fs import open_filesystem
from schemas.tasks import STAGE_TASKS

# The steps a pipeline may name, in the order a build runs them (rows print in this order).
PLAN_STEPS = ("ingest", "synthesize", "diarize", "label-turns", "shards", "stats")
TRAIN = "train"


class PlanError(ValueError):
    """The rates, the mixture or the cluster cannot make a plan; the message says how to fix it."""


def rate_key(step: str, stage: str) -> str:
    """The rates-file key of a step: `shards:stage1` for the per-stage shards step, else the step."""
    return f"{step}:{stage}" if step == "shards" else step


@dataclass(frozen=True)
class StepRate:
    """One step's measured throughput and output size, per audio-hour it handles."""

    per_core_hour: float  # audio-hours per core-hour (CPU)
    per_gpu_hour: float | None = None  # audio-hours per GPU-hour, where measured on a GPU
    bytes_per_audio_hour: dict[str, float] = field(default_factory=dict)  # output -> bytes

    def __post_init__(self) -> None:
        if not self.per_core_hour > 0:
            raise PlanError(f"per_core_hour must be > 0, got {self.per_core_hour}")
        if self.per_gpu_hour is not None and not self.per_gpu_hour > 0:
            raise PlanError(f"per_gpu_hour must be > 0 or null, got {self.per_gpu_hour}")


@dataclass(frozen=True)
class Rates:
    """A rates file: per-step rates plus where they were measured (for the plan's header)."""

    steps: dict[str, StepRate]
    source: str = ""  # the file they came from
    measured_on: str = ""  # machine and date, one line


@dataclass(frozen=True)
class MixEntry:
    """Audio of one task that reaches the shards through one pipeline."""

    name: str
    task: str
    stage: str
    hours: float
    mean_duration_s: float
    pipeline: tuple[str, ...]


@dataclass(frozen=True)
class TrainModel:
    """The training cost formula's inputs (see the module docstring)."""

    parameters: float  # all of MinMo's parameters (minmo model-info --size full)
    tokens_per_audio_s: float  # LLM positions per second of audio
    mfu: float  # assumed model FLOPs utilisation
    peak_flops_per_gpu: float  # dense bf16 peak of one GPU
    epochs: float = 1.0

    def __post_init__(self) -> None:
        for name in ("parameters", "tokens_per_audio_s", "peak_flops_per_gpu", "epochs"):
            if not getattr(self, name) > 0:
                raise PlanError(f"train.{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.mfu <= 1:
            raise PlanError(f"train.mfu must be in (0, 1], got {self.mfu}")


@dataclass(frozen=True)
class Mix:
    """A task mixture: entries, and optionally the training cost model."""

    name: str
    entries: tuple[MixEntry, ...]
    train: TrainModel | None = None

    @property
    def hours(self) -> float:
        return sum(e.hours for e in self.entries)

    def scaled(self, hours: float) -> Mix:
        """The same proportions with `hours` in all."""
        if not hours > 0:
            raise PlanError(f"--hours must be > 0, got {hours}")
        factor = hours / self.hours
        entries = tuple(
            MixEntry(e.name, e.task, e.stage, e.hours * factor, e.mean_duration_s, e.pipeline)
            for e in self.entries
        )
        return Mix(self.name, entries, self.train)


@dataclass(frozen=True)
class Cluster:
    """Identical nodes: cores and GPUs per node."""

    nodes: int
    cores_per_node: int
    """CPU cores each node gives the steps."""
    gpus_per_node: int = 0
    """GPUs per node; 0 plans every step on CPUs."""

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.cores_per_node < 1:
            raise PlanError(
                f"a cluster needs >= 1 node and >= 1 core per node, got {self.nodes} nodes x "
                f"{self.cores_per_node} cores"
            )
        if self.gpus_per_node < 0:
            raise PlanError(f"--gpus-per-node must be >= 0, got {self.gpus_per_node}")

    @property
    def cores(self) -> int:
        return self.nodes * self.cores_per_node

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class PlanRow:
    """One step of the plan."""

    step: str
    audio_hours: float
    samples: float  # training samples (shards) or items handled, from mean durations
    resource: str  # "cpu" or "gpu"
    core_hours: float
    gpu_hours: float
    bytes_written: float
    wall_hours: float


@dataclass(frozen=True)
class Plan:
    rows: tuple[PlanRow, ...]
    cluster: Cluster
    mix: Mix
    rates: Rates

    @property
    def bottleneck(self) -> PlanRow:
        return max(self.rows, key=lambda r: r.wall_hours)

    def total(self, attr: str) -> float:
        return sum(getattr(r, attr) for r in self.rows)


def make_plan(rates: Rates, mix: Mix, cluster: Cluster) -> Plan:
    """One row per step the mixture routes audio through (then `train`), in PLAN_STEPS order."""
    hours: dict[str, float] = {}
    samples: dict[str, float] = {}
    for entry in mix.entries:
        for step in entry.pipeline:
            key = rate_key(step, entry.stage)
            hours[key] = hours.get(key, 0.0) + entry.hours
            samples[key] = samples.get(key, 0.0) + entry.hours * 3600 / entry.mean_duration_s
    missing = [k for k in hours if k not in rates.steps]
    if missing:
        raise PlanError(
            f"no rate for {', '.join(sorted(missing))} in {rates.source or 'the rates'} "
            f"(it has: {', '.join(sorted(rates.steps)) or 'nothing'}); measure them with "
            f"`python bench/scale.py` or drop the step from the mixture's pipelines"
        )
    rows = []
    for key in sorted(hours, key=lambda k: (PLAN_STEPS.index(k.split(":")[0]), k)):
        rate, h = rates.steps[key], hours[key]
        on_gpu = rate.per_gpu_hour is not None and cluster.gpus > 0
        core_h = 0.0 if on_gpu else h / rate.per_core_hour
        gpu_h = h / rate.per_gpu_hour if on_gpu and rate.per_gpu_hour else 0.0
        rows.append(
            PlanRow(
                step=key,
                audio_hours=h,
                samples=samples[key],
                resource="gpu" if on_gpu else "cpu",
                core_hours=core_h,
                gpu_hours=gpu_h,
                bytes_written=h * sum(rate.bytes_per_audio_hour.values()),
                wall_hours=gpu_h / cluster.gpus if on_gpu else core_h / cluster.cores,
            )
        )
    if mix.train is not None:
        rows.append(train_row(mix, cluster))
    return Plan(tuple(rows), cluster, mix, rates)


def train_row(mix: Mix, cluster: Cluster) -> PlanRow:
    """Training's GPU-hours from FLOPs = 6 N T at the assumed MFU (see the module docstring)."""
    model = mix.train
    assert model is not None
    if cluster.gpus == 0:
        raise PlanError(
            "the mixture plans training, which needs GPUs: give --gpus-per-node, or remove the "
            "mixture's `train` section"
        )
    tokens = mix.hours * 3600 * model.tokens_per_audio_s * model.epochs
    flops = 6 * model.parameters * tokens
    gpu_h = flops / (model.mfu * model.peak_flops_per_gpu * 3600)
    return PlanRow(
        step=TRAIN,
        audio_hours=mix.hours * model.epochs,
        samples=sum(e.hours * 3600 / e.mean_duration_s for e in mix.entries) * model.epochs,
        resource="gpu",
        core_hours=0.0,
        gpu_hours=gpu_h,
        bytes_written=0.0,
        wall_hours=gpu_h / cluster.gpus,
    )


# ---- reading the inputs ----------------------------------------------------------------------


def _read_text(uri: str, storage_options: dict[str, Any] | None) -> str:
    fs, path = open_filesystem(str(uri), **(storage_options or {}))
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such file") from None


def _check_keys(where: str, given: dict[str, Any], valid: tuple[str, ...]) -> None:
    for key in given:
        if key not in valid:
            raise PlanError(
                f'{where}: unknown key "{key}"{nearest(key, valid)}; valid: {", ".join(valid)}'
            )


def parse_rates(data: dict[str, Any], source: str = "") -> Rates:
    """Rates from a parsed rates file (`bench/scale.py` writes the format; its docstring shows
    it). Only `steps` is required; each step needs `per_core_hour`."""
    steps = data.get("steps")
    if not isinstance(steps, dict) or not steps:
        raise PlanError(f"{source or 'rates'}: no 'steps' mapping; write it with bench/scale.py")
    rates = {}
    for key, value in steps.items():
        if not isinstance(value, dict) or "per_core_hour" not in value:
            raise PlanError(f"{source}: steps.{key} has no per_core_hour")
        try:
            rates[key] = StepRate(
                per_core_hour=float(value["per_core_hour"]),
                per_gpu_hour=None
                if value.get("per_gpu_hour") is None
                else float(value["per_gpu_hour"]),
                bytes_per_audio_hour={
                    k: float(v) for k, v in (value.get("bytes_per_audio_hour") or {}).items()
                },
            )
        except PlanError as exc:
            raise PlanError(f"{source}: steps.{key}: {exc}") from None
    machine = data.get("machine") or {}
    measured_on = ", ".join(
        str(x)
        for x in (
            data.get("date"),
            machine.get("cpu"),
            f"{machine['cores']} cores" if "cores" in machine else None,
            "GPU: " + str(machine["gpu"]) if machine.get("gpu") else "no GPU",
        )
        if x
    )
    return Rates(rates, source, measured_on)


def load_rates(uri: str, storage_options: dict[str, Any] | None = None) -> Rates:
    try:
        data = json.loads(_read_text(uri, storage_options))
    except json.JSONDecodeError as exc:
        raise PlanError(f"{uri}: not valid JSON ({exc}); rewrite it with bench/scale.py") from None
    return parse_rates(data, str(uri))


ENTRY_KEYS = ("task", "stage", "hours", "mean_duration_s", "pipeline", "source")
TRAIN_KEYS = (
    "parameters",
    "tokens_per_audio_s",
    "mfu",
    "peak_flops_per_gpu",
    "epochs",
    "source",
)


def _stage_of(task: str, where: str) -> str:
    for stage, tasks in STAGE_TASKS.items():
        if task in tasks:
            return stage
    known = [t for tasks in STAGE_TASKS.values() for t in tasks]
    raise PlanError(f'{where}: unknown task "{task}"{nearest(task, known)}; known: {known}')


def parse_mix(data: dict[str, Any], source: str = "mix") -> Mix:
    """A mixture from its parsed YAML (jobs/plan/minmo-paper.yaml shows the format)."""
    if not isinstance(data, dict):
        raise PlanError(f"{source}: a mixture is a mapping with 'pipelines' and 'tasks'")
    _check_keys(source, data, ("name", "description", "pipelines", "tasks", "train"))
    pipelines = data.get("pipelines") or {}
    for name, steps in pipelines.items():
        if not isinstance(steps, list) or not steps:
            raise PlanError(f"{source}: pipelines.{name} must be a non-empty list of steps")
        for step in steps:
            if step not in PLAN_STEPS:
                raise PlanError(
                    f'{source}: pipelines.{name}: unknown step "{step}"'
                    f"{nearest(str(step), PLAN_STEPS)}; steps: {', '.join(PLAN_STEPS)}"
                )
    tasks = data.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise PlanError(f"{source}: 'tasks' must be a non-empty mapping of entries")
    entries = []
    for name, entry in tasks.items():
        where = f"{source}: tasks.{name}"
        if not isinstance(entry, dict):
            raise PlanError(f"{where} must be a mapping")
        _check_keys(where, entry, ENTRY_KEYS)
        task = str(entry.get("task", name))
        stage = _stage_of(task, where)
        if "stage" in entry and entry["stage"] != stage:
            raise PlanError(f"{where}: task {task} belongs to {stage}, not {entry['stage']}")
        for key in ("hours", "mean_duration_s", "pipeline"):
            if key not in entry:
                raise PlanError(f"{where}: '{key}' is required")
        hours, mean_s = float(entry["hours"]), float(entry["mean_duration_s"])
        if hours < 0:
            raise PlanError(f"{where}: hours must be >= 0, got {hours}")
        if not mean_s > 0:
            raise PlanError(f"{where}: mean_duration_s must be > 0, got {mean_s}")
        pipeline = entry["pipeline"]
        if pipeline not in pipelines:
            raise PlanError(
                f'{where}: unknown pipeline "{pipeline}"{nearest(str(pipeline), pipelines)}; '
                f"defined: {', '.join(pipelines) or 'none'}"
            )
        entries.append(MixEntry(name, task, stage, hours, mean_s, tuple(pipelines[pipeline])))
    if not sum(e.hours for e in entries) > 0:
        raise PlanError(f"{source}: the mixture holds no hours")
    train = None
    if data.get("train") is not None:
        section = data["train"]
        _check_keys(f"{source}: train", section, TRAIN_KEYS)
        try:
            train = TrainModel(
                **{k: float(v) for k, v in section.items() if k != "source"}  # type: ignore[arg-type]
            )
        except TypeError as exc:
            raise PlanError(f"{source}: train: {exc}") from None
    return Mix(str(data.get("name") or Path(source).stem), tuple(entries), train)


def load_mix(uri: str, storage_options: dict[str, Any] | None = None) -> Mix:
    return parse_mix(yaml.safe_load(_read_text(uri, storage_options)), str(uri))


# ---- printing --------------------------------------------------------------------------------


def _num(x: float) -> str:
    if x == 0:
        return "-"
    return f"{x:,.0f}" if x >= 10 else f"{x:.2g}"


def _duration(hours: float) -> str:
    if hours >= 48:
        return f"{hours / 24:,.1f} d"
    if hours >= 1:
        return f"{hours:.1f} h"
    if hours >= 1 / 60:
        return f"{hours * 60:.1f} min"
    return f"{hours * 3600:.0f} s"


def _bytes(n: float) -> str:
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return "-" if n == 0 else f"{n:,.0f} B"


def render(plan: Plan) -> str:
    """The plan as a Markdown table with a header and the bottleneck (what `minmo plan` prints)."""
    c, mix = plan.cluster, plan.mix
    lines = [
        f"capacity plan: {mix.hours:,.0f} audio-hours, mixture {mix.name!r}, on {c.nodes} nodes x "
        f"{c.cores_per_node} cores x {c.gpus_per_node} GPUs ({c.cores:,} cores, {c.gpus:,} GPUs)",
        f"rates: {plan.rates.source} ({plan.rates.measured_on})",
        "",
        "| step | audio-h | samples | on | core-h | GPU-h | written | wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in plan.rows:
        lines.append(
            f"| {r.step} | {_num(r.audio_hours)} | {_num(r.samples)} | {r.resource} | "
            f"{_num(r.core_hours)} | {_num(r.gpu_hours)} | {_bytes(r.bytes_written)} | "
            f"{_duration(r.wall_hours)} |"
        )
    wall = plan.total("wall_hours")
    lines.append(
        f"| total | | | | {_num(plan.total('core_hours'))} | {_num(plan.total('gpu_hours'))} | "
        f"{_bytes(plan.total('bytes_written'))} | {_duration(wall)} |"
    )
    b = plan.bottleneck
    lines += [
        "",
        f"bottleneck: {b.step} ({_duration(b.wall_hours)}, "
        f"{100 * b.wall_hours / wall:.0f} % of the wall time)"
        if wall > 0
        else "bottleneck: none (no work)",
        "model: steps in sequence, each on the whole cluster; GPU rates used where measured "
        "and the cluster has GPUs, CPU rates otherwise"
        + ("; train = 6 x params x tokens at the mixture's assumed MFU" if mix.train else ""),
    ]
    return "\n".join(lines)


@dataclass
class PlanConfig:
    """The `plan` step of a job spec (and `minmo plan`'s options)."""

    mix: str = "jobs/plan/minmo-paper.yaml"
    """The task mixture YAML (jobs/plan/*.yaml)."""
    rates: str = "bench/rates.json"
    """Measured per-step rates (bench/scale.py writes them)."""
    hours: float | None = None
    """Total audio-hours; default: the mixture's own."""
    nodes: int = 100
    """Nodes of the cluster planned for."""
    cores_per_node: int = 64
    gpus_per_node: int = 8
    storage_options: StorageOptions = storage_options_field()


def run_plan(config: PlanConfig) -> Plan:
    """Load the inputs a config names and plan; raises PlanError with the fix on bad input."""
    mix = load_mix(config.mix, config.storage_options)
    if config.hours is not None:
        mix = mix.scaled(config.hours)
    cluster = Cluster(config.nodes, config.cores_per_node, config.gpus_per_node)
    return make_plan(load_rates(config.rates, config.storage_options), mix, cluster)
