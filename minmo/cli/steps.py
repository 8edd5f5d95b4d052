"""THE step table: name -> StepSpec, used by both `minmo <step>` and `minmo run JOB`.

A step's YAML section (and its command line) is the fields of two dataclasses: its `inputs`
(what the step reads or how it is invoked: `src`, `dir`, `--rebuild`…, declared here) and its
`config` (how the step computes, declared beside the step). Flags are generated from both
(minmo/cli/flags.py); `minmo run` checks a section against the same fields.

Config classes and run functions are named as "module:name" and imported with importlib only
when a step is chosen: importing every step pulls in torch and Ray (~9 s), which `minmo --help`
and `minmo verify` should not pay. The run functions live in minmo/cli/entries.py (light steps)
and minmo/cli/torch_entries.py (steps that import torch), each with the uniform signature
`run(build, inputs, config, progress)`: it prints the step's summary and returns its result; a
failure the user acts on is a StepFailed carrying the exit code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from minmo.config import StorageOptions, storage_options_field
from minmo.io.fs import LOCAL_SCHEMES, STORE_SCHEMES


@dataclass
class NoInputs:
    """A step that reads only its build and its config."""


@dataclass
class DemoDataConfig:
    """The embedded demo corpus (espeak-ng, seeded)."""

    out: str | None = None
    """Output directory, local or a URI; in a job spec the default is {build}/demo-src."""
    seed: int = 0
    """The same seed gives byte-identical files."""
    annotator: bool = True
    """Also write a tiny random-init SenseVoiceSmall directory at OUT/models/sensevoice-tiny for
    the demo's `annotate` step (local OUT only; its labels are noise)."""
    storage_options: StorageOptions = storage_options_field()


@dataclass
class IngestInputs:
    """What `minmo ingest` reads, beside its IngestConfig."""

    src: list[str] = field(default_factory=list)
    """Directories, globs, manifests (jsonl/csv/parquet), Kaldi or Lhotse dirs; local or a URI."""
    reindex: bool = False
    """Rebuild the build's commit index (which sources and contents it holds) from its committed
    tables, e.g. after a run said the index is damaged or missing; with SRC, then ingest."""


@dataclass
class ShardsInputs:
    """How `minmo shards` treats shards already written."""

    rebuild: bool = False
    """Delete the stage's shards and write them anew (said on stderr first); without it a run
    appends a generation for new data and rebuilds only when the config changed."""


@dataclass
class VerifyConfig:
    """What `minmo verify` checks."""

    dir: str | None = None
    """DIR/shards (all stages) or one stage directory; local or a URI. In a job spec the default
    is {build}/shards."""
    storage_options: StorageOptions = storage_options_field()


@dataclass
class StatsInputs:
    """What `minmo stats` summarises, beside its StatsConfig."""

    inputs: list[str] = field(default_factory=list)
    """A build directory, tables or shard directories (or an earlier stats.json); two of them to
    compare A against B. In a job spec the default is the build."""


@dataclass
class TrainInputs:
    """Which training specs run and where, beside the TrainConfig fields they override."""

    stages: list[str] = field(default_factory=list)
    """Training specs (jobs/train/<stage>.yaml, a path or URI), trained in order; their own
    fields are overridden by the ones given here (command line > spec > defaults)."""
    ray: bool = False
    """Run on Ray Train's TorchTrainer."""
    workers: int = 2
    """Ray Train workers (with --ray)."""
    gpu: bool = False
    """One GPU per Ray Train worker (with --ray)."""


@dataclass
class EvalInputs:
    """Which of a build's exports a job's `eval` step scores, beside its EvalConfig."""

    stages: list[str] = field(default_factory=list)
    """In a job: training stages (1b, 4...) whose exports are scored, each
    {build}/checkpoints/<stage>/final on {build}/shards/<its shard stage>/<split> ->
    {build}/eval/<stage>/eval.json, where `minmo stats` finds it. Without it: CHECKPOINT."""
    split: str = "test"
    """The held-out split the `stages` are scored on (test or valid)."""


@dataclass
class DoctorConfig:
    """What `minmo doctor` does with the inconsistencies it lists."""

    fix: bool = False
    """Move every damaged or uncommitted file aside (into DIR/_state/doctor/<time>/, with a
    report.json; nothing is deleted) and clear the commits of the damaged units, so that
    rerunning the steps redoes exactly those units."""
    storage_options: StorageOptions = storage_options_field()


@dataclass
class ModelInfoConfig:
    """Which MinMo `minmo model-info` counts."""

    size: str = "full"
    """tiny or full (built on the meta device: no memory)."""


class StepFailed(RuntimeError):
    """A step ended in a way the user acts on: the message says what, `exit_code` is what
    `minmo <step>` returns (a job stops there)."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Alias:
    """A historic flag whose value is converted onto a field (`--max-mb 500` -> max_bytes)."""

    flag: str
    dest: str
    convert: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class StepSpec:
    """One step: its config, its run function, and how its command line looks."""

    config: str
    """"module:Class" of the config dataclass the section's other keys build."""
    run: str
    """"module:function" with the signature `run(build, inputs, config, progress)`."""
    help: str
    inputs: type = NoInputs
    """The section keys that are not config fields (positional or invocation flags)."""
    object_store: bool = True
    """Whether the step reaches the build and every path of its section through pyarrow.fs, so
    that object-store URIs work; without it, only local paths are accepted."""
    build: bool = True
    """Whether the step works on a build directory (`--build`, required on the command line)."""
    positional: tuple[str, ...] = ()
    """Fields given as positional arguments on the command line."""
    paths: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Each path argument and the URI schemes the step serves there (a local path always works;
    model and tokenizer files are read by libraries that take local paths only)."""
    source_root: bool = False
    """Whether the command takes `--source-root OLD=NEW` (sources moved since ingest)."""
    choices: dict[str, str] = field(default_factory=dict)
    """field -> "module:NAME" of the valid values, taken from the module that checks them."""
    aliases: tuple[Alias, ...] = ()
    flag_aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """field -> further flag names for it (a historic spelling)."""
    build_config: bool = True
    """False: the run function gets the section's config keys as a mapping (train: they
    override each training spec, which holds the required fields)."""
    guarded: bool = True
    """Whether a run holds the step's lock on the build and first checks the build for damaged
    committed files (minmo/cli/guard.py); off only for `doctor`, which repairs them."""

    def config_class(self) -> type:
        return resolve(self.config)

    def run_function(self) -> Callable[..., int]:
        return resolve(self.run)


def resolve(name: str) -> Any:
    """The object "module:attr" names, imported now (see the module docstring for why late)."""
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def _stage_flag(value: str) -> list[str]:
    return ["all"] if value == "all" else [f"stage{value}"]


def _megabytes(value: str) -> int:
    return int(value) * 1_000_000


LIGHT = "minmo.cli.entries"
TORCH = "minmo.cli.torch_entries"

STEPS: dict[str, StepSpec] = {
    "demo-data": StepSpec(
        config="minmo.cli.steps:DemoDataConfig",
        run=f"{LIGHT}:demo_data",
        help="synthesise the demo corpus with espeak-ng",
        build=False,
        positional=("out",),
        paths={"out": STORE_SCHEMES},
    ),
    "ingest": StepSpec(
        config="pipelines.ingest.config:IngestConfig",
        run=f"{LIGHT}:ingest",
        help="raw audio -> recordings/segments/quarantine tables",
        inputs=IngestInputs,
        positional=("src",),
        paths={"src": STORE_SCHEMES, "build": STORE_SCHEMES},
        source_root=True,
        choices={"format": "pipelines.ingest.sources:FORMATS"},
    ),
    "synthesize": StepSpec(
        config="pipelines.synthesize:SynthesizeConfig",
        run=f"{LIGHT}:synthesize",
        help="text dialogues -> spoken dialogues (stage 3) and duplex calls",
        paths={"build": STORE_SCHEMES, "dialogues": STORE_SCHEMES, "responses": STORE_SCHEMES},
        source_root=True,
        choices={"backend": "minmo.tts.registry:BACKENDS"},
    ),
    "diarize": StepSpec(
        config="pipelines.diarize:DiarizeConfig",
        run=f"{LIGHT}:diarize",
        help="conversation recordings -> speaker turns table",
        paths={"build": STORE_SCHEMES, "diarization_model": LOCAL_SCHEMES},
        source_root=True,
        choices={"backend": "pipelines.diarize:BACKENDS"},
        flag_aliases={"tasks": ("--task",)},
    ),
    "annotate": StepSpec(
        config="pipelines.annotate:AnnotateConfig",
        run=f"{LIGHT}:annotate",
        help="segments -> annotations table: SenseVoice pseudo-labels (text, language, emotion, "
        "events)",
        paths={"build": STORE_SCHEMES, "model": LOCAL_SCHEMES},
        source_root=True,
    ),
    "label-turns": StepSpec(
        config="pipelines.label_turns:LabelTurnsConfig",
        run=f"{LIGHT}:label_turns",
        help="speaker turns -> duplex events and frame labels (2 per conversation)",
        paths={"build": STORE_SCHEMES},
    ),
    "shards": StepSpec(
        config="pipelines.shards.step:ShardsConfig",
        run=f"{TORCH}:shards",
        help="tables -> per-stage WebDataset shards + index.json",
        inputs=ShardsInputs,
        paths={
            "build": STORE_SCHEMES,
            "text_tokenizer": LOCAL_SCHEMES,
            "speech_tokenizer": LOCAL_SCHEMES,
        },
        source_root=True,
        aliases=(
            Alias(
                "--stage", "stages", _stage_flag, "one stage, or all", ("1", "2", "3", "4", "all")
            ),
            Alias("--max-mb", "max_bytes", _megabytes, "MB per shard (sets max_bytes)"),
        ),
    ),
    "verify": StepSpec(
        config="minmo.cli.steps:VerifyConfig",
        run=f"{LIGHT}:verify",
        help="check shards against index.json (exit 1 when bad)",
        build=False,
        positional=("dir",),
        paths={"dir": STORE_SCHEMES},
    ),
    "doctor": StepSpec(
        config="minmo.cli.steps:DoctorConfig",
        run=f"{LIGHT}:doctor",
        help="list every inconsistency of a build (parts, markers, shards); --fix moves the "
        "damaged files aside and clears their commits (exit 1 when damage remains)",
        paths={"build": STORE_SCHEMES},
        guarded=False,
    ),
    "train": StepSpec(
        config="minmo.train.config:TrainConfig",
        run=f"{TORCH}:train",
        help="train MinMo stages from their shards (torchrun-ready)",
        inputs=TrainInputs,
        positional=("stages",),
        paths={
            "stages": STORE_SCHEMES,
            "build": STORE_SCHEMES,
            "out": STORE_SCHEMES,
            "staging": LOCAL_SCHEMES,
        },
        build_config=False,
    ),
    "stats": StepSpec(
        config="pipelines.stats.compute:StatsConfig",
        run=f"{LIGHT}:stats",
        help="statistics + HTML report of a build (or of two, compared: minmo stats A B)",
        inputs=StatsInputs,
        build=False,
        positional=("inputs",),
        paths={"inputs": STORE_SCHEMES, "out": STORE_SCHEMES},
    ),
    # Reads only its mixture and rates files (through pyarrow.fs), never the build.
    "plan": StepSpec(
        config="minmo.plan:PlanConfig",
        run=f"{LIGHT}:plan",
        help="capacity plan: core-hours, GPU-hours, bytes and wall time per step on a cluster",
        build=False,
        paths={"mix": STORE_SCHEMES, "rates": STORE_SCHEMES},
    ),
    "eval": StepSpec(
        config="minmo.eval.run:EvalConfig",
        run=f"{TORCH}:evaluate",
        help="score a stage's export or a training step directory on a shard directory "
        "(WER/CER, accuracy, BLEU, duplex F1@K...) -> eval.json",
        inputs=EvalInputs,
        build=False,
        positional=("checkpoint",),
        paths={"checkpoint": STORE_SCHEMES, "shards": STORE_SCHEMES, "out": STORE_SCHEMES},
    ),
    "chat": StepSpec(
        config="minmo.eval.chat:ChatConfig",
        run=f"{TORCH}:chat",
        help="a spoken reply to AUDIO from an export, streamed (text, then 15 speech tokens per "
        "5 text tokens), with the latency terms beside the paper's",
        build=False,
        positional=("checkpoint", "audio"),
        paths={
            "checkpoint": LOCAL_SCHEMES,
            "audio": LOCAL_SCHEMES,
            "out": LOCAL_SCHEMES,
            "cosyvoice2": LOCAL_SCHEMES,
        },
    ),
    "duplex-sim": StepSpec(
        config="minmo.eval.duplex_sim:DuplexSimConfig",
        run=f"{TORCH}:duplex_sim",
        help="stream a two-channel call through the duplex predictor in 120 ms steps: "
        "decisions with times, F1@K against the call's labels, response latency",
        build=False,
        positional=("checkpoint", "call"),
        paths={"checkpoint": LOCAL_SCHEMES, "call": LOCAL_SCHEMES, "out": LOCAL_SCHEMES},
    ),
    "model-info": StepSpec(
        config="minmo.cli.steps:ModelInfoConfig",
        run=f"{TORCH}:model_info",
        help="MinMo's parameters per module vs the paper",
        build=False,
        choices={"size": "minmo.cli.steps:MODEL_SIZES"},
    ),
}

MODEL_SIZES = ("tiny", "full")
