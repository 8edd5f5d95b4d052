"""A job's `eval` step on a build: each named stage's export scored on its held-out split into
DIR/eval/<stage>/eval.json, kept on a rerun while the export and shards are the same, and the
same on an object-store build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
import torch

from minmo.cli.jobs import run_job
from minmo.io.trees import upload_tree
from minmo.tokens.text import load_text_tokenizer
from minmo.train.checkpoint import export
from minmo.train.config import ModelSpec
from minmo.train.loop import build_model
from pipelines.shards.writer import write_stage_shards
from schemas.eval import validate_eval
from tests.eval.test_eval import _asr

MODULES = ["input_projector", "voice_encoder"]


def _export(out: Path, seed: int) -> Path:
    """A random tiny model exported as stage 1b at step 12 (what eval needs; no training)."""
    tokenizer = load_text_tokenizer(None)
    torch.manual_seed(seed)
    model = build_model(ModelSpec(), tokenizer)
    meta = {"model": {"size": "tiny"}, "seed": seed, "step": 12}
    final = export(out, model, MODULES, "1b", 0, meta=meta)
    assert final is not None
    return final


def _job(tmp_path: Path) -> Path:
    spec = tmp_path / "job.yaml"
    spec.write_text('steps: [eval]\neval: {stages: ["1b"], split: test, max_new_tokens: 4}\n')
    return spec


def _run(spec: Path, build: str, capsys: pytest.CaptureFixture[str], **options: Any) -> str:
    run_job(spec, build, progress=False, storage_options=options or None)
    return capsys.readouterr().out


@pytest.mark.slow
def test_eval_step_scores_the_build_and_a_rerun_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], moto_s3_options: dict[str, Any]
) -> None:
    """(slow: three tiny-model exports and four 2-sample evals, ~40 s on this shared 2-core
    machine; one test so that they share the build.)"""
    build = tmp_path / "build"
    tokenizer = load_text_tokenizer(None)
    write_stage_shards(
        _asr(tokenizer, ["good morning", "thank you"]), build / "shards/stage1/test", "stage1"
    )
    _export(build / "checkpoints/1b", seed=3)
    spec = _job(tmp_path)

    out = _run(spec, str(build), capsys)
    result = build / "eval" / "1b" / "eval.json"
    doc = validate_eval(json.loads(result.read_text()))
    assert doc["stage"] == "1b" and doc["step"] == 12 and doc["samples"] == 2
    assert doc["checkpoint"] == str(build / "checkpoints/1b/final")
    assert doc["shards"] == str(build / "shards/stage1/test")
    assert doc["tasks"]["asr"]["wer"]["reference_units"] == 4
    assert "kept" not in out
    first = result.read_bytes()

    # The trainer re-exports on a rerun of a finished stage: the same weights keep the figures.
    _export(build / "checkpoints/1b", seed=3)
    assert "kept from the last run (same export, shards and limits)" in _run(
        spec, str(build), capsys
    )
    assert result.read_bytes() == first
    # Other weights are another checkpoint: scored again.
    _export(build / "checkpoints/1b", seed=4)
    assert "kept" not in _run(spec, str(build), capsys)
    assert json.loads(result.read_bytes())["fingerprint"] != json.loads(first)["fingerprint"]

    # The same build on an object store: the export is read from it, eval.json written to it.
    s3 = pafs.S3FileSystem(**moto_s3_options, allow_bucket_creation=True)
    s3.create_dir("eval-build")
    for part in ("shards", "checkpoints"):
        upload_tree(build / part, s3, f"eval-build/b/{part}")
    out = _run(spec, "s3://eval-build/b", capsys, **moto_s3_options)
    with s3.open_input_stream("eval-build/b/eval/1b/eval.json") as f:
        remote = validate_eval(json.loads(f.read()))
    assert remote["checkpoint"] == "s3://eval-build/b/checkpoints/1b/final"
    assert remote["fingerprint"] == json.loads(result.read_bytes())["fingerprint"]
    assert "kept" in _run(spec, "s3://eval-build/b", capsys, **moto_s3_options)
