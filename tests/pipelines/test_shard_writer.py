"""The shard writer when Ray runs one group twice: a task that finished on a node lost
afterwards is re-executed elsewhere (lineage reconstruction). The commit already made stands."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.build import BuildDir, StepLedger
from pipelines.shards import step as shard_step
from pipelines.shards.records import STEP, shard_unit
from pipelines.shards.step import ShardWriter, WriterParams


def _params(build: Path) -> dict:
    return asdict(
        WriterParams(
            build_uri=str(build),
            storage_options={},
            stage="stage1",
            generation=0,
            max_samples=100,
            max_bytes=1 << 30,
            batch_size=4,
            bucket_edges_s=[],
            text_tokenizer=None,
            speech_tokenizer=None,
            encode_audio=False,  # the plan-only writer: no audio or tokenizers needed
            run_id="test-run",
        )
    )


def _group(shard: int, n: int) -> pa.Table:
    specs = [json.dumps({"key": f"k{i}", "task": "asr"}) for i in range(n)]
    return pa.table(
        {
            "order": list(range(n)),
            "key": [f"k{i}" for i in range(n)],
            "shard": [shard] * n,
            "split": ["train"] * n,
            "spec": specs,
            "est_bytes": [1000] * n,
            "bucket": [0] * n,
        }
    )


def test_a_retried_group_leaves_its_commit_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = tmp_path / "build"
    first = ShardWriter(_params(build))(_group(3, 5))
    unit = shard_unit("stage1", 0, 3)
    ledger = StepLedger(BuildDir(str(build)), STEP, ("quarantine",))
    marker_path = Path(ledger.done_dir) / f"{unit}.json"
    marker = marker_path.read_bytes()
    tars = sorted((build / "shards" / "stage1").rglob("*.tar"))
    assert len(tars) == 1
    written = {t: t.stat().st_mtime_ns for t in tars}

    # The retry runs on another node: were it to write again, its marker would say so.
    monkeypatch.setattr(shard_step, "_node_id", lambda: "another-node")
    again = ShardWriter(_params(build))(_group(3, 5))

    assert marker_path.read_bytes() == marker
    assert {t: t.stat().st_mtime_ns for t in tars} == written
    assert again.column("unit").to_pylist() == first.column("unit").to_pylist() == [unit]
    returned = json.loads(again.column("marker")[0].as_py())
    assert returned["shards"] == json.loads(first.column("marker")[0].as_py())["shards"]
