"""Where a training step's time goes: inside the model's top-level modules or outside them.

`StepProfile` hooks the top-level modules of a MinMo (voice encoder, projectors, LLM, voice LM,
duplex predictor) and records wall-clock intervals:

    forward   from the module's forward pre-hook to its forward hook;
    backward  from the moment the gradient of one of its outputs is ready (a tensor hook on the
              outputs) to the last of: the gradient of an input that requires grad (a tensor
              hook on the inputs) or a parameter's gradient accumulated
              (`register_post_accumulate_grad_hook`).

Everything else in a step is "outside": reading and collating the batch, moving it to the
device, the splice and the gathers between modules, the losses, the optimizer, logging. The
outside share of a stretch of steps is 1 - (union of the intervals) / (wall time of the steps),
where a step's wall time is measured from one root forward to the next, so a step's logging and
checkpoint checks count too.

It attaches itself to the first MinMo whose forward runs after `start()` (through a global
forward pre-hook, removed once attached), so a caller can profile `minmo.train.loop.train`
without a handle on the model it builds. On CUDA every mark synchronises the device, which
makes the marks true but slows the step a little; on CPU a mark costs a clock read. The clock
is the wall clock, or the main thread's CPU time (see `clock`).

Must not: change what the model computes (the hooks return nothing, so no tensor is replaced).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from minmo.model.minmo import MODULES, MinMo


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """The tensors in a module's inputs or outputs (tensors, tuples, lists, dicts, ModelOutput)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):  # transformers' ModelOutput is an OrderedDict
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


@dataclass
class Padding:
    """Real and padded element counts of the batches a module saw."""

    real: float = 0.0
    total: float = 0.0

    @property
    def fraction(self) -> float:
        return 1.0 - self.real / self.total if self.total else 0.0


@dataclass
class StepProfile:
    """Intervals of module forward/backward, per root forward (one per micro-batch)."""

    modules: tuple[str, ...] = MODULES
    clock: Callable[[], float] = time.perf_counter
    """Wall clock by default; `time.thread_time` (with one torch thread, CPU only) counts the
    main thread's CPU time instead, which other processes on a shared machine barely move.
    Autograd runs CPU work on the thread that calls backward, so the hooks see that clock too."""
    intervals: list[tuple[float, float, str]] = field(default_factory=list)
    roots: list[float] = field(default_factory=list)  # root forward start times
    llm_padding: Padding = field(default_factory=Padding)
    """Padded LLM positions (attention mask 0) of every batch seen."""
    audio_padding: Padding = field(default_factory=Padding)
    """Padded audio samples (past each wave's length) of every batch seen."""

    def __post_init__(self) -> None:
        self._handles: list[RemovableHandle] = []
        self._global: RemovableHandle | None = None
        self._forward_start: dict[str, float] = {}
        self._backward: dict[str, list[float]] = {}  # name -> [start, end]
        self._cuda = False
        self._root_type: type[nn.Module] = MinMo

    # ---- attaching ---------------------------------------------------------------------------

    def start(self, root: type[nn.Module] = MinMo) -> StepProfile:
        """Attach to the next `root` (a MinMo) whose forward runs."""
        self._root_type = root
        self._global = nn.modules.module.register_module_forward_pre_hook(self._find_root)
        return self

    def attach(self, model: nn.Module) -> StepProfile:
        """Hook `model` (its forward marks a micro-batch) and its `modules`."""
        self._cuda = any(p.is_cuda for p in model.parameters())
        self._handles.append(model.register_forward_pre_hook(self._root_start))
        for name in self.modules:
            module = getattr(model, name)
            self._handles.append(
                module.register_forward_pre_hook(self._pre(name), with_kwargs=True)
            )
            self._handles.append(module.register_forward_hook(self._post(name)))
            for p in module.parameters():
                if p.requires_grad:
                    self._handles.append(
                        p.register_post_accumulate_grad_hook(lambda _p, n=name: self._end(n))
                    )
        return self

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._global is not None:
            self._global.remove()
            self._global = None

    def _find_root(self, module: nn.Module, args: Any) -> None:
        if isinstance(module, self._root_type) and self._global is not None:
            self._global.remove()
            self._global = None
            self.attach(module)
            self._root_start(module, args)

    # ---- marks -------------------------------------------------------------------------------

    def _now(self) -> float:
        if self._cuda:
            torch.cuda.synchronize()
        return self.clock()

    def _root_start(self, module: nn.Module, args: Any) -> None:
        self._close_backward()
        self.roots.append(self._now())

    def _pre(self, name: str):
        def hook(module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            self._forward_start[name] = self._now()
            for t in _tensors((args, kwargs)):
                if t.requires_grad and torch.is_grad_enabled():
                    t.register_hook(lambda _g, n=name: self._end(n))
            if name == "llm" and isinstance(kwargs.get("attention_mask"), torch.Tensor):
                mask = kwargs["attention_mask"]
                self._pad(self.llm_padding, mask.sum(), mask.numel())
            if name == "voice_encoder" and len(args) >= 2:
                waves, lengths = args[0], args[1]
                self._pad(self.audio_padding, lengths.sum(), waves.numel())

        return hook

    def _post(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            end = self._now()
            self._add(name, self._forward_start.pop(name), end)
            for t in _tensors(output):
                if t.requires_grad:
                    t.register_hook(lambda _g, n=name: self._begin(n))

        return hook

    @staticmethod
    def _pad(padding: Padding, real: torch.Tensor, total: int) -> None:
        padding.real += float(real)
        padding.total += float(total)

    def _begin(self, name: str) -> None:
        now = self._now()
        span = self._backward.setdefault(name, [now, now])
        span[0] = min(span[0], now)

    def _end(self, name: str) -> None:
        now = self._now()
        span = self._backward.setdefault(name, [now, now])
        span[1] = max(span[1], now)

    def _close_backward(self) -> None:
        for name, (start, end) in self._backward.items():
            self._add(name, start, end)
        self._backward.clear()

    def _add(self, name: str, start: float, end: float) -> None:
        self.intervals.append((start, end, name))

    # ---- summary -----------------------------------------------------------------------------

    def _within(self, start: float, end: float) -> list[tuple[float, float, str]]:
        self._close_backward()
        return [
            (max(a, start), min(b, end), name)
            for a, b, name in self.intervals
            if b > start and a < end
        ]

    def inside(self, start: float, end: float) -> float:
        """Seconds of [start, end) covered by some module's forward or backward (their union)."""
        total, reach = 0.0, start
        for a, b, _ in sorted(self._within(start, end)):
            if b > reach:
                total += b - max(a, reach)
                reach = b
        return total

    def by_module(self, start: float, end: float) -> dict[str, float]:
        """Seconds of [start, end) in each module's forward + backward."""
        out: dict[str, float] = {}
        for a, b, name in self._within(start, end):
            out[name] = out.get(name, 0.0) + (b - a)
        return out

    def window(self, first: int, last: int) -> tuple[float, float]:
        """Wall-clock span from root forward `first` to root forward `last`: the micro-batches
        `first` .. `last - 1`, whole (their optimizer steps and logging included)."""
        return self.roots[first], self.roots[last]

    def outside_share(self, first: int, last: int) -> float:
        """Share of `window(first, last)` spent outside module forward/backward."""
        start, end = self.window(first, last)
        return 1.0 - self.inside(start, end) / (end - start)
