"""`minmo eval` on a training run's DCP step directories (the step recorded, so one run's steps
give a curve) and under torchrun (each rank a share, the counts merged: the single process's
eval.json)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from minmo.cli import main
from minmo.eval.model import describe_step, load_step
from minmo.tokens.text import load_text_tokenizer
from minmo.train.checkpoint import export
from minmo.train.config import ModelSpec, TrainConfig
from minmo.train.loop import build_model, train
from pipelines.shards.writer import write_stage_shards
from schemas.eval import validate_eval
from tests.eval.test_eval import _asr, _chat_lid_tts, _duplex

REPO = Path(__file__).resolve().parents[2]
# What differs between two runs of the same figures: time, ranks, and the file's own place.
_RUN_FIELDS = ("wall_s", "ranks")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_text_tokenizer(None)


def _figures(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in _RUN_FIELDS}


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    """Equal, floats to relative 1e-9 (sums added in another order), everything else exactly."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9), where
    else:
        assert a == b, where


def test_step_dirs_are_scored_with_their_step(
    tmp_path: Path, tokenizer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two steps of stage 1b saved as DCP step directories: each is scored, its step recorded;
    the last step's figures are the export's (same weights, loaded another way); without the
    run's export the command line's spec and seed rebuild the same model; a step directory of
    stage 1b on duplex shards is refused naming the missing predictor."""
    shards = tmp_path / "stage1"
    write_stage_shards(_asr(tokenizer, ["good morning", "thank you"]), shards, "stage1")
    out = tmp_path / "ck"
    config = TrainConfig(
        stage="1b",
        steps=2,
        lr=1e-2,
        warmup_steps=1,
        max_samples=2,
        num_workers=0,
        tensorboard=False,
        save_every=1,
        keep_last=2,
        shards=str(shards),
        out=str(out),
    )
    train(config, str(tmp_path), progress=False)
    limits = ["--shards", str(shards), "--max-new-tokens", "4"]
    docs = {}
    for name in ("step-00000001", "step-00000002", "final"):
        assert main(["-q", "eval", str(out / name), *limits]) == 0
        where = out / "eval.json" if name == "final" else out / "eval" / name / "eval.json"
        docs[name] = validate_eval(json.loads(where.read_text()))
    assert [docs[n]["step"] for n in docs] == [1, 2, 2]
    assert all(d["stage"] == "1b" for d in docs.values())
    assert docs["step-00000002"]["modules"] == ["input_projector", "voice_encoder"]
    assert docs["step-00000002"]["tasks"] == docs["final"]["tasks"]
    assert docs["step-00000001"]["fingerprint"] != docs["step-00000002"]["fingerprint"]

    # The weights are the step's: step 2's are the export's, step 1's are not.
    exported = torch.load(out / "final" / "input_projector.pt", weights_only=True)
    for name, same in (("step-00000002", True), ("step-00000001", False)):
        step = describe_step(out / name, out / "final")
        loaded = load_step(step, ModelSpec(), 0, "cpu").model.input_projector.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in exported.items()) is same, name

    # A run killed before its export: nothing beside the steps records the spec or the seed;
    # the command line's (here the trainer's defaults) rebuild the model.
    shutil.rmtree(out / "final")
    alone = tmp_path / "alone.json"
    assert main(["-q", "eval", str(out / "step-00000002"), *limits, "--out", str(alone)]) == 0
    doc = validate_eval(json.loads(alone.read_text()))
    assert doc["stage"] == "1b" and doc["step"] == 2
    assert doc["tasks"] == docs["final"]["tasks"]

    stage4 = tmp_path / "stage4"
    write_stage_shards(_duplex(tokenizer, 1), stage4, "stage4")
    capsys.readouterr()
    assert main(["-q", "eval", str(out / "step-00000001"), "--shards", str(stage4)]) == 2
    text = capsys.readouterr().err
    assert "has no trained duplex" in text and "step-00000001" in text and str(stage4) in text


@pytest.mark.slow
def test_torchrun_two_ranks_give_the_single_process_eval_json(
    tmp_path: Path, tokenizer: Any
) -> None:
    """Two gloo ranks each score half the samples and rank 0 writes the merged counts: the
    eval.json equals the single process's (batches of 3 and shares of 3 and 4 samples, so both
    runs form the same batches and only the merge differs). (slow: two more processes import torch and build the tiny
    model, ~20 s on this 2-core machine.)"""
    shards = tmp_path / "mixed"
    samples = _asr(tokenizer, ["good morning", "thank you"]) + _duplex(tokenizer, 2)
    write_stage_shards(samples + _chat_lid_tts(tokenizer), shards, "stage1", max_samples=2)
    torch.manual_seed(3)
    model = build_model(ModelSpec(), tokenizer)
    modules = ["duplex", "input_projector", "output_projector", "voice_lm"]
    final = export(tmp_path / "ck", model, modules, "4", 0, meta={"seed": 3, "step": 7})
    assert final is not None
    args = ["eval", str(final), "--shards", str(shards), "--batch-size", "3"]
    args += ["--max-new-tokens", "4", "--redo"]
    single, double = tmp_path / "single.json", tmp_path / "double.json"
    assert main(["-q", *args, "--out", str(single)]) == 0
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd = [*launcher, "--nproc-per-node=2", "-m", "minmo.cli", "-q", *args, "--out", str(double)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    one = validate_eval(json.loads(single.read_text()))
    two = validate_eval(json.loads(double.read_text()))
    assert one["ranks"] == 1 and two["ranks"] == 2 and two["samples"] == 7
    assert sorted(two["tasks"]) == ["asr", "duplex", "language_id", "s2t_chat", "tts"]
    # Counts are integers and equal exactly; float sums (NLL, audio seconds) to rounding.
    _assert_same(_figures(two), _figures(one))
    assert json.dumps(two["tasks"]["duplex"]) == json.dumps(one["tasks"]["duplex"])
    assert two["tasks"]["asr"] == one["tasks"]["asr"]
