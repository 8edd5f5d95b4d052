"""Training job specs (jobs/train/<stage>.yaml): one dataclass, loaded from YAML with checks.

    stage: "1a"                      # 1a 1b 1c 2a 2b 3 4 (minmo.model.minmo.RECIPES)
    model: {size: tiny}              # or full, plus local weight paths
    init_from: "{build}/checkpoints/1a/final"   # the previous stage's export, optional
    steps: 20
    ...

Unknown keys, nested ones too, are a ConfigError naming the nearest valid one (as for the data
job specs); the fields are documented in their docstrings, which `minmo train --help` shows.
Command-line flags and a job's `train:` keys go over the spec's (CLI > YAML > defaults).

The build (and the spec itself) may be an object-store URI: `minmo train 1a.yaml --build
s3://bucket/build` streams the shards from the bucket and keeps checkpoints, metrics and the
export in `s3://bucket/build/checkpoints/1a` (staged locally, see minmo/train/store.py).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from minmo.config import (
    ConfigError,
    StorageOptions,
    check_keys,
    from_mapping,
    merge,
    storage_options_field,
)
from minmo.io.fs import LOCAL_SCHEMES, check_scheme, open_filesystem, uri_scheme
from minmo.model.minmo import RECIPES, SHARDS_OF_STAGE


@dataclass
class ModelSpec:
    """Which MinMo is trained, and where its pretrained parts come from."""

    size: str = "tiny"
    """tiny or full."""
    text_tokenizer: str | None = None
    """HF tokenizer directory; None: the built-in demo BPE."""
    llm_path: str | None = None
    """HF Qwen2 directory (Qwen2.5-7B-Instruct)."""
    sensevoice_dir: str | None = None
    """funasr SenseVoice model directory."""
    cosyvoice2_llm: str | None = None
    """CosyVoice 2 llm.pt."""


@dataclass
class TrainConfig:
    """One training stage (jobs/train/<stage>.yaml maps onto it one to one)."""

    stage: str
    """1a 1b 1c 2a 2b 3 4 (minmo.model.minmo.RECIPES)."""
    model: ModelSpec = field(default_factory=ModelSpec)
    """The model and its pretrained parts."""
    init_from: str | None = None
    """An earlier stage's export (`final/`); a path or URI."""
    steps: int = 100
    """Optimizer steps."""
    seed: int = 0
    """Seeds the initial weights (identical on every rank) and the data order."""
    shards: str | None = None
    """The stage's shard directory; default: DIR/shards/<the stage's shard dir> (its `train/`
    split when the stage was written with held-out splits); a path or URI."""
    valid: str | None = None
    """A held-out shard directory (e.g. "{build}/shards/stage1/valid") whose loss is logged as
    `valid_loss` every `valid_every` steps; None: no validation."""
    valid_every: int = 50
    """Steps between validation losses (and at the last step)."""
    valid_batches: int = 4
    """Batches per rank per validation: the same first batches of the valid set every time, so
    that successive losses compare."""
    storage_options: StorageOptions = storage_options_field()
    max_samples: int = 8
    """Samples per batch per rank."""
    max_audio_s: float = 120.0
    """Padded audio seconds per batch per rank."""
    max_tokens: int = 4096
    """Text + speech tokens per batch per rank."""
    packing: bool = False
    """Pack each batch's samples end to end into LLM rows of `max_tokens` positions, attention
    kept inside each sample (minmo/model/packing.py), instead of padding every sample to the
    longest; the batch's tokens then count as their sum against `max_tokens`. Losses are the
    unpadded run's (to float tolerance) on the same samples."""
    num_workers: int | str = 1
    """DataLoader workers per rank, or "auto": chosen after the first steps from the measured
    time to load a batch against the time of a step (minmo/train/workers.py), and logged."""
    lr: float = 1e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """The cosine schedule ends at lr * min_lr_ratio."""
    warmup_steps: int = 10
    """Linear warm-up from 0 to lr over this many steps, then the cosine schedule."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's betas."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    clip_norm: float = 1.0
    """Gradient norm clip."""
    parallel: str = "auto"
    """auto (ddp when world > 1), ddp, fsdp or none."""
    bf16: bool = True
    """Autocast on GPU only; CPU runs in fp32 for exactness."""
    activation_checkpointing: bool = False
    """Recompute the transformer blocks' activations in the backward pass: less memory, more
    compute."""
    compile: bool = False
    """torch.compile the LLM's (and voice LM's) decoder layers and the voice encoder's blocks,
    each in place, before DDP / FSDP2 wrap them (minmo/train/distributed.py)."""
    out: str | None = None
    """Checkpoint directory; default: DIR/checkpoints/<stage>; a path or URI."""
    staging: str | None = None
    """Local root under which an object-store `out` is written before each upload (and an
    object-store `init_from` downloaded): one folder per URI, emptied at start, removed at the
    end. Default: the system temp dir. Ranks on several nodes need a shared path here."""
    save_every: int = 50
    """Steps between checkpoints."""
    keep_last: int = 2
    """Checkpoints kept."""
    log_every: int = 1
    """Steps between metric lines."""
    peak_flops: float | None = None
    """Per device, e.g. 989e12 for an H100's dense bf16 (for MFU)."""
    tensorboard: bool = True
    """Also write the metrics as TensorBoard events (out/tensorboard/) beside metrics.jsonl, when
    tensorboard is installed."""

    def __post_init__(self) -> None:
        if self.stage not in RECIPES:
            raise ConfigError(f"stage {self.stage!r} unknown; expected one of {', '.join(RECIPES)}")
        if isinstance(self.model, dict):
            self.model = from_mapping(ModelSpec, self.model, "model")
        if self.model.size not in ("tiny", "full"):
            raise ConfigError(f"model.size must be tiny or full, got {self.model.size!r}")
        if self.parallel not in ("auto", "ddp", "fsdp", "none"):
            raise ConfigError(f"parallel must be auto, ddp, fsdp or none, got {self.parallel!r}")
        if self.staging is not None:
            check_scheme("minmo train", self.staging, LOCAL_SCHEMES)
            self.staging = _path(self.staging)
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        self.num_workers = _workers(self.num_workers)
        names = ("steps", "max_samples", "grad_accum", "save_every", "keep_last", "log_every")
        for name in (*names, "valid_every", "valid_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def locations(self, build: str) -> tuple[str, str, str | None]:
        """(the stage's shard directory, the checkpoint directory, init_from) for `build`.

        The shard directory is as named; whether a split stage's `train/` is meant is decided
        where the directory is read (minmo/train/data.py `training_dir`).

        Each is a local path (`file://` stripped) or an object-store URI; an object-store `out`
        or `init_from` goes through a local staging directory (minmo/train/store.py), because
        checkpoints, metrics and the export are written with local file I/O. A scheme the
        trainer cannot serve is an error naming it, never a relative directory named after it.
        """
        base = str(build).rstrip("/")
        shards = self.shards or f"{base}/shards/{SHARDS_OF_STAGE[self.stage]}"
        check_scheme("minmo train", shards)
        if self.valid:
            check_scheme("minmo train", self.valid)
        out = _path(self.out or f"{base}/checkpoints/{self.stage}")
        init_from = _path(self.init_from) if self.init_from else None
        return shards, out, init_from


def _workers(value: int | str) -> int | str:
    """num_workers as given in YAML or on the command line (where it arrives as text): a
    count >= 0, or "auto"."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ConfigError(f'num_workers must be a count >= 0 or "auto", got {value!r}')


def _path(uri: str) -> str:
    """`uri` checked: a local path as is (`file://` stripped), an object-store URI unchanged."""
    check_scheme("minmo train", uri)
    return uri[len("file://") :] if uri_scheme(uri) == "file" else uri


def _expand(value: Any, build: str) -> Any:
    if isinstance(value, str):
        return value.replace("{build}", build)
    if isinstance(value, dict):
        return {k: _expand(v, build) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, build) for v in value]
    return value


def load_train_config(path: str | Path, build: str, **overrides: Any) -> TrainConfig:
    """A jobs/train/*.yaml file (a path or URI) -> TrainConfig; `{build}` expands to the build
    directory. A `storage_options` override also opens the spec's filesystem."""
    uri = check_scheme("minmo train", os.fspath(path))
    fs, fs_path = open_filesystem(uri, **(overrides.get("storage_options") or {}))
    with fs.open_input_stream(fs_path) as f:
        spec = yaml.safe_load(f.read().decode("utf-8")) or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a training spec is a mapping")
    spec = merge(spec, {k: v for k, v in overrides.items() if v is not None})
    spec.pop("name", None)
    spec.pop("description", None)
    check_keys(str(path), spec, [f.name for f in dataclasses.fields(TrainConfig)])
    if "stage" not in spec:
        raise ConfigError(f"{path}: 'stage' is required")
    spec["stage"] = str(spec["stage"])
    return from_mapping(TrainConfig, _expand(spec, build), str(path))
