"""The ingest worker without Ray (one batch -> staged tables), and its pool on a local Ray."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
import soundfile as sf

from pipelines.ingest.config import IngestConfig
from pipelines.ingest.items import SourceItem
from pipelines.ingest.worker import IngestWorker, WorkerPool


def _batch(items: list[SourceItem], first: int = 0) -> list[tuple[int, str]]:
    return [(first + i, json.dumps(item.to_row())) for i, item in enumerate(items)]


def _rows(path) -> dict[str, int]:
    counts = {}
    for table in ("recordings", "segments", "quarantine"):
        files = sorted(str(p) for p in (path / table).glob("*.parquet"))
        counts[table] = pads.dataset(files).count_rows() if files else 0
    return counts


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    staging = tmp_path_factory.mktemp("staging")
    # vad_batch_size=2: the three good files below take two VAD calls in one batch.
    config = IngestConfig(vad_batch_size=2).to_dict()
    return IngestWorker(config, pafs.LocalFileSystem(), str(staging)), staging


def test_a_batch_is_staged_in_listing_order_and_a_retry_overwrites_it(worker, shared_data):
    ingest, staging = worker
    speech = sorted((shared_data / "asr_speechbrain_en").glob("spk1_*.wav"))[:3]
    items = [SourceItem(str(p), corpus="c") for p in speech]
    items.insert(1, SourceItem(str(staging / "missing.wav"), corpus="c"))
    batch = _batch(items, first=7)

    assert ingest.process("u1", batch) == ("u1", 4)  # a count, never rows or audio
    first = _rows(staging / "u1")
    assert first["recordings"] == 3 and first["quarantine"] == 1 and first["segments"] > 0
    recordings = pads.dataset(str(staging / "u1" / "recordings")).to_table().to_pylist()
    assert [r["source_uri"] for r in recordings] == [str(p) for p in speech]
    assert sorted(p.name for p in (staging / "u1" / "recordings").iterdir()) == [
        "000000000007.parquet"
    ]

    ingest.process("u1", batch)  # a retried batch (its worker died after writing)
    assert _rows(staging / "u1") == first


def test_batches_and_vad_calls_do_not_change_the_rows(worker, shared_data, tmp_path):
    """Cutting a unit into more batches, or its audio into more VAD calls, gives equal rows."""
    ingest, staging = worker
    speech = sorted((shared_data / "asr_speechbrain_en").glob("spk1_*.wav"))[:4]
    items = [SourceItem(str(p), corpus="c") for p in speech]
    ingest.process("whole", _batch(items))
    ingest.process("split", _batch(items[:1]))
    ingest.process("split", _batch(items[1:], first=1))

    def table(unit: str, name: str) -> list[dict]:
        rows = pads.dataset(str(staging / unit / name)).to_table().to_pylist()
        return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))

    for name in ("recordings", "segments"):
        whole, split = table("whole", name), table("split", name)
        assert len(whole) == len(split) > 0
        for a, b in zip(whole, split, strict=True):
            probs = ("speech_prob", "speech_ratio", "snr_db")
            assert {k: v for k, v in a.items() if k not in probs} == {
                k: v for k, v in b.items() if k not in probs
            }
            for key in probs:
                if key in a and a[key] is not None:
                    assert a[key] == pytest.approx(b[key], abs=1e-4)


@pytest.mark.slow
def test_one_pool_serves_every_unit_of_a_run(tmp_path, monkeypatch):
    """Units run through one pool that starts no more workers than asked, however many units
    (and, before, waves) the run has."""
    from pipelines.ingest.run import run_ingest

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        sf.write(src / f"f{i}.wav", (rng.standard_normal(8000) * 0.05).astype(np.float32), 16000)
    pools: list[int] = []
    close = WorkerPool.close

    def spy(self: WorkerPool) -> None:
        pools.append(len(self.actors))
        close(self)

    monkeypatch.setattr(WorkerPool, "close", spy)
    config = IngestConfig(files_per_unit=2, units_per_wave=1, files_per_task=1, vad_actors=1)
    summary = run_ingest(str(src), str(tmp_path / "build"), config, progress=False)
    assert summary.units_run == 3 and summary.recordings == 6
    assert pools == [1]
    again = run_ingest(str(src), str(tmp_path / "build"), config, progress=False)
    assert again.units_skipped == 3 and pools == [1]  # nothing to run: no pool at all
