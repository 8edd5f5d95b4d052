"""Checkpoints with torch.distributed.checkpoint (DCP): save, resume, keep the last K, export.

A checkpoint directory `<out>/step-00000040/` holds the DCP files of the trainable weights and
the optimizer state (sharded as the model is: FSDP2 ranks write their own shards), plus one
`rank<r>.pt` per rank with what differs per rank: its data position, its RNG states, the
scheduler and the step. It is written under a temp name and renamed by rank 0 after every rank
has finished, so a crash mid-save never leaves a directory that looks complete; `latest` points
at the newest complete one.

The final export (`<out>/final/`) holds each module trained so far as `<module>.pt` (full
tensors, loadable without torch.distributed) and the LLM's LoRA adapters through peft's
`save_pretrained` (`final/lora/`), with `export.json` naming them, the stage, and what rebuilds
the frozen rest (the model spec and the seed of the random init); the next stage's `init_from`
and `minmo eval` read it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from minmo.io.atomic import sweep_temp_files, write_text_atomic

LATEST = "latest"


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    def __init__(self, out_dir: str | Path, keep_last: int, rank: int) -> None:
        self.out = Path(out_dir)
        self.keep_last = keep_last
        self.rank = rank
        if rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """What a killed run left in `out`: a half-saved `.step-*.tmp` folder (a run is the only
        writer of its `out`, and no rank saves before every rank has built its Checkpointer)
        and a dead writer's temp file of `latest` or the metrics (minmo/io/atomic.py)."""
        for stale in self.out.glob(".step-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        sweep_temp_files(pafs.LocalFileSystem(), str(self.out))

    @staticmethod
    def _options() -> StateDictOptions:
        # Only what this stage trains: frozen weights come from the base model / init_from.
        return StateDictOptions(ignore_frozen_params=True)

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        per_rank: dict[str, Any],
    ) -> Path:
        final = self.out / f"step-{step:08d}"
        tmp = self.out / f".step-{step:08d}.tmp"
        if self.rank == 0 and tmp.exists():
            shutil.rmtree(tmp)
        _barrier()
        state = {
            "model": get_model_state_dict(model, options=self._options()),
            "optim": get_optimizer_state_dict(model, optimizer, options=self._options()),
        }
        dcp.save(state, checkpoint_id=str(tmp))
        torch.save({"step": step, "rng": rng_state(), **per_rank}, tmp / f"rank{self.rank}.pt")
        _barrier()
        if self.rank == 0:
            if final.exists():
                shutil.rmtree(final)
            # A directory commit, not `write_bytes_atomic`: every rank wrote its own files
            # into `tmp`, and only the whole folder renamed at once is complete.
            os.replace(tmp, final)
            write_text_atomic(pafs.LocalFileSystem(), str(self.out / LATEST), final.name + "\n")
            self._prune()
        _barrier()
        return final

    def _prune(self) -> None:
        done = sorted(p for p in self.out.glob("step-*") if p.is_dir())
        for old in done[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.out.glob(".step-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)

    def latest(self) -> Path | None:
        pointer = self.out / LATEST
        if not pointer.is_file():
            return None
        path = self.out / pointer.read_text().strip()
        return path if path.is_dir() else None

    def load(
        self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> dict[str, Any]:
        """Restore weights and optimizer in place; returns this rank's saved extras."""
        state = {
            "model": get_model_state_dict(model, options=self._options()),
            "optim": get_optimizer_state_dict(model, optimizer, options=self._options()),
        }
        dcp.load(state, checkpoint_id=str(path))  # fails on any trainable key the files lack
        # strict=False: the frozen weights are absent on purpose (they come from the base model).
        set_model_state_dict(
            model,
            state["model"],
            options=StateDictOptions(ignore_frozen_params=True, strict=False),
        )
        set_optimizer_state_dict(model, optimizer, state["optim"], options=self._options())
        own = path / f"rank{self.rank}.pt"
        if not own.is_file():
            raise FileNotFoundError(
                f"{own} missing: the checkpoint was written by a different number of ranks"
            )
        extras = torch.load(own, weights_only=False)
        set_rng_state(extras["rng"])
        return extras


def trained_modules(stage_modules: tuple[str, ...], inherited: list[str]) -> list[str]:
    return sorted({m.split(".")[0] for m in stage_modules} | set(inherited))


def export(
    out_dir: str | Path,
    model: Any,
    modules: list[str],
    stage: str,
    rank: int,
    meta: dict[str, Any] | None = None,
) -> Path | None:
    """Write `final/`: full tensors of `modules` (gathered from shards on every rank), LoRA
    adapters through peft, and `export.json` ({"stage", "modules"} + `meta`: the trainer adds
    "model" (its ModelSpec) and "seed", without which the frozen modules, random-init in a tiny
    model, could not be rebuilt). Every rank must call it (gathering is collective)."""
    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if rank != 0:
        _barrier()
        return None
    final = Path(out_dir) / "final"
    tmp = Path(out_dir) / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for module in modules:
        prefix = f"{module}."
        tensors = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
        torch.save(tensors, tmp / f"{module}.pt")
    inner = getattr(model, "module", model)
    if "llm" in modules:
        inner.llm.save_pretrained(str(tmp / "lora"))
        _sort_adapter_config(tmp / "lora" / "adapter_config.json")
    described = {**(meta or {}), "stage": stage, "modules": modules}
    (tmp / "export.json").write_text(json.dumps(described, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a directory commit, as in `Checkpointer.save`
    _barrier()
    return final


def _sort_adapter_config(path: Path) -> None:
    """peft writes `target_modules` from a set, in the process's string-hash order, so two
    exports of the same weights differed in adapter_config.json: sorted, the export's bytes
    depend on the weights only (eval's fingerprint keeps its figures; builds diff clean)."""
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def export_meta(path: str | Path) -> dict[str, Any]:
    """An export's `export.json` (FileNotFoundError naming it when `path` is no export)."""
    meta_path = Path(path) / "export.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path} missing: not a stage's exported 'final' directory (a training run "
            "writes it at <out>/final/ after its last step)"
        )
    return json.loads(meta_path.read_text())


def load_export(path: str | Path, model: Any) -> list[str]:
    """Load an export's modules into an unwrapped MinMo; returns the module names loaded."""
    path = Path(path)
    modules = export_meta(path)["modules"]
    for module in modules:
        tensors = torch.load(path / f"{module}.pt", weights_only=True)
        missing, unexpected = getattr(model, module).load_state_dict(tensors, strict=False)
        if unexpected or (module != "llm" and missing):
            raise ValueError(
                f"{path}: {module}.pt does not fit: missing {missing}, unexpected {unexpected}"
            )
    return modules
