"""The decode stage on pyarrow batches, without Ray."""

import json

import numpy as np
import pyarrow as pa
import soundfile as sf

from minmo.io.channel_uri import join_channels
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

    monkeypatch.setattr(stage, "load_source", boom)
    path = tmp_path / "ok.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000)
    (row,) = _run([SourceItem(str(path), corpus="t")])
    (reject,) = json.loads(row["quarantine_json"])
    assert reject["reason_code"] == "internal_error" and "simulated bug" in reject["detail"]


def test_a_two_file_call_is_one_stereo_recording(tmp_path, shared_data):
    """A recording stored one file per channel decodes to the same samples (and content hash)
    as the stereo file it was split from; a slightly short file is padded and noted; files
    that differ by more than `max_channel_skew_s` are quarantined with both lengths."""
    stereo_path = shared_data / "stereo_fasterwhisper_2ch" / "stereo_diarization.wav"
    stereo, rate = sf.read(stereo_path, dtype="int16")
    files = {}
    for name, right in (("same", stereo[:, 1]), ("short", stereo[:-800, 1])):
        files[name] = [tmp_path / f"{name}_a.wav", tmp_path / f"{name}_b.wav"]
        sf.write(files[name][0], stereo[:, 0], rate, subtype="PCM_16")
        sf.write(files[name][1], right, rate, subtype="PCM_16")
    whole = SourceItem(str(stereo_path), corpus="t")
    same, short = (SourceItem(join_channels([str(p) for p in files[n]]), corpus="t") for n in files)
    rows = _run([whole, same, short])
    infos = [json.loads(r["info_json"]) for r in rows]
    assert [(i["channels"], i["source_channels"]) for i in infos] == [(2, 2)] * 3
    assert infos[1]["content_sha1"] == infos[0]["content_sha1"]
    assert infos[1]["recording_id"] != infos[0]["recording_id"]  # another source, another id
    assert infos[1]["bytes"] == sum(p.stat().st_size for p in files["same"])
    assert rows[1]["pcm"] == rows[0]["pcm"]
    assert json.loads(rows[1]["quarantine_json"]) == []
    (note,) = json.loads(rows[2]["quarantine_json"])
    assert note["reason_code"] == "channels_padded"
    assert "short_b.wav (4.950 s) padded with 0.050 s" in note["detail"]

    strict = _run([short], max_channel_skew_s=0.01)
    (refused,) = json.loads(strict[0]["quarantine_json"])
    assert refused["reason_code"] == "channel_length_mismatch" and strict[0]["pcm"] == b""
    assert "5.000 s" in refused["detail"] and "4.950 s" in refused["detail"]
