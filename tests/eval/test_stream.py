"""`minmo chat` and `minmo duplex-sim`: the streaming paths on a tiny random model exported as a
stage's `final/` (the same helpers as tests/eval/test_eval.py), a real two-channel call, and the
refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from minmo.cli import main
from minmo.duplex.labels import DuplexLabelConfig
from minmo.eval.chat import chat_batch
from minmo.eval.duplex_sim import response_latencies
from minmo.eval.model import greedy_decode, load_checkpoint
from minmo.eval.stream import stream_reply
from minmo.tokens.text import load_text_tokenizer
from minmo.train.checkpoint import export
from minmo.train.config import ModelSpec
from minmo.train.loop import build_model
from schemas.duplex import EventType, FrameLabel
from schemas.units import SAMPLE_RATE_HZ

CALL = Path("../shared/data/stereo_aws_lca_autorepairs40/Auto_Repairs_40_UTC_stereo.wav")


@pytest.fixture(scope="module")
def stage4_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny model exported as if stage 4 had run after stages 2-3."""
    tokenizer = load_text_tokenizer(None)
    torch.manual_seed(3)
    model = build_model(ModelSpec(), tokenizer)
    modules = ["duplex", "output_projector", "voice_lm"]
    meta = {"model": {"size": "tiny"}, "seed": 3}
    final = export(tmp_path_factory.mktemp("ck"), model, modules, "4", 0, meta=meta)
    assert final is not None
    return final


def _fake_export(path: Path, stage: str, modules: list[str]) -> Path:
    path.mkdir(parents=True)
    (path / "export.json").write_text(json.dumps({"stage": stage, "modules": modules}))
    return path


def _wav(path: Path, seconds: float, channels: int = 1) -> Path:
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal((round(seconds * SAMPLE_RATE_HZ), channels)) * 0.1).astype(
        np.float32
    )
    sf.write(path, audio, SAMPLE_RATE_HZ)
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["-q", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_streamed_reply_equals_the_batched_greedy_decode(stage4_export: Path, tmp_path: Path):
    """The token-by-token reply (one prefill, then one token per step with the KV cache) says
    what `minmo eval`'s batched `generate` says, and its speech comes 15 tokens per 5 text
    tokens."""
    ckpt = load_checkpoint(stage4_export, ModelSpec(), 0, "cpu")
    wave = np.random.default_rng(1).standard_normal(12_000).astype(np.float32) * 0.1
    batch = chat_batch(ckpt.tokenizer, wave, "Answer me.")
    (expected,) = greedy_decode(ckpt.model, batch, 12)
    reply = stream_reply(ckpt.model, batch, max_new_tokens=12, max_speech_tokens=200)
    assert len(expected) >= 5, expected  # long enough for at least one 5:15 chunk
    assert reply.text_ids == expected
    streamed = [c for c in reply.chunks if not c.final]
    assert [c.n_semantic for c in streamed] == [5 * (i + 1) for i in range(len(streamed))]
    assert all(len(c.tokens) <= 15 for c in streamed)
    assert reply.chunks[-1].final and reply.chunks[-1].n_semantic == len(expected)
    assert reply.speech_tokens.size == sum(len(c.tokens) for c in reply.chunks)
    assert reply.llm_step_s is not None and len(reply.llm_steps_s) == len(expected)


def test_chat_prints_the_reply_writes_tokens_and_the_latency_budget(
    stage4_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audio = _wav(tmp_path / "q.wav", 0.6)
    out = tmp_path / "out"
    code, text = _run(
        capsys, "chat", str(stage4_export), str(audio), "--out", str(out),
        "--min-new-tokens", "5", "--max-new-tokens", "5", "--max-speech-tokens", "40",
    )  # fmt: skip
    assert code == 0, text
    assert "reply: " in text and "5 text tokens" in text
    for term, paper in (("d_predictor", 250), ("5 x d_llm", 150), ("15 x d_lm", 70)):
        line = next(x for x in text.splitlines() if x.strip().startswith(term))
        assert " ms" in line and f"{paper} ms" in line
    assert "token2wav      n/a (no CosyVoice 2)" in text
    tokens = np.load(out / "speech_tokens.npy")
    doc = json.loads((out / "chat.json").read_text())
    assert tokens.dtype == np.int32 and 0 < tokens.size <= 40
    assert ((tokens >= 0) & (tokens < 6561)).all()
    assert doc["speech_tokens"] == tokens.size and len(doc["text_ids"]) == 5
    terms = doc["latency"]["terms_ms"]
    assert terms["token2wav"] is None
    assert all(terms[k] > 0 for k in ("d_predictor", "5 x d_llm", "15 x d_lm"))


def test_chat_and_duplex_sim_refuse_what_they_cannot_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before any model is built: a stage-1 export (no output projector, no duplex
    predictor), CosyVoice 2's token2wav (the documented gap), a mono call."""
    stage1 = _fake_export(tmp_path / "1b" / "final", "1b", ["input_projector", "voice_encoder"])
    audio = _wav(tmp_path / "q.wav", 0.3)
    code, text = _run(capsys, "chat", str(stage1), str(audio))
    assert code == 2 and "has no trained output_projector" in text and "'chat'" in text
    code, text = _run(capsys, "duplex-sim", str(stage1), str(CALL))
    assert code == 2 and "has no trained duplex" in text and str(CALL) in text
    stage4 = _fake_export(tmp_path / "4" / "final", "4", ["duplex"])
    code, text = _run(capsys, "duplex-sim", str(stage4), str(audio))
    assert code == 2 and "1 channel" in text and "one party per channel" in text
    stage3 = _fake_export(tmp_path / "3" / "final", "3", ["output_projector", "voice_lm"])
    code, text = _run(capsys, "chat", str(stage3), str(audio), "--cosyvoice2", str(tmp_path))
    assert code == 2 and "not installable from PyPI" in text and "speech tokens" in text


def test_duplex_sim_streams_a_real_call(
    stage4_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first 12 s of a real 8 kHz customer-service call, the agent's channel (1) playing the
    user: it talks first and hands over to the caller around 6 s, so the call's own labels hold
    one assistant turn-taking. Every 120 ms step gives a decision with its times; the scores and
    the response latency are computed against those labels (the model is random: their values
    are not asserted good)."""
    out = tmp_path / "sim" / "decisions.jsonl"
    code, text = _run(
        capsys, "duplex-sim", str(stage4_export), str(CALL), "--user-channel", "1",
        "--max-duration-s", "12", "--out", str(out),
    )  # fmt: skip
    assert code == 0, text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 100
    assert [r["frame"] for r in rows] == list(range(100))
    assert rows[1]["time_s"] == pytest.approx(0.12) and rows[1]["decided_s"] == pytest.approx(0.24)
    assert {r["decision"] for r in rows} <= {"listen", "speak", "keep", "stop"}
    assert {r["reference"] for r in rows} >= {"speak", "keep"}
    assert any(r["assistant_active"] for r in rows)
    summary = json.loads((tmp_path / "sim" / "decisions.summary.json").read_text())
    att = summary["f1"]["assistant_turn_taking"]
    assert att["5"]["reference"] == 1 and 0.0 <= att["5"]["f1"] <= 1.0
    assert summary["response_latency"]["turns"] == 1
    assert summary["steps"] == 100 and summary["step_ms"] > 0
    assert "response latency" in text and "F1@5" in text and "reference back-channels" in text
    assert "user_backchannel" not in text  # no F1 for an event the decisions cannot state


def test_response_latency_is_measured_from_the_turn_end_to_the_speak_decision() -> None:
    hop = DuplexLabelConfig().hop_s
    reference = [
        (EventType.ASSISTANT_TURN_TAKING, 1.0),  # frame 8; answered at frame 10 -> 1.32 - 1.0
        (EventType.USER_TURN_TAKING, 2.0),
        (EventType.ASSISTANT_TURN_TAKING, 3.0),  # no speak before the end: unanswered
    ]
    decisions = np.zeros(40, dtype=np.int8)
    decisions[[2, 10, 12]] = FrameLabel.SPEAK_NOW  # frame 2 precedes the turn end: not counted
    latencies = response_latencies(reference, decisions, hop)
    assert latencies[0] == pytest.approx(11 * hop - 1.0) and latencies[1] is None
