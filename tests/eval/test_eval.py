"""`minmo eval` end to end: the refusals (before any model is built), every kind of task scored
into a schema-valid eval.json, and the overfit check that decoding agrees with training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from minmo.audio.encode import flac_bytes
from minmo.cli import main
from minmo.model.minmo import SpecialIds
from minmo.tokens.text import SPEECH_PLACEHOLDER, encode_chat, load_text_tokenizer
from minmo.train.checkpoint import export
from minmo.train.config import ModelSpec, TrainConfig
from minmo.train.loop import build_model, train
from pipelines.shards.writer import write_stage_shards
from schemas.eval import validate_eval
from schemas.shards import index_path

RATE = 16000
HOP_S = 0.12


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_text_tokenizer(None)


def _noise(rng: np.random.Generator, seconds: float) -> bytes:
    return flac_bytes((rng.standard_normal((1, int(seconds * RATE))) * 0.1).astype(np.float32))


def _chat(tokenizer: Any, key: str, stage: str, task: str, messages: list[dict], **meta: Any):
    ids = encode_chat(tokenizer, messages)
    if messages[-1]["role"] == "assistant":
        start = encode_chat(tokenizer, messages[:-1], add_generation_prompt=True).size
    else:
        start = ids.size
    fields = {"key": key, "stage": stage, "task": task, "messages": messages}
    return {
        "__key__": key,
        "json": {**fields, "target_start": int(start), **meta},
        "text_tokens.npy": ids.astype(np.int64),
    }


def _asr(tokenizer: Any, texts: list[str], seed: int = 0) -> list[dict[str, Any]]:
    """ASR samples: a distinct noise clip per transcript, the same instruction for all (so only
    the audio tells the model which transcript to say), clips of different lengths (so a batch
    pads its prompts)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, text in enumerate(texts):
        messages = [
            {"role": "user", "content": f"Transcribe.\n{SPEECH_PLACEHOLDER}"},
            {"role": "assistant", "content": text},
        ]
        sample = _chat(tokenizer, f"asr-{i:03d}", "stage1", "asr", messages, language="en")
        sample["flac"] = _noise(rng, 0.3 + 0.25 * i)
        out.append(sample)
    return out


def _duplex(tokenizer: Any, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Stage-4 samples of 2.4 s (20 label frames): a speak_now and a stop_now run each."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        messages = [
            {"role": "system", "content": "You are in a call."},
            {"role": "user", "content": SPEECH_PLACEHOLDER},
        ]
        labels = np.zeros(20, dtype=np.int8)
        speak = 3 + i % 4
        labels[speak] = 1
        labels[speak + 1 : speak + 7] = 2
        labels[speak + 7] = 3
        # A user back-channel inside the assistant's turn, 3 frames before the user takes over.
        backchannel = {"backchannel_s": [round((speak + 3) * HOP_S, 3)]}
        meta = {"label_hop_s": HOP_S, "n_labels": 20, "language": None, "provenance": backchannel}
        sample = _chat(tokenizer, f"duplex-{i:03d}", "stage4", "duplex", messages, **meta)
        sample["flac"] = _noise(rng, 20 * HOP_S)
        sample["labels.npy"] = labels
        sample["assistant_activity.npy"] = (labels == 2).astype(np.int8)
        out.append(sample)
    return out


def _chat_lid_tts(tokenizer: Any) -> list[dict[str, Any]]:
    """One s2t_chat (text loss), one language_id (a class) and one tts (speech tokens) sample."""
    rng = np.random.default_rng(1)
    chat = [
        {"role": "user", "content": f"Answer.\n{SPEECH_PLACEHOLDER}"},
        {"role": "assistant", "content": "see you tomorrow"},
    ]
    lid = [
        {"role": "user", "content": f"Which language?\n{SPEECH_PLACEHOLDER}"},
        {"role": "assistant", "content": "English"},
    ]
    tts = [
        {"role": "user", "content": "Say: good morning"},
        {"role": "assistant", "content": "good morning"},
    ]
    extra = [
        _chat(tokenizer, "chat-0", "stage1", "s2t_chat", chat, language="en"),
        _chat(tokenizer, "lid-0", "stage1", "language_id", lid, language="en"),
        _chat(tokenizer, "tts-0", "stage2", "tts", tts, language="en"),
    ]
    extra[0]["flac"] = extra[1]["flac"] = _noise(rng, 0.5)
    extra[2]["speech_tokens.npy"] = rng.integers(0, 6561, 30).astype(np.int32)
    return extra


def _fake_export(path: Path, stage: str, modules: list[str]) -> Path:
    path.mkdir(parents=True)
    (path / "export.json").write_text(json.dumps({"stage": stage, "modules": modules}))
    return path


def _train(build: Path, stage: str, shards: Path, out: Path, steps: int, batch: int) -> Any:
    """Train `stage` of the tiny model in this process: the whole set in every batch, a high
    learning rate, no intermediate checkpoints (the overfit tests want memorisation, fast)."""
    config = TrainConfig(
        stage=stage,
        steps=steps,
        lr=1e-2,
        warmup_steps=1,
        max_samples=batch,
        num_workers=0,
        tensorboard=False,
        save_every=1000,
        shards=str(shards),
        out=str(out),
    )
    return train(config, str(build), progress=False)


def _eval(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["-q", "eval", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_refusals_name_what_and_where(
    tmp_path: Path, tokenizer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    stage1 = tmp_path / "shards" / "stage1"
    write_stage_shards(_asr(tokenizer, ["good morning"]), stage1, "stage1")
    stage4 = tmp_path / "shards" / "stage4"
    write_stage_shards(_duplex(tokenizer, 1), stage4, "stage4")
    stage1_export = _fake_export(tmp_path / "1b" / "final", "1b", ["input_projector"])
    (tmp_path / "1b" / "latest").write_text("step-00000001\n")

    code, text = _eval(capsys, str(tmp_path / "nowhere"), "--shards", str(stage1))
    assert code == 2 and "no such directory" in text
    code, text = _eval(capsys, str(tmp_path / "1b"), "--shards", str(stage1))
    assert code == 2 and f"give its export {tmp_path / '1b' / 'final'}" in text
    code, text = _eval(capsys, str(tmp_path / "shards"), "--shards", str(stage1))
    assert code == 2 and "export.json missing" in text
    # duplex F1 from a stage-1 export: the predictor is missing
    code, text = _eval(capsys, str(stage1_export), "--shards", str(stage4))
    assert code == 2 and "has no trained duplex" in text and "'duplex'" in text
    assert str(stage4) in text

    odd = tmp_path / "shards" / "odd"
    (sample,) = _asr(tokenizer, ["good morning"])
    sample["json"]["stage"] = "stage9"
    write_stage_shards([sample], odd, "stage1")
    code, text = _eval(capsys, str(stage1_export), "--shards", str(odd))
    assert code == 2 and "stage 'stage9'" in text and str(odd) in text

    index = Path(index_path(str(stage1)))
    index.write_text(json.dumps({**json.loads(index.read_text()), "version": 99}))
    code, text = _eval(capsys, str(stage1_export), "--shards", str(stage1))
    assert code == 2 and str(index) in text and "99" in text


@pytest.mark.slow
def test_every_kind_of_task_lands_in_a_valid_eval_json(tmp_path: Path, tokenizer: Any) -> None:
    """A random tiny model exported as if stage 4 had run after stages 1-3: s2t_chat (loss per
    token), tts (speech top-1, perplexity), asr (WER), language_id (accuracy) and duplex (F1@K)
    from one mixed shard directory. The figures are a random model's; their ranges and counts
    are what is checked. (slow: two tiny-model builds, ~10 s.)"""
    special = SpecialIds.from_tokenizer(tokenizer)
    samples = _asr(tokenizer, ["good morning", "thank you"]) + _duplex(tokenizer, 2)
    extra = _chat_lid_tts(tokenizer)
    shards = tmp_path / "mixed"
    write_stage_shards(samples + extra, shards, "stage1", max_samples=3)
    assert special.turn_end in extra[0]["text_tokens.npy"]

    torch.manual_seed(3)
    model = build_model(ModelSpec(), tokenizer)
    modules = ["duplex", "input_projector", "output_projector", "voice_lm"]
    meta = {"model": {"size": "tiny"}, "seed": 3}
    final = export(tmp_path / "ck", model, modules, "4", 0, meta=meta)
    assert final is not None
    out = tmp_path / "eval.json"
    argv = ["-q", "eval", str(final), "--shards", str(shards), "--out", str(out)]
    assert main([*argv, "--batch-size", "3", "--max-new-tokens", "6"]) == 0
    doc = validate_eval(json.loads(out.read_text()))
    tasks = doc["tasks"]
    assert doc["samples"] == 7 and doc["stage"] == "4"
    assert sorted(tasks) == ["asr", "duplex", "language_id", "s2t_chat", "tts"]
    assert tasks["asr"]["wer"]["reference_units"] == 4  # good morning + thank you
    assert tasks["language_id"]["confusion"]["labels"][0] == "english"
    assert tasks["s2t_chat"]["tokens"] > 0 and tasks["s2t_chat"]["loss_per_token"] > 0
    assert tasks["tts"]["tokens"] > 30 and 0 <= tasks["tts"]["top1_accuracy"] <= 1
    assert tasks["tts"]["perplexity"] > 1
    f1 = tasks["duplex"]["f1"]
    assert sorted(f1) == ["assistant_turn_taking", "user_turn_taking"]
    assert f1["assistant_turn_taking"]["5"]["reference"] == 2
    assert tasks["duplex"]["frames"] == 40
    assert tasks["duplex"]["backchannels"] == 2
    assert all(0 <= v <= 1 for v in tasks["duplex"]["backchannel_accuracy"].values())


@pytest.mark.slow
def test_overfit_asr_then_eval_reports_low_wer(tmp_path: Path, tokenizer: Any) -> None:
    """Train the tiny model (LoRA, stage 1c) on three ASR samples until it memorises them, then
    `minmo eval` on the same samples must decode them: WER <= 0.1. The instruction is the same
    for all three, so the audio alone picks the transcript: this proves the decoding path
    (splice, left-padded batched greedy generate with a KV cache) agrees with the training
    path. (slow: ~60 training steps plus two tiny-model builds, ~20-30 s.)"""
    shards = tmp_path / "shards"
    texts = ["good morning", "thank you very much", "see you tomorrow"]
    write_stage_shards(_asr(tokenizer, texts), shards, "stage1")
    out = tmp_path / "ck"
    result = _train(tmp_path, "1c", shards, out, steps=60, batch=3)
    assert result.losses[-1] < 0.2, result.losses
    assert main(["-q", "eval", str(out / "final"), "--shards", str(shards)]) == 0
    doc = validate_eval(json.loads((out / "eval.json").read_text()))
    asr = doc["tasks"]["asr"]
    assert asr["samples"] == 3 and asr["wer"]["reference_units"] == 9
    assert asr["wer"]["rate"] <= 0.1, asr["examples"]
    # The export's bytes depend on the weights only: peft writes target_modules from a set, in
    # the process's hash order (which differs between runs), so the export sorts it; otherwise
    # a rerun's re-export changes eval's fingerprint and the figures are scored again.
    lora = json.loads((out / "final" / "lora" / "adapter_config.json").read_text())
    assert (
        lora["target_modules"] == sorted(lora["target_modules"]) and len(lora["target_modules"]) > 1
    )


@pytest.mark.slow
def test_overfit_duplex_then_eval_reports_high_f1(tmp_path: Path, tokenizer: Any) -> None:
    """Train the duplex predictor (stage 4) on four calls until it memorises their labels, then
    `minmo eval` on them must find the turn-taking events: F1@5 >= 0.9 for both. The predictor's
    frames, the labels' frames and the events read off both line up only when eval reads the
    logits as training does. (slow: ~100 training steps plus two tiny-model builds.)"""
    shards = tmp_path / "shards"
    write_stage_shards(_duplex(tokenizer, 4), shards, "stage4")
    out = tmp_path / "ck"
    _train(tmp_path, "4", shards, out, steps=100, batch=4)
    assert main(["-q", "eval", str(out / "final"), "--shards", str(shards)]) == 0
    duplex = validate_eval(json.loads((out / "eval.json").read_text()))["tasks"]["duplex"]
    assert duplex["samples"] == 4 and duplex["frames"] == 80
    for event in ("assistant_turn_taking", "user_turn_taking"):
        assert duplex["f1"][event]["5"]["reference"] == 4
        assert duplex["f1"][event]["5"]["f1"] >= 0.9, duplex
    # Within 1 frame of each back-channel the memorised labels keep speaking; 10 frames on,
    # they reach the user's turn (a stop 3 frames after it), so K = 10 counts them as stopped.
    assert duplex["backchannels"] == 4
    assert duplex["backchannel_accuracy"]["1"] == 1.0, duplex
    assert duplex["backchannel_accuracy"]["10"] == 0.0, duplex
