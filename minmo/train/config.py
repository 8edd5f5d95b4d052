"""Training job specs (jobs/train/<stage>.yaml): one dataclass, loaded from YAML with checks.

    stage: "1a"                      # 1a 1b 1c 2a 2b 3 4 (minmo.model.minmo.RECIPES)
    model: {size: tiny}              # or full, plus local weight paths
    init_from: "{build}/checkpoints/1a/final"   # the previous stage's export, optional
    steps: 20
    ...

Unknown keys are an error naming the nearest valid one (as for the data job specs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from minmo.jobs import JobSpecError, check_keys


@dataclass
class ModelSpec:
    size: str = "tiny"  # tiny | full
    text_tokenizer: str | None = None  # HF tokenizer dir; None: the built-in demo BPE
    llm_path: str | None = None  # HF Qwen2 directory (Qwen2.5-7B-Instruct)
    sensevoice_dir: str | None = None  # funasr SenseVoice model directory
    cosyvoice2_llm: str | None = None  # CosyVoice 2 llm.pt


@dataclass
class TrainConfig:
    stage: str
    model: ModelSpec = field(default_factory=ModelSpec)
    init_from: str | None = None  # a checkpoint directory (an earlier stage's step-N or final)
    steps: int = 100
    seed: int = 0
    # data
    shards: str | None = None  # default: DIR/shards/<the stage's shard dir>
    max_samples: int = 8  # per batch per rank
    max_audio_s: float = 120.0  # padded audio seconds per batch per rank
    max_tokens: int = 4096  # text + speech tokens per batch per rank
    num_workers: int = 1
    # optimisation
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_accum: int = 1
    clip_norm: float = 1.0
    # distribution and precision
    parallel: str = "auto"  # auto (ddp when world > 1) | ddp | fsdp | none
    bf16: bool = True  # autocast on GPU only; CPU runs in fp32 for exactness
    activation_checkpointing: bool = False
    # checkpoints and logs
    out: str | None = None  # default: DIR/checkpoints/<stage>
    save_every: int = 50
    keep_last: int = 2
    log_every: int = 1
    peak_flops: float | None = None  # per device, e.g. 989e12 for an H100's dense bf16
    tensorboard: bool = True

    def __post_init__(self) -> None:
        from minmo.model.minmo import RECIPES

        if self.stage not in RECIPES:
            raise JobSpecError(
                f"stage {self.stage!r} unknown; expected one of {', '.join(RECIPES)}"
            )
        if isinstance(self.model, dict):
            check_keys("model", self.model, [f.name for f in dataclasses.fields(ModelSpec)])
            self.model = ModelSpec(**self.model)
        if self.model.size not in ("tiny", "full"):
            raise JobSpecError(f"model.size must be tiny or full, got {self.model.size!r}")
        if self.parallel not in ("auto", "ddp", "fsdp", "none"):
            raise JobSpecError(f"parallel must be auto, ddp, fsdp or none, got {self.parallel!r}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        for name in ("steps", "max_samples", "grad_accum", "save_every", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise JobSpecError(f"{name} must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _expand(value: Any, build: str) -> Any:
    if isinstance(value, str):
        return value.replace("{build}", build)
    if isinstance(value, dict):
        return {k: _expand(v, build) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, build) for v in value]
    return value


def load_train_config(path: str | Path, build: str, **overrides: Any) -> TrainConfig:
    """A jobs/train/*.yaml file -> TrainConfig; `{build}` expands to the build directory."""
    spec = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(spec, dict):
        raise JobSpecError(f"{path}: a training spec is a mapping")
    spec = {**spec, **{k: v for k, v in overrides.items() if v is not None}}
    spec.pop("name", None)
    spec.pop("description", None)
    check_keys(str(path), spec, [f.name for f in dataclasses.fields(TrainConfig)])
    if "stage" not in spec:
        raise JobSpecError(f"{path}: 'stage' is required")
    spec["stage"] = str(spec["stage"])
    return TrainConfig(**_expand(spec, build))
