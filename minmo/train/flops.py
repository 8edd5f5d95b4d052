"""Model FLOPs of a training step, counted from what ran in the stage: the numerator of MFU.

Owns the count and the peak it is divided by (`peak_flops`). Must not change what the model
computes: it only watches one forward through hooks, then counts from the positions the model
reports (`MinMo.forward`'s `positions/<module>`: (B,) real positions per sample, padding
excluded).

The formula, per step (every micro-batch, every rank):

    FLOPs = sum over matmuls m of            mult(m) x P(m) x r(m) x N(module of m)
          + sum over attention layers a of   amult(a) x 4 x W(a) x sum_i pairs(n_i)

- A matmul is a Linear or a convolution (its weight P(m), bias excluded), or the projection
  weights of an `nn.MultiheadAttention` (called functionally, so they have no Linear to hook).
  One multiply-add per weight per position is 2 FLOPs.
- N(module) = sum_i n_i, the real positions the samples ran through that MinMo module: fbank
  LFR frames (60 ms) for the voice encoder, its 120 ms output frames for the input projector,
  spliced text + speech positions for the LLM, the assistant's text tokens for the output
  projector, the interleaved sequence for the voice token LM, speech frames for the duplex
  predictor. A module that did not run in the step reports nothing and costs nothing.
- r(m) = the times m ran in the watched forward, each time over every position of its module (1
  for every matmul of MinMo; a stride-2 convolution runs at its output positions, the ones its
  module reports).
- mult(m) = 2 (forward) + 2 if its weight trains (the weight gradient) + 2 if its input carries a
  gradient (the input gradient, which autograd computes only then). So 6 for a trained weight
  inside a trained stack, 4 for a frozen weight that gradients pass through (a frozen LLM under a
  trained input projector; LoRA's base weights), 2 for a module that runs forward only (a frozen
  encoder in front of everything that trains). The first trained matmul of a stack (an input
  projector's convolution; LoRA's A in the first layer, whose input is the frozen embedding) gets
  4, not the 6 of the usual 6ND estimate: no gradient of its input is computed. Both flags are
  read from the tensors in the watched forward (`requires_grad` and grad mode), not from a table.
- Attention: per layer and sample of n positions, QK^T and AV cost 2 x n x n x W each (W = query
  heads x head size), with pairs(n) = n^2, or n(n+1)/2 for a causal layer (the half at or below
  the diagonal). amult = 1 forward only, 3 when gradients pass through (the backward needs
  grads of Q, K and V: two products per forward product).
- Not counted: embedding lookups (an indexed read, not a matmul: 0 FLOPs, as in PaLM's and
  torchtitan's counts; a tied output head is a matmul and counts), norms, activations, softmax,
  the loss, the fbank (an FFT and a mel matmul on the waveform, outside any trained path), and
  the recomputation of activation checkpointing (MFU counts model FLOPs, not hardware FLOPs).
  Padding is not counted either: it is work the hardware did that the model did not need.

The watched forward is the first training micro-batch of a run (again on the next one if a
module runs later that had not run then, e.g. the voice encoder after a text-only batch; the
step in between counts that module as 0). Its hooks are global module hooks that return
nothing, so the step computes exactly what an unwatched one does (per-module hooks would turn off
PyTorch's fused `TransformerEncoderLayer` path); they are removed afterwards, so later steps
carry no hook. A `TransformerEncoderLayer` that took the fused inference path (frozen, no grad)
calls none of its children; it is counted as a whole from its own call.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from minmo.model.minmo import MODULES, POSITIONS

# What multiplies a weight matrix by every position (embeddings do not: they are lookups).
MATMULS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

# Dense bf16 peak FLOP/s per GPU, by the name torch.cuda reports. H100 and H200 (the same tensor
# cores) use the bf16 matmul rate measured on the lent H100 (../shared/FACTS.md: 800 TFLOP/s, as
# jobs/plan/minmo-paper.yaml does), not the 989 TFLOP/s of the spec sheet. A100: spec sheet.
BF16_PEAK_FLOPS: dict[str, float] = {"H100": 8.0e14, "H200": 8.0e14, "A100": 3.12e14}


def peak_flops(configured: float | None, device: torch.device, bf16: bool) -> float | None:
    """The peak MFU divides by: the job's `peak_flops` when set, else the bf16 table for a GPU
    that trains in bf16; None (no MFU) for a CPU or an unlisted GPU or precision."""
    if configured:
        return float(configured)
    if device.type != "cuda" or not bf16:
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_FLOPS.items() if key in name), None)


@dataclass(frozen=True)
class Matmul:
    """One weight that multiplies every position of its MinMo module."""

    module: str  # the MinMo module (voice_encoder, llm, ...)
    name: str  # its path under the model
    params: int  # weight elements
    mult: int  # 2, 4 or 6 FLOPs per weight per position (module docstring)
    rate: int  # calls per forward, each over every position of `module`


@dataclass(frozen=True)
class Attention:
    module: str
    name: str
    width: int  # query heads x head size
    causal: bool
    mult: int  # 1 forward only, 3 with the backward


@dataclass
class FlopProfile:
    """What runs in the stage, per MinMo module; `flops(out)` counts one forward's step."""

    matmuls: list[Matmul] = field(default_factory=list)
    attentions: list[Attention] = field(default_factory=list)

    @property
    def modules(self) -> set[str]:
        return {m.module for m in self.matmuls} | {a.module for a in self.attentions}

    def per_position(self, module: str) -> float:
        """Matmul FLOPs per position of `module` (forward and backward)."""
        return sum(m.mult * m.params * m.rate for m in self.matmuls if m.module == module)

    def flops(self, positions: Mapping[str, torch.Tensor]) -> float:
        """The step's FLOPs from each module's (B,) real positions per sample."""
        total = self.flops_on_device(positions)
        return 0.0 if total is None else float(total)

    def flops_on_device(self, positions: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """`flops` as a float64 scalar on the positions' device, with no host sync (the
        trainer's step copies it to the host once, with its losses); None when nothing ran."""
        total = None
        for name in (m for m in MODULES if m in positions):
            n = positions[name].detach().double()
            module = self.per_position(name) * n.sum()
            for a in self.attentions:
                if a.module == name:
                    pairs = (n * (n + 1) / 2).sum() if a.causal else (n * n).sum()
                    module = module + a.mult * 4 * a.width * pairs
            total = module if total is None else total + module
        return total


def module_positions(out: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The (B,) positions per sample of each MinMo module that ran, from `MinMo.forward`."""
    return {k[len(POSITIONS) :]: v for k, v in out.items() if k.startswith(POSITIONS)}


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((t for t in value if isinstance(t, torch.Tensor)), None)
    return None


def _attention_kind(module: nn.Module) -> tuple[int, bool] | None:
    """(width, causal) of a self-attention module MinMo uses, None for anything else. Causality
    of an nn.MultiheadAttention is its call's (`is_causal`), filled in by the hook."""
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim, False
    config = getattr(module, "config", None)
    if hasattr(module, "q_proj") and hasattr(module, "head_dim") and config is not None:
        # transformers' attention (Qwen2 for the LLM and the voice token LM)
        return config.num_attention_heads * module.head_dim, bool(module.is_causal)
    if hasattr(module, "linear_q_k_v") and hasattr(module, "d_k"):
        # funasr's SAN-M attention (the SenseVoice encoder): full, not causal
        return module.h * module.d_k, False
    return None


def _mha_params(module: nn.MultiheadAttention) -> int:
    """Projection weights of an nn.MultiheadAttention (used functionally, not as Linears)."""
    names = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
    weights = [getattr(module, n) for n in names if getattr(module, n, None) is not None]
    return sum(w.numel() for w in weights) + module.out_proj.weight.numel()


def _mult(grad: bool, weight_trains: bool, input_grad: bool) -> int:
    return 2 + 2 * (grad and weight_trains) + 2 * (grad and input_grad)


class FlopCounter:
    """Counts each training step's model FLOPs for `model` (the unwrapped MinMo).

    Use: `with counter.watch(): out = wrapped(batch)`, then `counter.count(out)`. `watch`
    hooks the model only while its profile lacks a module."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.profile = FlopProfile()
        self._probe = True
        self._calls: list[Matmul] = []  # one per hooked call (rate 1)
        self._attn: list[Attention] = []
        self._fired = 0  # hooked calls so far in the watched forward
        self._seen: dict[int, int] = {}  # id(layer) -> self._fired when it started
        self._where: dict[int, tuple[str, str]] = {}  # id(submodule) -> (MinMo module, path)

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Hooks for one forward, while the profile lacks a module. Global module hooks, not
        per-module ones: PyTorch turns off a TransformerEncoderLayer's fused inference path when
        the layer or a child has hooks of its own, which would make a watched step compute
        differently from an unwatched one."""
        if not self._probe:
            yield
            return
        self._where = {
            id(sub): (path.split(".")[0], path)
            for path, sub in self.model.named_modules()
            if path.split(".")[0] in MODULES
            and (_attention_kind(sub) or isinstance(sub, (*MATMULS, nn.TransformerEncoderLayer)))
        }
        self._calls, self._attn, self._fired, self._seen = [], [], 0, {}
        handles = [
            register_module_forward_pre_hook(self._before),
            register_module_forward_hook(self._after, with_kwargs=True),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._where = {}

    def _before(self, module: nn.Module, args: tuple) -> None:
        if id(module) in self._where:
            self._seen[id(module)] = self._fired

    def _after(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        where = self._where.get(id(module))
        y = _first_tensor(output)
        if where is None or y is None:
            return
        top, path = where
        self._fired += 1
        grad = torch.is_grad_enabled()
        x = _first_tensor(args)
        kind = _attention_kind(module)
        if isinstance(module, MATMULS) and x is not None:
            mult = _mult(grad, module.weight.requires_grad, x.requires_grad)
            self._calls.append(Matmul(top, path, module.weight.numel(), mult, 1))
        elif kind is not None:
            causal = kind[1] or bool(kwargs.get("is_causal", False))
            self._attn.append(Attention(top, path, kind[0], causal, 3 if y.requires_grad else 1))
            if isinstance(module, nn.MultiheadAttention) and x is not None:
                trains = module.out_proj.weight.requires_grad
                mult = _mult(grad, trains, x.requires_grad)
                self._calls.append(Matmul(top, path, _mha_params(module), mult, 1))
        elif isinstance(module, nn.TransformerEncoderLayer) and (
            self._fired == self._seen.get(id(module), -1) + 1
        ):
            # PyTorch's fused encoder layer (inference only): none of its children ran.
            self._fused_layer(top, path, module, kwargs)

    def _fused_layer(
        self, top: str, path: str, layer: nn.TransformerEncoderLayer, kw: dict
    ) -> None:
        """The fused path runs without gradients: every product is forward only."""
        attn = layer.self_attn
        causal = bool(kw.get("is_causal", False))
        self._attn.append(Attention(top, f"{path}.self_attn", attn.embed_dim, causal, 1))
        self._calls.append(Matmul(top, f"{path}.self_attn", _mha_params(attn), 2, 1))
        for name in ("linear1", "linear2"):
            weights = getattr(layer, name).weight.numel()
            self._calls.append(Matmul(top, f"{path}.{name}", weights, 2, 1))

    def count(self, out: Mapping[str, Any]) -> float:
        """The forward's FLOPs (forward and backward); learns the profile after a watch."""
        return self.profile.flops(self._positions(out))

    def count_on_device(self, out: Mapping[str, Any]) -> torch.Tensor | None:
        """`count` without a host sync (None when no module ran), for the trainer's step."""
        return self.profile.flops_on_device(self._positions(out))

    def _positions(self, out: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        positions = module_positions(out)
        if self._probe and (self._calls or self._attn):
            self._learn(positions)
        self._probe = not set(positions) <= self.profile.modules
        return positions

    def _learn(self, positions: Mapping[str, torch.Tensor]) -> None:
        unreported = {c.module for c in self._calls} - set(positions)
        if unreported:
            raise ValueError(
                f"modules {sorted(unreported)} ran but MinMo.forward reported no "
                f"{POSITIONS}<module> for them: the FLOP count cannot weigh them"
            )
        have = self.profile.modules
        calls = Counter(c for c in self._calls if c.module not in have)
        self.profile.matmuls += [replace(c, rate=n) for c, n in calls.items()]
        self.profile.attentions += [a for a in self._attn if a.module not in have]
        self._calls, self._attn = [], []
