"""Packed training sequences (minmo/model/packing.py) on the tiny MinMo, CPU: the plan and the
layout moves on their own, then each sample's losses and the gradients packed equal the padded
run's on batches of mixed lengths, for a speech-in text stage, the speech-out stage and the duplex
stage, in fp32 and bf16; and a control that shows the check fails when attention crosses samples.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from minmo.model.batch import IGNORE, collate
from minmo.model.minmo import MinMo
from minmo.model.packing import PackPlan, balanced_rows
from tests.model.test_minmo import _model, _sample

# Audio seconds and answers of different lengths: every batch mixes short and long samples.
MIXED = [(1.2, "the cat sat on the mat"), (0.4, "a dog"), (2.3, "yes"), (0.8, "it rained all day")]


def test_rows_are_as_few_as_fit_filled_evenly_and_never_cut_a_sample() -> None:
    lengths = [5, 9, 3, 12, 4]
    rows, offsets, fills = balanced_rows(lengths, capacity=10)
    # 33 positions -> 4 rows; longest first to the least-filled row: 12 | 9 | 5 | 4 then 3.
    # 12 is over capacity: alone in its row, whole.
    assert (rows, offsets, fills) == ([2, 1, 3, 0, 3], [0, 0, 4, 0, 0], [12, 9, 5, 7])
    # Three rows of 10 cannot hold five 6s: one more row at a time, down to one sample each.
    assert balanced_rows([6] * 5, capacity=10) == ([0, 1, 2, 3, 4], [0] * 5, [6] * 5)
    assert balanced_rows([6, 6, 6, 3, 3, 3], capacity=12)[2] == [9, 9, 9]
    # Rows no shorter than padding would give: one sample per row instead.
    assert balanced_rows([4, 4, 3], capacity=7)[2] == [4, 4, 3]
    for r, fill in enumerate(fills):
        members = sorted((offsets[b], n) for b, n in enumerate(lengths) if rows[b] == r)
        assert [o for o, _ in members] == [
            sum(n for _, n in members[:i]) for i in range(len(members))
        ]
        assert fill == sum(n for _, n in members)
    with pytest.raises(ValueError, match="capacity"):
        balanced_rows([3], capacity=0)


def test_pack_and_unpack_move_every_real_position_and_restart_position_ids() -> None:
    lengths = [7, 2, 11, 5, 1]
    mask = torch.zeros(len(lengths), 11, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    x = torch.randn(len(lengths), 11, 3)
    plan = PackPlan.build(mask, capacity=12)
    packed = plan.pack(x, fill=-7.0)
    assert packed.shape == (plan.rows, plan.row_length, 3)
    assert plan.rows == 3 and plan.row_length == 11  # 11 | 7 + 1 | 5 + 2
    assert int(plan.slot_real.sum()) == sum(lengths)
    assert (packed.reshape(-1, 3)[~plan.slot_real] == -7.0).all()
    back = plan.unpack(packed, fill=0.0)
    assert torch.equal(back, x * mask[..., None])
    # Each sample's positions count 0..n-1 wherever it lands; row tails count from 0 as well.
    for b, n in enumerate(lengths):
        slots = plan.dest[b, :n]
        assert plan.positions.flatten()[slots].tolist() == list(range(n))
    assert plan.padding_fraction == pytest.approx(1 - sum(lengths) / 33)


def _batch(tokenizer, stage: str):
    return collate(
        [
            _sample(tokenizer, stage, answer, seconds, seed)
            for seed, (seconds, answer) in enumerate(MIXED, 1)
        ]
    )


def _run(model: MinMo, batch, pack_length: int | None, bf16: bool = False) -> dict:
    """Forward + backward; the outputs, per-sample losses and trained gradients."""
    model.pack_length = pack_length
    model.zero_grad(set_to_none=True)
    semantic: list[torch.Tensor] = []
    hook = model.output_projector.register_forward_hook(lambda m, i, o: semantic.append(o))
    llm_inputs: list[dict] = []
    pre = model.llm.register_forward_pre_hook(
        lambda m, a, k: llm_inputs.append(k), with_kwargs=True
    )
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(batch)
        out["loss"].backward()
    finally:
        hook.remove()
        pre.remove()
    if "duplex_logits" in out:
        logits = out["duplex_logits"].float()
        labels = batch.labels[:, : logits.shape[1]]
        nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
        out["duplex_loss_per_sample"] = nll.sum(1) / (labels != IGNORE).sum(1).clamp(min=1)
    if semantic:
        out["semantic"] = semantic[0].detach()
    out["grads"] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    out["llm_inputs"] = llm_inputs[0]
    return out


STAGES = {"1b": "text_loss_per_sample", "3": "semantic", "4": "duplex_loss_per_sample"}


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("rows", ["one", "several"])
def test_packed_losses_per_sample_equal_the_padded_run(tokenizer, stage: str, rows: str) -> None:
    """Rows of 4096: the whole batch in one row; rows of half the batch's positions: two or
    three rows, some holding several samples."""
    model = _model(tokenizer)
    model.apply_recipe(stage)
    model.train()
    batch = _batch(tokenizer, stage)
    padded = _run(model, batch, None)
    lengths = padded["llm_inputs"]["attention_mask"].sum(1)
    longest, half = int(lengths.max()), (int(lengths.sum()) + 1) // 2
    capacity = 4096 if rows == "one" else max(longest, half + longest // 4)
    packed = _run(model, batch, capacity)
    n_rows, length = packed["llm_inputs"]["inputs_embeds"].shape[:2]
    assert (n_rows == 1) if rows == "one" else (1 < n_rows < batch.size)
    assert packed["llm_inputs"].get("attention_mask") is None
    assert n_rows * length == int(packed["llm_padded_positions"])
    assert int(packed["llm_padded_positions"]) < int(padded["llm_padded_positions"])
    assert int(packed["llm_positions"]) == int(padded["llm_positions"])
    key = STAGES[stage]
    torch.testing.assert_close(packed[key], padded[key], rtol=1e-5, atol=1e-5)
    if stage == "3":  # the text read alongside the speech, per sample, too
        torch.testing.assert_close(
            packed["text_loss_per_sample"], padded["text_loss_per_sample"], rtol=1e-5, atol=1e-5
        )
    torch.testing.assert_close(packed["loss"], padded["loss"], rtol=1e-5, atol=1e-6)
    assert packed["grads"].keys() == padded["grads"].keys() and packed["grads"]
    for name, grad in padded["grads"].items():
        scale = float(grad.abs().max())
        # fp32 sums in another order (other matmul shapes): off by a few 1e-6 of the largest.
        torch.testing.assert_close(
            packed["grads"][name],
            grad,
            rtol=1e-3,
            atol=1e-4 * scale,
            msg=lambda m, name=name: f"{name}: {m}",
        )


def test_packed_losses_in_bf16_stay_within_bf16_tolerance(tokenizer) -> None:
    model = _model(tokenizer)
    model.apply_recipe("1c")
    model.train()
    batch = _batch(tokenizer, "1c")
    padded = _run(model, batch, None, bf16=True)
    packed = _run(model, batch, 4096, bf16=True)
    torch.testing.assert_close(
        packed["text_loss_per_sample"], padded["text_loss_per_sample"], rtol=2e-2, atol=2e-2
    )


def test_the_check_fails_when_attention_crosses_samples(tokenizer, monkeypatch) -> None:
    """Control: position ids that run on across a row (no restart) make transformers see one
    sequence per row, so later samples attend to earlier ones: the losses must then differ."""
    build = PackPlan.build

    def leaky(mask: torch.Tensor, capacity: int) -> PackPlan:
        plan = build(mask, capacity)
        run_on = torch.arange(plan.row_length).expand(plan.rows, -1)
        return dataclasses.replace(plan, positions=run_on)

    model = _model(tokenizer)
    model.apply_recipe("1b")
    model.train()
    batch = _batch(tokenizer, "1b")
    padded = _run(model, batch, None)
    monkeypatch.setattr(PackPlan, "build", staticmethod(leaky))
    packed = _run(model, batch, 4096)
    gap = (padded["text_loss_per_sample"] - packed["text_loss_per_sample"]).abs()
    assert gap.max() > 1e-3, "attention across samples went unnoticed"
