"""The trainer's FLOP count (minmo/train/flops.py) against a hand count on the tiny MinMo, for a
stage with a fully frozen LLM under a trained projector (1a) and a LoRA stage (1c); modules
that do not run cost nothing; and each sample's loss share adds up to the batch's loss."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from minmo.cli import main
from minmo.model.batch import Batch, collate
from minmo.model.minmo import POSITIONS, MinMo, MinMoConfig, SpecialIds
from minmo.tokens.text import load_text_tokenizer
from minmo.train.distributed import DistInfo, wrap_model
from minmo.train.flops import FlopCounter, module_positions, peak_flops
from minmo.train.metrics import TaskLosses, read_metrics
from pipelines.shards.writer import write_stage_shards
from tests.model.test_minmo import _sample
from tests.train.test_train import _job, _stage1_samples


@pytest.fixture(scope="module")
def tokenizer():
    return load_text_tokenizer(None)


def _batch(tokenizer, stage: str) -> Batch:
    """Three samples of different lengths, two tasks (test_minmo's samples, with a task)."""
    samples = []
    for i, (seconds, task) in enumerate([(1.3, "asr"), (0.7, "emotion"), (2.1, "asr")]):
        sample = _sample(tokenizer, stage, " ".join(["word"] * (2 + 3 * i)), seconds, i)
        sample["json"]["task"] = task
        samples.append(sample)
    return collate(samples)


def _model(tokenizer, stage: str) -> MinMo:
    torch.manual_seed(0)
    vocab = len(tokenizer)
    model = MinMo(MinMoConfig.tiny(vocab), SpecialIds.from_tokenizer(tokenizer), vocab)
    model.apply_recipe(stage)
    model.train()
    return model


def _counted(
    tokenizer, stage: str, checkpointing: bool = False
) -> tuple[float, dict, FlopCounter, MinMo, Batch]:
    model, batch = _model(tokenizer, stage), _batch(tokenizer, stage)
    counter = FlopCounter(model)
    wrap_model(model, "none", DistInfo(0, 1, 0, torch.device("cpu")), checkpointing)
    with counter.watch():
        out = model(batch)
    flops = counter.count(out)
    out["loss"].backward()
    return flops, out, counter, model, batch


def _lengths(model: MinMo, batch: Batch) -> dict[str, list[int]]:
    """Positions per module derived by hand from the batch: 25 ms / 10 ms fbank frames, LFR
    stacking every 6, the stride-2 projector, then text + speech positions in the LLM."""
    enc = model.config.voice_encoder
    win = enc.sample_rate * enc.frame_length_ms // 1000
    hop = enc.sample_rate * enc.frame_shift_ms // 1000
    fbank = [1 + (int(n) - win) // hop for n in batch.wave_lengths]
    frames = [math.ceil(c / enc.lfr_n) for c in fbank]
    speech = [math.ceil(f / 2) for f in frames]
    llm = [int(t) + s for t, s in zip(batch.input_lengths, speech, strict=True)]
    return {"voice_encoder": frames, "input_projector": speech, "llm": llm}


def _pairs(ns: list[int], causal: bool) -> int:
    return sum(n * (n + 1) // 2 if causal else n * n for n in ns)


def _encoder_forward(model: MinMo, frames: list[int]) -> float:
    """The frozen voice encoder, forward only: SAN-M blocks (q/k/v in one matmul, output, a
    depth-wise FSMN of kernel 11, a 2-layer feed-forward), full attention."""
    c = model.config.voice_encoder
    e, u, k = c.output_size, c.linear_units, c.kernel_size
    first = c.input_size * 3 * e + e * e + e * k + 2 * e * u
    rest = 3 * e * e + e * e + e * k + 2 * e * u
    params = first + (c.num_blocks - 1 + c.tp_blocks) * rest
    blocks = c.num_blocks + c.tp_blocks
    return 2 * params * sum(frames) + blocks * 4 * e * _pairs(frames, causal=False)


def _projector_parts(model: MinMo) -> tuple[int, int, int]:
    """Input projector: (conv weights, weights of its Transformer layers, layers)."""
    c = model.config.input_projector
    conv = c.encoder_size * c.llm_size * c.kernel_size
    layer = 4 * c.llm_size**2 + 2 * c.llm_size * c.ffn_size  # q, k, v, out; two FFN matmuls
    return conv, layer, c.layers


def _llm_weights(model: MinMo, vocab: int) -> dict[str, int]:
    c = model.config.llm
    h, kv = c.hidden_size, c.hidden_size // c.num_attention_heads * c.num_key_value_heads
    r = c.lora_rank
    return {
        "qkv": h * h + 2 * h * kv,
        "o": h * h,
        "mlp": 3 * h * c.intermediate_size,
        "lora_a": 4 * h * r,  # q, k, v, o: hidden -> rank
        "lora_b_qkv": r * h + 2 * r * kv,
        "lora_b_o": r * h,
        "head": h * vocab,
    }


def test_stage_1a_frozen_llm_under_a_trained_projector(tokenizer) -> None:
    flops, out, counter, model, batch = _counted(tokenizer, "1a")
    n = _lengths(model, batch)
    assert {k: v.tolist() for k, v in module_positions(out).items()} == n
    conv, layer, layers = _projector_parts(model)
    h = model.config.llm.hidden_size
    # Projector trains: its conv reads the frozen encoder (no input gradient): 2 + 2; its
    # layers 6; attention forward + backward.
    projector = (4 * conv + 6 * layers * layer) * sum(n["input_projector"])
    projector += layers * 3 * 4 * h * _pairs(n["input_projector"], causal=False)
    # The LLM is frozen but the projector's gradient passes through all of it: 4 per weight,
    # LoRA adapters included (they run, frozen); causal attention with its backward.
    w = _llm_weights(model, len(tokenizer))
    per_layer = w["qkv"] + w["o"] + w["mlp"] + w["lora_a"] + w["lora_b_qkv"] + w["lora_b_o"]
    llm_layers = model.config.llm.num_hidden_layers
    llm = 4 * (llm_layers * per_layer + w["head"]) * sum(n["llm"])
    llm += llm_layers * 3 * 4 * h * _pairs(n["llm"], causal=True)
    expected = _encoder_forward(model, n["voice_encoder"]) + projector + llm
    assert flops == pytest.approx(expected, rel=1e-12)
    # Nothing of the speech-out or duplex side ran, so none of it is in the profile.
    assert counter.profile.modules == {"voice_encoder", "input_projector", "llm"}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_stage_1c_lora(tokenizer, checkpointing: bool) -> None:
    """Activation checkpointing recomputes blocks in the backward: hardware FLOPs, not model
    FLOPs, so the count is the same with it."""
    flops, out, counter, model, batch = _counted(tokenizer, "1c", checkpointing)
    n = _lengths(model, batch)
    conv, layer, layers = _projector_parts(model)
    h = model.config.llm.hidden_size
    projector = 2 * (conv + layers * layer) * sum(n["input_projector"])
    projector += layers * 4 * h * _pairs(n["input_projector"], causal=False)
    w = _llm_weights(model, len(tokenizer))
    # Layer 0 reads the frozen embeddings and speech: its q/k/v base weights run forward only
    # (2), their LoRA A trains on an input without gradient (4), LoRA B trains inside the
    # trained path (6); from o_proj on every frozen weight passes gradients (4), LoRA 6.
    r = model.config.llm.lora_rank
    first = 2 * w["qkv"] + 4 * 3 * h * r + 6 * w["lora_b_qkv"]
    first += 4 * (w["o"] + w["mlp"]) + 6 * (h * r + w["lora_b_o"])
    later = 4 * (w["qkv"] + w["o"] + w["mlp"])
    later += 6 * (w["lora_a"] + w["lora_b_qkv"] + w["lora_b_o"])
    llm_layers = model.config.llm.num_hidden_layers
    llm = (first + (llm_layers - 1) * later + 4 * w["head"]) * sum(n["llm"])
    llm += llm_layers * 3 * 4 * h * _pairs(n["llm"], causal=True)
    expected = _encoder_forward(model, n["voice_encoder"]) + projector + llm
    assert flops == pytest.approx(expected, rel=1e-12)
    # The profile is reused: the next step is counted from its positions, with no hook.
    assert not counter._probe
    assert counter.count(out) == flops


@pytest.mark.parametrize("stage", ["1a", "2b", "3", "4"])
def test_each_samples_loss_share_adds_up_to_the_batch_loss(tokenizer, stage: str) -> None:
    """Per-task losses rest on each sample's (loss sum, weight): summed over the batch they
    give the loss the model trains on; the tasks of the batch are kept in order."""
    _, out, counter, _, batch = _counted(tokenizer, stage)
    assert batch.tasks == ("asr", "emotion", "asr")
    kinds = [k for k in ("text", "speech", "duplex") if f"{k}_loss_sums" in out]
    assert (
        kinds == {"1a": ["text"], "2b": ["speech"], "3": ["text", "speech"], "4": ["duplex"]}[stage]
    )
    for kind in kinds:
        sums, counts = out[f"{kind}_loss_sums"], out[f"{kind}_loss_counts"]
        assert sums.shape == counts.shape == (3,)
        assert float(sums.sum() / counts.sum()) == pytest.approx(out[f"{kind}_loss"].item())
    # Stage 2b never runs the speech input side.
    assert counter.profile.modules == set(module_positions(out))
    tasks = TaskLosses(torch.device("cpu"))
    tasks.add(out, batch.tasks)
    record = tasks.record(tasks.values())
    kind = kinds[-1]
    sums, counts = out[f"{kind}_loss_sums"], out[f"{kind}_loss_counts"]
    asr = float((sums[0] + sums[2]) / (counts[0] + counts[2]))
    assert record[f"{kind}_loss/asr"] == pytest.approx(asr)
    assert record[f"{kind}_loss/emotion"] == pytest.approx(float(sums[1] / counts[1]))
    assert not any(k.endswith("/tts") for k in record)


def test_peak_comes_from_the_job_else_from_a_listed_gpu() -> None:
    cpu = torch.device("cpu")
    assert peak_flops(None, cpu, bf16=True) is None  # a CPU has no MFU unless the job says
    assert peak_flops(1e12, cpu, bf16=False) == 1e12


def test_the_trainer_logs_mfu_tokens_per_s_and_loss_per_task(tmp_path: Path) -> None:
    """`minmo train` logs, per step, the counted FLOPs, MFU against the job's peak, throughput
    and the loss of each task the step's samples carry, in metrics.jsonl and TensorBoard."""
    samples = _stage1_samples(8)
    for sample in samples[1::2]:
        sample["json"]["task"] = "emotion"
    build = tmp_path / "build"
    write_stage_shards(samples, build / "shards" / "stage1", "stage1", max_samples=4)
    job = _job(tmp_path, steps=3, save_every=100, num_workers=0, peak_flops=1e12, tensorboard=True)
    assert main(["-q", "train", str(job), "--build", str(build), "--out", str(tmp_path / "o")]) == 0
    metrics = read_metrics(tmp_path / "o")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert m["model_flops"] > 0 and m["tokens_per_s"] > 0 and m["llm_positions_per_s"] > 0
        assert m["mfu"] == pytest.approx(m["model_flops"] / m["step_s"] / 1e12)
        per_task = [m[k] for k in ("text_loss/asr", "text_loss/emotion") if k in m]
        assert per_task and {k for k in m if "/" in k} <= {"text_loss/asr", "text_loss/emotion"}
        # one micro-batch on one rank: the step's loss is the token-weighted mean of its tasks'
        assert min(per_task) - 1e-6 <= m["loss"] <= max(per_task) + 1e-6
    assert {"text_loss/asr", "text_loss/emotion"} <= {k for m in metrics for k in m}
    board = EventAccumulator(str(tmp_path / "o" / "tensorboard"))
    board.Reload()
    assert {"mfu", "model_flops", "text_loss/asr", "text_loss/emotion"} <= set(
        board.Tags()["scalars"]
    )


def test_watching_keeps_the_fused_path_and_counts_it_as_unfused(tokenizer, monkeypatch) -> None:
    """1c's frozen input projector takes PyTorch's fused encoder-layer path (hooks on a layer
    would turn it off): a watched step still takes it, computes what an unwatched one does,
    and counts the same FLOPs as the unfused path."""
    fused = []
    fwd = torch._transformer_encoder_layer_fwd
    monkeypatch.setattr(
        torch, "_transformer_encoder_layer_fwd", lambda *a, **k: fused.append(1) or fwd(*a, **k)
    )
    model, batch = _model(tokenizer, "1c"), _batch(tokenizer, "1c")
    plain = model(batch)["loss"]
    counter = FlopCounter(model)
    with counter.watch():
        out = model(batch)
    layers = model.config.input_projector.layers
    assert len(fused) == 2 * layers  # both forwards, every projector layer
    assert torch.equal(out["loss"], plain)
    monkeypatch.setattr(torch.backends.mha, "get_fastpath_enabled", lambda: False)
    unfused = FlopCounter(model)
    with unfused.watch():
        again = model(batch)
    assert len(fused) == 2 * layers
    assert unfused.count(again) == counter.count(out)


def test_packed_rows_count_the_same_model_flops(tokenizer) -> None:
    """Packing changes the layout, not the model's work: positions and attention stay per
    sample (attention is kept inside each sample), so the count equals the padded run's."""
    padded = _counted(tokenizer, "1c")[0]
    model, batch = _model(tokenizer, "1c"), _batch(tokenizer, "1c")
    model.pack_length = 72  # the two short samples share a row
    counter = FlopCounter(model)
    with counter.watch():
        out = model(batch)
    assert float(out["llm_padded_positions"]) < batch.size * int(out[POSITIONS + "llm"].max())
    assert counter.count(out) == padded
