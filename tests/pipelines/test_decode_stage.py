"""The decode stage on pyarrow batches, without Ray."""

import json

import numpy as np
import pyarrow as pa
import soundfile as sf

from pipelines.ingest.config import IngestConfig
from pipelines.ingest.decode_stage import decode_batch
from pipelines.ingest.items import SourceItem


def _run(items, **config):
    batch = pa.table(
        {
            "order": list(range(len(items))),
            "item_json": [json.dumps(i.to_row()) for i in items],
        }
    )
    return decode_batch(batch, IngestConfig(**config).to_dict()).to_pylist()


def test_good_file_is_measured_and_resampled(tmp_path, shared_data):
    item = SourceItem(str(shared_data / "asr_whisper_jfk" / "jfk.flac"), corpus="jfk", text="x")
    (row,) = _run([item])
    info = json.loads(row["info_json"])
    assert json.loads(row["quarantine_json"]) == []
    assert info["sample_rate_hz"] == 44100 and info["bits"] == 24
    assert info["source_channels"] == 2 and info["channels"] == 1  # dual mono folded
    assert abs(info["duration_s"] - 11.0) < 0.01
    pcm = np.frombuffer(row["pcm"], dtype="<f4")
    assert abs(pcm.size / 16000 - info["duration_s"]) < 0.01


def test_bad_items_become_quarantine_rows(tmp_path):
    nan = tmp_path / "nan.wav"
    data = np.zeros(16000, np.float32)
    data[100] = np.nan
    sf.write(nan, data, 16000, subtype="FLOAT")
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(160, np.float32), 16000)
    low = tmp_path / "low.wav"
    sf.write(low, np.zeros(8000, np.float32), 4000)
    many = tmp_path / "many.wav"
    sf.write(many, np.random.default_rng(0).standard_normal((16000, 3)) * 0.1, 16000)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF not really" * 50)
    wordy = tmp_path / "wordy.wav"
    sf.write(wordy, np.zeros(16000, np.float32), 16000)
    unreadable = tmp_path / "a_directory.wav"
    unreadable.mkdir()
    items = [
        SourceItem(str(p), corpus="t", text=("a" * 500 if p == wordy else None))
        for p in (nan, short, low, many, empty, junk, wordy, tmp_path / "missing.wav", unreadable)
    ]
    rows = _run(items)
    reasons = [json.loads(r["quarantine_json"])[0]["reason_code"] for r in rows]
    assert reasons == [
        "non_finite_samples",
        "too_short",
        "unsupported_sample_rate",
        "unsupported_channels",
        "empty_audio",
        "undecodable",
        "text_audio_mismatch",
        "missing_file",
        "read_error",
    ]
    assert all(r["pcm"] == b"" and r["info_json"] == "" for r in rows)


def test_too_long_is_configurable(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(16000 * 3, np.float32), 16000)
    (row,) = _run([SourceItem(str(path), corpus="t")], max_duration_s=2.0)
    assert json.loads(row["quarantine_json"])[0]["reason_code"] == "too_long"


def test_a_bug_is_quarantined_not_raised(tmp_path, monkeypatch):
    import pipelines.ingest.decode_stage as stage

    def boom(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(stage, "decode_audio", boom)
    path = tmp_path / "ok.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000)
    (row,) = _run([SourceItem(str(path), corpus="t")])
    (reject,) = json.loads(row["quarantine_json"])
    assert reject["reason_code"] == "internal_error" and "simulated bug" in reject["detail"]
