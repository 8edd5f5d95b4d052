"""A stage's export loaded for evaluation, and greedy decoding of the LLM's text.

Owns: rebuilding the model an export came from (the export holds only the modules trained so
far; the frozen rest is rebuilt as the trainer built it: same ModelSpec, same seed, so a tiny
model's random-init LLM is the one the stage trained against), the same for a DCP step
checkpoint of a training run (`describe_step`, `load_step`), the check that the export has
the modules a task needs, and batched greedy decoding with a KV cache (transformers' `generate`
on `inputs_embeds`). Must not: read shards or compute metrics (minmo.eval.run does).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)

from minmo.model.batch import Batch
from minmo.model.llm import splice
from minmo.model.minmo import RECIPES, MinMo, SpecialIds
from minmo.tokens.text import load_text_tokenizer
from minmo.train.checkpoint import export_meta, load_export
from minmo.train.config import ModelSpec
from minmo.train.loop import build_model

# Which trained modules an export must hold (at least one of each tuple) for a task's figure
# to mean anything: text from speech needs a stage-1 module, speech tokens the output projector
# (stage 2 on), duplex decisions the predictor (stage 4). A stage-1 export has no predictor.
TEXT_MODULES = ("input_projector", "voice_encoder", "llm")
SPEECH_MODULES = ("output_projector",)
DUPLEX_MODULES = ("duplex",)


@dataclass
class LoadedCheckpoint:
    model: MinMo
    tokenizer: Any
    path: str
    stage: str
    modules: list[str]
    device: torch.device


def require_modules(
    export: str, stage: str, modules: list[str], any_of: tuple[str, ...], task: str, shards: str
) -> None:
    """ValueError naming what is missing when an export (of `stage`, holding `modules`) has
    none of `any_of`, the modules `task` needs."""
    if not set(any_of) & set(modules):
        raise ValueError(
            f"{export} (a stage-{stage} export of {', '.join(modules)}) has no trained "
            f"{' or '.join(any_of)}, which task {task!r} of {shards} needs: evaluate an export "
            "of a stage that trains it (or one initialised from such a stage)"
        )


def read_export(path: str | Path) -> dict[str, Any]:
    """The export.json of the export at `path`; a training output directory or one of its DCP
    step checkpoints is refused with the export to give instead (`minmo eval` checks for a
    step directory first)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path}: no such directory")
    if (path / "final" / "export.json").is_file():
        raise ValueError(f"{path} is a training output directory; give its export {path}/final")
    if is_step_checkpoint(path):
        # `minmo eval` takes step directories (minmo.eval.run.resolve); chat and duplex-sim
        # take exports only.
        raise ValueError(
            f"{path} is a DCP step checkpoint (trainable weights and optimizer state); this "
            f"command reads a stage's export: {path.parent}/final (minmo eval takes either)"
        )
    return export_meta(path)


def load_checkpoint(
    path: str | Path, spec: ModelSpec, seed: int, device: str | None = None
) -> LoadedCheckpoint:
    """The export at `path` in a full MinMo on `device` (default: cuda when present), eval mode.

    The model spec and seed recorded in the export's export.json win; `spec` and `seed` are for
    exports written before they were recorded."""
    path = Path(path)
    meta = read_export(path)
    spec, seed = spec_of(meta, spec, seed)
    tokenizer = load_text_tokenizer(spec.text_tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the trainer's order: seed, then build (minmo.train.loop)
        model = build_model(spec, tokenizer)
    modules = load_export(path, model)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(target).eval()
    return LoadedCheckpoint(model, tokenizer, str(path), str(meta["stage"]), modules, target)


def spec_of(meta: dict[str, Any], spec: ModelSpec, seed: int) -> tuple[ModelSpec, int]:
    """The model spec and seed an export.json records; `spec` and `seed` where it does not."""
    if "model" in meta:
        known = {f.name for f in fields(ModelSpec)}
        spec = ModelSpec(**{k: v for k, v in meta["model"].items() if k in known})
    return spec, int(meta.get("seed", seed))


def is_step_checkpoint(path: str | Path) -> bool:
    """A DCP step directory the trainer wrote (`<out>/step-00000012/`, minmo.train.checkpoint)."""
    return (Path(path) / ".metadata").is_file()


@dataclass
class StepCheckpoint:
    """What a DCP step directory holds and what rebuilds the rest of the model.

    The step directory holds only the weights its stage trains (`ignore_frozen_params`) and
    records neither the model spec, the seed, the stage nor the export the run started from.
    The run's own `<out>/final/export.json` (`record`, present once the run has finished)
    records all four, and its modules are the inherited ones as the run saw them (frozen, so
    unchanged by training): they are loaded first and the step's weights over them. Without
    it, the spec and seed fall back to the command line's (as for an old export), the stage is
    read off the trained modules, and modules inherited from an earlier stage stay as built."""

    path: Path
    step: int
    stage: str
    trained: list[str]
    """Top-level modules whose weights the step directory holds."""
    record: Path | None
    """The run's export whose export.json and inherited modules are used, when there is one."""

    @property
    def modules(self) -> list[str]:
        inherited = export_meta(self.record)["modules"] if self.record else []
        return sorted(set(self.trained) | set(inherited))


def _stage_of(trained: set[str]) -> str:
    """The stage(s) whose recipe trains exactly `trained` (2b and 3 share one: "2b/3")."""
    stages = [s for s, recipe in RECIPES.items() if {m.split(".")[0] for m in recipe} == trained]
    if not stages:
        raise ValueError(f"no stage trains exactly {sorted(trained)}")
    return "/".join(stages)


def describe_step(path: str | Path, record: Path | None) -> StepCheckpoint:
    """The step directory at `path` (local), with `record` the run's `final/` export when it
    exists (the caller fetches it from an object store). The step count is the trainer's own
    `rank0.pt` entry; the trained modules are the DCP metadata's keys."""
    path = Path(path)
    keys = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    trained = sorted({k.split(".")[1] for k in keys if k.startswith("model.")})
    if not trained:
        raise ValueError(f"{path}: a DCP checkpoint without model weights")
    extras = torch.load(path / "rank0.pt", weights_only=False)  # the trainer's own pickle
    if record is not None:
        stage = str(export_meta(record)["stage"])
        recipe = {m.split(".")[0] for m in RECIPES.get(stage, ())}
        if recipe != set(trained):
            raise ValueError(
                f"{path} holds {', '.join(trained)} but {record}/export.json records stage "
                f"{stage}, which trains {', '.join(sorted(recipe))}: the export is of another run"
            )
    else:
        stage = _stage_of(set(trained))
    return StepCheckpoint(path, int(extras["step"]), stage, trained, record)


def load_step(
    step: StepCheckpoint, spec: ModelSpec, seed: int, device: str | None = None
) -> LoadedCheckpoint:
    """The model at `step`: built as the trainer built it, the run's export loaded (when there
    is one), then the step's weights read through torch.distributed.checkpoint with the
    state-dict API the trainer saved them with, on `device`, eval mode."""
    if step.record is not None:
        spec, seed = spec_of(export_meta(step.record), spec, seed)
    tokenizer = load_text_tokenizer(spec.text_tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(spec, tokenizer)
    if step.record is not None:
        load_export(step.record, model)
    saved = {
        k[len("model.") :]
        for k in dcp.FileSystemReader(str(step.path)).read_metadata().state_dict_metadata
        if k.startswith("model.")
    }
    full = get_model_state_dict(model)
    if missing := sorted(saved - set(full)):
        raise ValueError(
            f"{step.path}: weights {missing[:3]}... do not fit the model {spec}: give the "
            "run's --model options"
        )
    state = {"model": {k: v for k, v in full.items() if k in saved}}
    dcp.load(state, checkpoint_id=str(step.path))
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(target).eval()
    return LoadedCheckpoint(model, tokenizer, str(step.path), step.stage, step.modules, target)


def prompt_embeds(model: MinMo, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, W, H) embeddings and (B, W) attention mask of each sample's prompt, left-padded.

    The prompt is each sample's text before `target_start` (the chat up to
    `<|im_start|>assistant\\n`) with its speech spliced in exactly as in training
    (`minmo.model.llm.splice`); rows are then left-aligned to the right (left padding), so every
    sample's next token follows its own last prompt position. Shared by batched greedy decoding
    and the streaming reply (minmo.eval.stream), so both start from the same prompt."""
    special: SpecialIds = model.special
    speech = speech_lengths = None
    if batch.waves is not None and batch.wave_lengths is not None:
        frames, lengths = model.voice_encoder(batch.waves, batch.wave_lengths)
        speech, speech_lengths = model.input_projector(frames, lengths)
    embedding = model.llm.get_input_embeddings()
    prompt_lengths = torch.minimum(batch.target_start, batch.input_lengths)
    sp = splice(
        embedding(batch.input_ids),
        batch.input_ids,
        prompt_lengths,
        prompt_lengths,
        speech,
        speech_lengths,
        special.speech_start,
    )
    lengths = sp.attention_mask.sum(dim=1)
    width = int(lengths.max())
    embeds = sp.embeds.new_zeros(batch.size, width, sp.embeds.shape[-1])
    mask = torch.zeros(batch.size, width, dtype=torch.long, device=embeds.device)
    for b, n in enumerate(lengths.tolist()):
        embeds[b, width - n :] = sp.embeds[b, :n]
        mask[b, width - n :] = 1
    return embeds, mask


@torch.no_grad()
def greedy_decode(model: MinMo, batch: Batch, max_new_tokens: int) -> list[list[int]]:
    """The assistant's text ids per sample, greedy, up to (not including) <|im_end|>.

    From `prompt_embeds` (left padding); `generate` derives position ids from the attention
    mask as training's right padding does."""
    special: SpecialIds = model.special
    embeds, mask = prompt_embeds(model, batch)
    out = model.llm.generate(
        inputs_embeds=embeds,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=special.turn_end,
        pad_token_id=special.turn_end,
    )
    # Generating from embeddings alone, `generate` returns the new tokens only.
    return [
        row[: row.index(special.turn_end)] if special.turn_end in row else row
        for row in out.tolist()
    ]
