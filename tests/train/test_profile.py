"""StepProfile on a toy model whose modules sleep known times in forward and in backward, with
known work between them: the inside/outside split, the per-module times and the padding."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from minmo.train.profile import StepProfile

FORWARD_S, BACKWARD_S, OUTSIDE_S = 0.03, 0.02, 0.04


class _SlowBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        time.sleep(BACKWARD_S)
        return grad


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        time.sleep(FORWARD_S)
        return _SlowBackward.apply(self.linear(x))


class _Root(nn.Module):
    """Two blocks, the first trained from inputs that need no grad, the second fed the first's
    output through work done outside both."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Block()
        self.llm = _Block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        time.sleep(OUTSIDE_S)
        mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
        return self.llm(h, attention_mask=mask).sum()


def test_the_split_matches_the_known_sleeps() -> None:
    torch.manual_seed(0)
    model = _Root()
    profile = StepProfile(modules=("encoder", "llm")).start(root=_Root)
    steps = 3
    try:
        for _ in range(steps + 1):
            model(torch.randn(2, 4)).backward()
            time.sleep(OUTSIDE_S)  # the "optimizer"
    finally:
        profile.stop()
    assert len(profile.roots) == steps + 1
    start, end = profile.window(0, steps)
    inside = profile.by_module(start, end)
    # Sleeps never end early, and a busy machine only stretches them: lower bounds on both
    # sides fail if any sleep is put on the wrong side.
    for name in ("encoder", "llm"):
        assert inside[name] >= 0.95 * steps * (FORWARD_S + BACKWARD_S), name
    outside_s = (end - start) - profile.inside(start, end)
    assert outside_s >= 0.95 * steps * 2 * OUTSIDE_S
    assert profile.outside_share(0, steps) == pytest.approx(outside_s / (end - start))
    assert profile.llm_padding.fraction == pytest.approx(2 / 8)
    assert profile.audio_padding.total == 0
    # Detached: a further step records nothing.
    model(torch.randn(2, 4)).backward()
    assert len(profile.roots) == steps + 1


def test_it_attaches_to_the_first_root_only() -> None:
    first, second = _Root(), _Root()
    profile = StepProfile(modules=("encoder", "llm")).start(root=_Root)
    try:
        second.encoder(torch.randn(2, 4))  # not a root: nothing to attach to yet
        assert profile.roots == []
        first(torch.randn(2, 4))
        second(torch.randn(2, 4))
    finally:
        profile.stop()
    assert len(profile.roots) == 1
