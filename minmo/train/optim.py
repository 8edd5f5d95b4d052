"""The optimizer: AdamW over the trainable parameters, with the fastest implementation they allow.

PyTorch's AdamW has three implementations with the same arithmetic: a Python loop over the
parameters (the default off CUDA), `foreach` (one multi-tensor kernel per operation: far fewer
launches), and `fused` (the whole update in one kernel; CUDA, and only when every parameter is a
floating-point CUDA tensor). `adamw_implementation` picks fused where it can run, foreach
otherwise, and says which in the trainer's log. FSDP2's DTensor parameters take either.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from minmo.train.config import TrainConfig


def adamw_implementation(params: Iterable[torch.Tensor]) -> str:
    """Which AdamW implementation `params` allow: "fused" when every parameter lives on a CUDA
    device in a floating-point dtype (what the fused kernel requires), else "foreach" (also for
    no parameters at all)."""
    params = list(params)
    if params and all(p.device.type == "cuda" and torch.is_floating_point(p) for p in params):
        return "fused"
    return "foreach"


def build_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `params` (the trainable ones only) with the spec's lr, betas and weight decay,
    in the implementation `adamw_implementation` picks."""
    implementation = adamw_implementation(params)
    return torch.optim.AdamW(
        params,
        lr=config.lr,
        betas=config.betas,
        weight_decay=config.weight_decay,
        **{implementation: True},
    )
