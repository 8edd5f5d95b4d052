"""Process group set-up and model wrapping: single process, DDP, or FSDP2.

`init_distributed` joins whatever launched us: torchrun's env (RANK, WORLD_SIZE, LOCAL_RANK),
Ray Train (which has already initialised the process group), or nothing (one process). Backend:
NCCL on GPUs, gloo on CPUs.

FSDP2 (`fully_shard`) wraps every transformer block first (the LLM's and the voice LM's decoder
layers, the encoder's blocks, the projectors' and predictor's layers), then the root MinMo
module, whose forward does every embedding lookup (see minmo/model/minmo.py), so the root's
all-gather covers the embeddings. Frozen and trainable parameters may share a block (LoRA):
FSDP2 shards per parameter, so that is fine.

The order is torchtitan's: activation checkpointing, then torch.compile, then DDP / FSDP2.
Compilation is per block (`compiled_blocks`), in place (`nn.Module.compile`), so the modules
FSDP2 wraps are the same objects, each running its compiled forward.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    cuda = torch.cuda.is_available()
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
    else:
        rank, world, local = 0, 1, 0
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return DistInfo(rank, world, local, device)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if info.world > 1:
        dist.barrier()


def all_min(value: int, info: DistInfo) -> int:
    """The minimum of `value` over ranks (every rank must call it)."""
    if info.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.long, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def all_sum(values: list[float], info: DistInfo) -> list[float]:
    if info.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP2 shards one by one (and activation checkpointing wraps)."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    block_types: tuple[type, ...] = (Qwen2DecoderLayer, nn.TransformerEncoderLayer)
    try:
        from funasr.models.sense_voice.model import EncoderLayerSANM

        block_types = (*block_types, EncoderLayerSANM)
    except ImportError:  # funasr's layout changed: the encoder is then sharded as one unit
        pass
    return [m for m in model.modules() if isinstance(m, block_types)]


def compiled_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks `compile: true` compiles: the Qwen2 decoder layers (the LLM's and the voice
    LM's) and the voice encoder's SAN-M blocks. The projectors' and the duplex predictor's
    `nn.TransformerEncoderLayer`s stay eager: frozen and in eval mode they take PyTorch's fused
    fast path (`aten._transformer_encoder_layer_fwd`), whose fake kernel inductor fails on
    (torch 2.14: "expected size 10==10, stride 64==1"), and they are one layer each."""
    return [m for m in transformer_blocks(model) if not isinstance(m, nn.TransformerEncoderLayer)]


def compile_blocks(model: nn.Module, backend: str = "inductor") -> int:
    """torch.compile each of `compiled_blocks(model)` in place; returns how many. A block that
    activation checkpointing wrapped is compiled with its wrapper, so that the recomputation is
    traced too (torchtitan compiles its checkpointed blocks the same way). Compilation happens
    at a block's first call (the first two batch shapes compile: the second marks the sequence
    length dynamic), so a stage's frozen, unused modules cost nothing."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    wrappers = {
        id(m._checkpoint_wrapped_module): m
        for m in model.modules()
        if isinstance(m, CheckpointWrapper)
    }
    blocks = compiled_blocks(model)
    for block in blocks:
        wrappers.get(id(block), block).compile(backend=backend)
    return len(blocks)


def resolve_mode(requested: str, info: DistInfo) -> str:
    if requested == "auto":
        return "ddp" if info.world > 1 else "none"
    if requested in ("ddp", "fsdp") and info.world == 1 and requested == "ddp":
        return "none"
    return requested


def wrap_model(
    model: nn.Module,
    mode: str,
    info: DistInfo,
    checkpointing: bool,
    compile_backend: str | None = None,
) -> nn.Module:
    """`model` on the device, with activation checkpointing, compiled blocks (`compile_backend`:
    a torch.compile backend, None: eager) and DDP / FSDP2 applied in that order."""
    model.to(info.device)
    if checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            apply_activation_checkpointing,
        )

        blocks = set(transformer_blocks(model))
        apply_activation_checkpointing(model, check_fn=lambda m: m in blocks)
    if compile_backend is not None:
        compile_blocks(model, compile_backend)
    if mode == "none":
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None
        )
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in transformer_blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"unknown parallel mode {mode!r}")
