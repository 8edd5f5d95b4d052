"""The trainer's speed options on CPU with the tiny model: compiled blocks give eager's losses,
activation checkpointing gives the same loss and gradients in less memory, and the choices
behind fused AdamW and `num_workers: auto`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    _CHECKPOINT_PREFIX,
    CheckpointWrapper,
)
from torch.profiler import ProfilerActivity, profile

from minmo.config import ConfigError
from minmo.model.batch import Batch, collate
from minmo.model.minmo import MinMo
from minmo.tokens.text import load_text_tokenizer
from minmo.train.config import TrainConfig
from minmo.train.data import StageLoader
from minmo.train.distributed import DistInfo, compiled_blocks, transformer_blocks, wrap_model
from minmo.train.optim import adamw_implementation, build_optimizer
from minmo.train.workers import WorkerProbe, choose_workers
from pipelines.shards.writer import write_stage_shards
from tests.model.test_minmo import _model, _sample
from tests.train.test_train import _stage1_samples

CPU = DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def tokenizer():
    return load_text_tokenizer(None)


def _stage_model(tokenizer, stage: str) -> MinMo:
    model = _model(tokenizer)
    model.apply_recipe(stage)
    model.train()
    return model


def _batch(tokenizer, stage: str, samples: int, seconds: float, words: int) -> Batch:
    answer = " ".join(["the cat sat on the mat"] * words)
    return collate([_sample(tokenizer, stage, answer, seconds, i + 1) for i in range(samples)])


def _two_steps(wrapped: torch.nn.Module, batch: Batch) -> list[float]:
    """The loss before and after one AdamW step on `batch`."""
    config = TrainConfig(stage="1c", lr=1e-2)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, config)
    losses = []
    for _ in range(2):
        loss = wrapped(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
    return losses


@pytest.mark.slow  # 60-90 s here: dynamo traces every block, forward and backward, twice
def test_compiled_blocks_train_like_eager(tokenizer) -> None:
    """Stage 1c (LoRA on the LLM, speech through the encoder): the LLM's decoder layers and the
    encoder's SAN-M blocks compiled in place give eager's losses over an optimizer step, and
    so do they compiled with their activation-checkpointing wrappers.

    backend="aot_eager" (dynamo + AOTAutograd, no code generation): inductor works on this CPU
    too (gcc is installed; one step gave the eager loss exactly) but spends ~25 s generating
    C++ here, too long for the suite."""
    batch = _batch(tokenizer, "1c", samples=2, seconds=1.0, words=2)
    eager = _two_steps(_stage_model(tokenizer, "1c"), batch)
    for checkpointing in (False, True):
        model = _stage_model(tokenizer, "1c")
        wrapped = wrap_model(model, "none", CPU, checkpointing, compile_backend="aot_eager")
        blocks = compiled_blocks(model)
        names = {type(b).__name__ for b in blocks}
        assert names == {"Qwen2DecoderLayer", "EncoderLayerSANM"}
        outer = {
            id(m._checkpoint_wrapped_module): m
            for m in model.modules()
            if isinstance(m, CheckpointWrapper)
        }
        assert len(outer) == (len(transformer_blocks(model)) if checkpointing else 0)
        assert all(outer.get(id(b), b)._compiled_call_impl is not None for b in blocks)
        compiled = _two_steps(wrapped, batch)
        assert compiled[1] < compiled[0]
        assert compiled == pytest.approx(eager, rel=1e-5), checkpointing


def _peak_bytes(fn: Callable[[], None]) -> int:
    """Peak of the bytes torch's CPU allocator holds while `fn` runs, above what it held at the
    start: the profiler's allocation records, summed in time order."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for record in sorted(records, key=lambda e: e.start_ns()):
        held += record.nbytes()
        peak = max(peak, held)
    return peak


def test_activation_checkpointing_same_loss_less_memory(tokenizer) -> None:
    """Stage 1b (encoder and projector trained, gradients through the frozen LLM): checkpointed
    blocks give the same loss and gradients, and forward + backward peaks lower."""
    batch = _batch(tokenizer, "1b", samples=3, seconds=2.0, words=10)
    results = {}
    for checkpointing in (False, True):
        model = _stage_model(tokenizer, "1b")
        wrapped = wrap_model(model, "none", CPU, checkpointing=checkpointing)
        wrappers = [m for m in wrapped.modules() if isinstance(m, CheckpointWrapper)]
        assert bool(wrappers) == checkpointing
        out: dict[str, torch.Tensor] = {}

        def step(wrapped: torch.nn.Module = wrapped, out: dict = out) -> None:
            loss = wrapped(batch)["loss"]
            loss.backward()
            out["loss"] = loss.detach()

        peak = _peak_bytes(step)
        grads = {
            n.replace(_CHECKPOINT_PREFIX, ""): p.grad
            for n, p in model.named_parameters()
            if p.grad is not None
        }
        results[checkpointing] = (float(out["loss"]), grads, peak)
    (loss, grads, peak), (ck_loss, ck_grads, ck_peak) = results[False], results[True]
    assert ck_loss == loss
    assert grads.keys() == ck_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(ck_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    # Measured here: 29.1 MB -> 21.9 MB at 4 x 3 s; the bound leaves room for allocator noise.
    assert ck_peak < 0.9 * peak, (peak, ck_peak)


def test_adamw_is_fused_only_when_every_parameter_is_on_cuda() -> None:
    cpu = torch.nn.Parameter(torch.zeros(2))
    assert adamw_implementation([cpu]) == "foreach"
    assert adamw_implementation([]) == "foreach"
    on_cuda = [torch.nn.Parameter(torch.zeros(2, device="meta")) for _ in range(2)]
    # The meta device stands in for a device type: only "cuda" counts.
    assert adamw_implementation(on_cuda) == "foreach"
    if torch.cuda.is_available():
        gpu = torch.nn.Parameter(torch.zeros(2, device="cuda"))
        assert adamw_implementation([gpu]) == "fused"
        assert adamw_implementation([gpu, cpu]) == "foreach"
        ints = torch.nn.Parameter(torch.zeros(2, device="cuda", dtype=torch.int64), False)
        assert adamw_implementation([gpu, ints]) == "foreach"
    optimizer = build_optimizer([cpu], TrainConfig(stage="1a", lr=0.5, betas=(0.8, 0.9)))
    group = optimizer.param_groups[0]
    assert group["foreach"] and not group["fused"]
    assert (group["lr"], group["betas"]) == (0.5, (0.8, 0.9))


@pytest.mark.parametrize(
    ("load_s", "step_s", "cpus", "workers"),
    [
        (0.001, 0.100, 4, 0),  # loading is 1 % of the step: stays in the main process
        (0.005, 0.100, 4, 0),  # exactly the inline fraction
        (0.020, 0.100, 4, 1),  # one worker hides it
        (0.100, 0.100, 4, 2),  # as slow as the step: 1.25 -> 2 with the margin
        (0.300, 0.100, 8, 4),  # 3x the step: ceil(3.75)
        (0.300, 0.100, 2, 2),  # capped by the CPUs
        (0.300, 0.100, 0, 0),  # no CPU to spare
        (0.300, 0.000, 3, 3),  # a step that takes no time: as many as allowed
    ],
)
def test_workers_keep_the_step_fed(load_s: float, step_s: float, cpus: int, workers: int) -> None:
    assert choose_workers(load_s, step_s, cpus) == workers


def test_worker_probe_skips_the_warm_up() -> None:
    probe = WorkerProbe(batches=2)
    probe.add(5.0, 9.0)  # first step: compilation, cold caches
    assert not probe.done
    probe.add(0.2, 0.1)
    probe.add(0.4, 0.3)
    assert probe.done
    assert probe.means() == pytest.approx((0.3, 0.2))
    with pytest.raises(ValueError, match=">= 0"):
        choose_workers(-1.0, 0.1, 2)


def test_loader_switching_workers_mid_epoch_keeps_the_batches(tmp_path: Path) -> None:
    """What `auto` does after its probe: the loader reopens at its position with workers, and
    the batches are those of a run that had them from the start."""
    stage_dir = tmp_path / "stage1"
    write_stage_shards(_stage1_samples(12), stage_dir, "stage1", max_samples=5)

    def keys(loader: StageLoader, switch_at: int | None) -> list[list[str]]:
        out = []
        for i in range(5):  # crosses the epoch's end (6 samples per rank, batches of 2)
            if i == switch_at:
                loader.set_num_workers(1)
            batch = loader.next_batch()
            if batch is None:
                loader.next_epoch()
                batch = loader.next_batch()
            out.append([s["key"] for s in batch])
        return out

    def loader(workers: int) -> StageLoader:
        return StageLoader(stage_dir, 1, 2, num_workers=workers, max_samples=2, collate=False)

    switched = loader(0)
    assert keys(switched, switch_at=2) == keys(loader(1), switch_at=None)
    assert switched.num_workers == 1


def test_num_workers_accepts_a_count_or_auto() -> None:
    assert TrainConfig(stage="1a", num_workers="auto").num_workers == "auto"
    assert TrainConfig(stage="1a", num_workers="3").num_workers == 3  # from the command line
    assert TrainConfig(stage="1a").compile is False
    for bad in ("many", -1, True):
        with pytest.raises(ConfigError, match='num_workers must be a count >= 0 or "auto"'):
            TrainConfig(stage="1a", num_workers=bad)
