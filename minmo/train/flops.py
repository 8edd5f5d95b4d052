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
- r(m) = positions m computed per position of its module (1 for every matmul of MinMo; a stride-
  2 convolution is counted at its output positions), measured by the watched forward.
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

The watched forward is the first training micro-batch of a run (again if a module runs later
that had not run then, e.g. the voice encoder after a text-only batch). Its hooks return
nothing, so the step's numbers are those of an unwatched one; they are removed afterwards, so
later steps carry no hook. A `TransformerEncoderLayer` that took PyTorch's fused inference path
(frozen, no grad) calls none of its children; it is counted as a whole from its own call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from minmo.model.minmo import MODULES, POSITIONS

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
    rate: float  # positions computed per position of `module`


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
        names = [m for m in MODULES if m in positions]
        if not names:
            return 0.0
        # One host transfer for every module: sum n, sum n^2, sum n(n+1)/2.
        stats = torch.stack(
            [
                torch.stack([n.sum(), (n * n).sum(), (n * (n + 1) / 2).sum()])
                for n in (positions[m].detach().double() for m in names)
            ]
        ).tolist()
        total = 0.0
        for name, (tokens, full, causal) in zip(names, stats, strict=True):
            total += self.per_position(name) * tokens
            for a in self.attentions:
                if a.module == name:
                    total += a.mult * 4 * a.width * (causal if a.causal else full)
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
        self._calls: list[tuple[str, str, int, int, float]] = []  # module, name, params, mult, n
        self._attn: list[tuple[str, str, int, bool, int, float]] = []
        self._fired = 0  # hooked calls so far in the watched forward

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        if not self._probe:
            yield
            return
        handles = []
        for path, sub in self.model.named_modules():
            top = path.split(".")[0]
            if top not in MODULES:
                continue
            hooks = self._hooks(top, path, sub)
            if hooks is not None:
                handles.append(sub.register_forward_pre_hook(hooks[0], with_kwargs=True))
                handles.append(sub.register_forward_hook(hooks[1], with_kwargs=True))
        self._calls, self._attn, self._fired = [], [], 0
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hooks(self, top: str, path: str, sub: nn.Module) -> tuple[Any, Any] | None:
        kind = _attention_kind(sub)
        is_matmul = isinstance(sub, (nn.Linear, nn.modules.conv._ConvNd))
        fusable = isinstance(sub, nn.TransformerEncoderLayer)
        if kind is None and not is_matmul and not fusable:
            return None
        seen: dict[str, int] = {}

        def before(module: nn.Module, args: tuple, kwargs: dict) -> None:
            seen["fired"] = self._fired

        def after(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            grad = torch.is_grad_enabled()
            x = _first_tensor(args) if args else kwargs.get("hidden_states")
            y = _first_tensor(output)
            if x is None or y is None:
                return
            self._fired += 1
            if is_matmul:
                n = y.numel() / y.shape[1 if isinstance(sub, nn.modules.conv._ConvNd) else -1]
                mult = _mult(grad, module.weight.requires_grad, x.requires_grad)
                self._calls.append((top, path, module.weight.numel(), mult, n))
            elif kind is not None:
                tokens = x.numel() / x.shape[-1]
                causal = kind[1] or bool(kwargs.get("is_causal", False))
                self._attn.append((top, path, kind[0], causal, 3 if y.requires_grad else 1, 1))
                if isinstance(module, nn.MultiheadAttention):
                    trains = module.out_proj.weight.requires_grad
                    mult = _mult(grad, trains, x.requires_grad)
                    self._calls.append((top, path, _mha_params(module), mult, tokens))
            elif fusable and self._fired == seen["fired"] + 1:
                # PyTorch's fused encoder layer (inference only): none of its children ran.
                self._fused_layer(top, path, module, x, kwargs)

        return before, after

    def _fused_layer(
        self, top: str, path: str, layer: nn.TransformerEncoderLayer, x: torch.Tensor, kw: dict
    ) -> None:
        tokens = x.numel() / x.shape[-1]
        attn = layer.self_attn
        causal = bool(kw.get("is_causal", False))
        self._attn.append((top, f"{path}.self_attn", attn.embed_dim, causal, 1, 1))
        self._calls.append((top, f"{path}.self_attn", _mha_params(attn), 2, tokens))
        for name in ("linear1", "linear2"):
            lin = getattr(layer, name)
            self._calls.append((top, f"{path}.{name}", lin.weight.numel(), 2, tokens))

    def count(self, out: Mapping[str, Any]) -> float:
        """The forward's FLOPs (forward and backward); learns the profile after a watch."""
        positions = module_positions(out)
        if self._probe and (self._calls or self._attn):
            self._learn(positions)
        self._probe = not set(positions) <= self.profile.modules
        return self.profile.flops(positions)

    def _learn(self, positions: Mapping[str, torch.Tensor]) -> None:
        padded = {
            m: float(n.numel() * int(n.max())) if n.numel() else 0.0 for m, n in positions.items()
        }
        unreported = {c[0] for c in self._calls} - set(padded)
        if unreported:
            raise ValueError(
                f"modules {sorted(unreported)} ran but MinMo.forward reported no "
                f"{POSITIONS}<module> for them: the FLOP count cannot weigh them"
            )
        have = self.profile.modules
        merged: dict[tuple[str, str, int, int], float] = {}
        for top, path, params, mult, n in self._calls:
            if top not in have:
                key = (top, path, params, mult)
                merged[key] = merged.get(key, 0.0) + n
        for (top, path, params, mult), n in merged.items():
            rate = n / padded[top] if padded[top] else 0.0
            self.profile.matmuls.append(Matmul(top, path, params, mult, rate))
        for top, path, width, causal, mult, _ in self._attn:
            if top not in have:
                self.profile.attentions.append(Attention(top, path, width, causal, mult))
        self._calls, self._attn = [], []
