"""End-to-end ingest on Ray Data: real speech in every layout, hostile input, resume, S3, cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import soundfile as sf

from pipelines.build import BuildDir
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.run import read_table, run_ingest
from schemas import RECORDINGS, ReasonCode

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _tables(build: str) -> dict:
    b = BuildDir(build)
    return {name: read_table(b, name) for name in ("recordings", "segments", "quarantine")}


def _canonical(tables: dict) -> dict:
    """Tables as sorted row lists, so two builds can be compared regardless of file order."""
    keys = {"recordings": "recording_id", "segments": "segment_id", "quarantine": "source_uri"}
    out = {}
    for name, table in tables.items():
        rows = table.to_pylist()
        out[name] = sorted(
            rows, key=lambda r, k=keys[name]: (r[k], json.dumps(r, sort_keys=True, default=str))
        )
    return out


def _by_name(recordings, name: str) -> dict:
    rows = [r for r in recordings.to_pylist() if r["source_uri"].endswith(name)]
    assert len(rows) == 1, f"{name}: {len(rows)} recordings"
    return rows[0]


def test_every_shared_data_folder(tmp_path, shared_data):
    build = str(tmp_path / "build")
    folders = [str(p) for p in sorted(shared_data.iterdir()) if p.is_dir()]
    summary = run_ingest(folders, build, IngestConfig(), progress=False)
    assert summary.units_run == 1 and summary.run_files == summary.recordings == 31
    tables = _tables(build)
    recs, segs, quarantine = tables["recordings"], tables["segments"], tables["quarantine"]
    RECORDINGS.validate(recs)
    # Two manifest entries name audio that the shared folders do not hold: the full AMI meeting
    # behind the supervisions file, and the second LibriSpeech track of a mixed cut.
    assert sorted(quarantine.column("item_key").to_pylist()) == ["2412-153948-0001", "ES2011a"]
    assert set(quarantine.column("reason_code").to_pylist()) == {"missing_file"}

    jfk = _by_name(recs, "jfk.flac")
    assert (jfk["sample_rate_hz"], jfk["bits"], jfk["source_channels"], jfk["channels"]) == (
        44100,
        24,
        2,
        1,
    )
    assert "ask not what your country" in jfk["transcript"].lower()
    mp3 = _by_name(recs, "multilingual.mp3")
    assert mp3["container"] == "mp3" and mp3["bits"] is None and abs(mp3["duration_s"] - 60) < 1
    call = _by_name(recs, "Auto_Repairs_40_UTC_stereo.wav")
    assert (call["sample_rate_hz"], call["channels"]) == (8000, 2)
    call_segments = [s for s in segs.to_pylist() if s["recording_id"] == call["recording_id"]]
    assert {s["channel"] for s in call_segments} == {0, 1}
    assert all(s["duration_s"] <= 30.0 + 1e-6 for s in call_segments)
    lj = [r for r in recs.to_pylist() if r["sample_rate_hz"] == 22050]
    assert lj, "the LJSpeech 22.05 kHz wavs were ingested"

    zh_ref = (shared_data / "asr_wenet_zh_en" / "text").read_text(encoding="utf-8")
    aishell = _by_name(recs, "aishell-BAC009S0724W0121.wav")
    assert aishell["transcript"] and aishell["transcript"] in zh_ref
    multilang = {
        Path(r["source_uri"]).stem: r["transcript"]
        for r in recs.to_pylist()
        if "asr_sensevoice_multilang" in r["source_uri"]
    }
    tsv = (shared_data / "asr_sensevoice_multilang" / "text.tsv").read_text(encoding="utf-8")
    for lang in ("zh", "ja", "ko", "yue"):
        assert multilang[lang] and multilang[lang] in tsv

    ami_segments = [s for s in segs.to_pylist() if s["origin"] == "supervision" and s["speaker"]]
    assert ami_segments, "Lhotse/Kaldi supervisions become segments with speakers"
    for row in recs.to_pylist():
        assert 0.0 <= row["speech_ratio"] <= 1.0
        assert row["peak_dbfs"] <= 0.5
    speechy = [r for r in recs.to_pylist() if "vad_speechbrain" in r["source_uri"]]
    assert all(r["speech_ratio"] > 0.2 for r in speechy)


def _hostile_corpus(root: Path) -> Path:
    """One manifest with every kind of bad input beside one good file."""
    rng = np.random.default_rng(0)
    good = root / "good.wav"
    sf.write(good, (rng.standard_normal(16000 * 2) * 0.05).astype(np.float32), 16000)
    nan = root / "nan.wav"
    data = np.zeros(16000, np.float32)
    data[10] = np.inf
    sf.write(nan, data, 16000, subtype="FLOAT")
    sf.write(root / "short.wav", np.zeros(100, np.float32), 16000)
    sf.write(root / "wordy.wav", np.zeros(16000, np.float32), 16000)
    sf.write(root / "long.wav", np.zeros(16000 * 8, np.float32), 16000)
    sf.write(root / "rate.wav", np.zeros(4000, np.float32), 2000)
    sf.write(root / "quad.wav", rng.standard_normal((16000, 4)) * 0.1, 16000)
    (root / "empty.wav").write_bytes(b"")
    (root / "corrupt.flac").write_bytes(b"fLaC" + bytes(rng.integers(0, 255, 3000, dtype=np.uint8)))
    lines = [
        # an age that is no number: quarantined as bad_label, the recording kept without it
        {"path": "good.wav", "text": "a fine utterance", "language": "en", "age": "old"},
        {"path": "good.wav", "text": "the same file listed again"},
        {"path": "nan.wav"},
        {"path": "short.wav"},
        {"path": "long.wav"},
        {"path": "rate.wav"},
        {"path": "quad.wav"},
        {"path": "empty.wav"},
        {"path": "corrupt.flac"},
        {"path": "missing.wav"},
        {"path": "good.wav", "text": "   "},
        {"path": "wordy.wav", "text": "x" * 1000},
        {"text": "no path at all"},
        {"path": ["good.wav", "short.wav"]},  # one file per channel, 2 s and 6 ms long
    ]
    manifest = root / "manifest.jsonl"
    with manifest.open("wb") as f:
        for line in lines:
            f.write(json.dumps(line).encode() + b"\n")
        f.write(b"{this is not json\n")
        f.write(b'{"path": "good.wav", "text": "caf\xe9 latin-1"}\n')
    kaldi = root / "kaldi"
    kaldi.mkdir()
    copy = kaldi / "copy_of_good.wav"
    copy.write_bytes(good.read_bytes())
    (kaldi / "wav.scp").write_text(f"rec1 {copy}\nrec2 sox in.wav -t wav - |\n")
    (kaldi / "segments").write_text("u1 rec1 0.0 1.0\nu2 rec1 1.5 1.2\nu3 rec1 5.0 9.0\n")
    (kaldi / "text").write_text("u1 hello\nu2 backwards\nu3 past the end\n")
    (kaldi / "utt2spk").write_text("u1 s1\nu2 s1\nu3 s1\n")
    return manifest


def test_hostile_input_never_crashes_and_every_reason_is_counted(tmp_path):
    manifest = _hostile_corpus(tmp_path)
    build = str(tmp_path / "build")
    config = IngestConfig(max_duration_s=5.0)
    run_ingest(str(manifest), build, config, progress=False)
    summary = run_ingest(str(tmp_path / "kaldi"), build, config, progress=False)
    quarantine = _tables(build)["quarantine"]
    reasons = set(quarantine.column("reason_code").to_pylist())
    expected = {r.value for r in ReasonCode} - {
        ReasonCode.INTERNAL_ERROR.value,
        ReasonCode.READ_ERROR.value,
        # refusals of the later steps (diarize, label-turns), tested there
        ReasonCode.NOT_MULTICHANNEL.value,
        ReasonCode.NO_SPEECH.value,
        ReasonCode.SINGLE_SPEAKER.value,
        ReasonCode.INDISTINCT_SPEAKERS.value,
        ReasonCode.NOT_TWO_PARTY.value,
        ReasonCode.BAD_DIALOGUE.value,
        ReasonCode.TTS_FAILED.value,
        ReasonCode.SAMPLE_FAILED.value,  # the shards step's, tested there
        # a directory walk's (links, FIFOs, folders, names): test_a_hostile_directory_...
        ReasonCode.NOT_A_FILE.value,
        ReasonCode.SYMLINK_LOOP.value,
        ReasonCode.BAD_FILENAME.value,
        # a note on a kept recording, whose row would change the counts below:
        # tests/pipelines/test_multi_source.py
        ReasonCode.CHANNELS_PADDED.value,
    }
    assert expected <= reasons, f"missing: {expected - reasons}: {quarantine.to_pylist()}"
    assert sum(summary.quarantined.values()) == quarantine.num_rows
    recs = _tables(build)["recordings"]
    assert recs.num_rows == 2  # good.wav from the manifest and its copy from the Kaldi dir
    dup = [r for r in recs.to_pylist() if r["dup_of"]]
    assert len(dup) == 1, "the same audio under another URI is marked as a duplicate"
    assert dup[0]["source_uri"].endswith("copy_of_good.wav")
    assert summary.already_ingested == 1  # good.wav's second manifest row
    (bad_label,) = [q for q in quarantine.to_pylist() if q["reason_code"] == "bad_label"]
    assert bad_label["detail"].startswith("manifest.jsonl#line 1: age: ")
    assert bad_label["source_uri"].endswith("good.wav")
    again = run_ingest(str(manifest), build, config, progress=False)
    assert again.units_run == 0 and again.recordings == 2
    kaldi_segments = _tables(build)["segments"].to_pylist()
    assert [
        s["text"] for s in kaldi_segments if s["origin"] == "supervision" and s["text"] == "hello"
    ]


def test_a_hostile_directory_is_accounted_for_entry_by_entry(tmp_path):
    """Every entry with an audio name, and every orphan transcript, ends as a recording or a
    quarantine row with its reason, and the summary's counts add up to the entries listed."""
    root = tmp_path / "corpus"
    (root / "x.wav").mkdir(parents=True)  # a folder with an audio name, holding real audio
    tone = (np.sin(np.arange(32000) / 5) * 0.3).astype(np.float32)
    sf.write(root / "ok.wav", tone, 16000)
    (root / "ok.txt").write_text("a tone")
    sf.write(root / "x.wav" / "inner.wav", tone[::-1].copy(), 16000)
    (root / "garbage.wav").write_bytes(b"garbage" * 10)
    os.symlink("b.wav", root / "a.wav")
    os.symlink("a.wav", root / "b.wav")
    os.symlink("nowhere.wav", root / "dangling.wav")
    os.mkfifo(root / "pipe.wav")
    (root / os.fsdecode(b"bad\xff.wav")).write_bytes(b"RIFF")
    (root / "ghost.txt").write_text("its audio is missing")
    build = str(tmp_path / "build")
    summary = run_ingest(str(root), build, IngestConfig(), progress=False)
    reasons = {
        q["source_uri"].removeprefix(f"{root}/"): q["reason_code"]
        for q in _tables(build)["quarantine"].to_pylist()
    }
    assert reasons == {
        "a.wav": "symlink_loop",
        "b.wav": "symlink_loop",
        "bad\\xff.wav": "bad_filename",
        "dangling.wav": "missing_file",
        "garbage.wav": "undecodable",
        "ghost.txt": "missing_file",
        "pipe.wav": "not_a_file",
        "x.wav": "not_a_file",
    }
    assert summary.recordings == 2  # ok.wav and x.wav/inner.wav
    assert summary.listed == 10 == summary.recordings + summary.refused + summary.already_ingested
    assert summary.refused == len(reasons)
    assert "listed:   10 entries = 2 recordings + 8 refused + 0 already" in summary.render()
    again = run_ingest(str(root), build, IngestConfig(), progress=False)
    assert (again.units_run, again.listed, again.refused) == (0, 10, 8)


def _write_corpus(root: Path, n: int) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for i in range(n):
        t = np.arange(16000 * 2) / 16000
        tone = 0.3 * np.sin(2 * np.pi * (200 + 20 * i) * t) * (t % 1.0 < 0.6)
        sf.write(
            root / f"f{i:03d}.wav",
            (tone + rng.standard_normal(t.size) * 0.003).astype(np.float32),
            16000,
        )
        (root / f"f{i:03d}.txt").write_text(f"utterance {i}")
    (root / "bad.wav").write_bytes(b"garbage" * 10)
    return root


def test_resume_after_kill_gives_the_same_tables(tmp_path):
    src = _write_corpus(tmp_path / "src", 24)
    reference = str(tmp_path / "reference")
    # One unit per wave: units commit seconds apart, so the kill lands between two of them.
    config = IngestConfig(files_per_unit=5, units_per_wave=1)
    run_ingest(str(src), reference, config, progress=False)

    crashed = tmp_path / "crashed"
    command = [
        sys.executable,
        "-m",
        "minmo.cli",
        "-q",
        "ingest",
        str(src),
        "--build",
        str(crashed),
        "--files-per-unit",
        "5",
        "--units-per-wave",
        "1",
    ]
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    done = crashed / "_state" / "ingest" / "done"
    deadline = time.time() + 240
    while time.time() < deadline and not (done.is_dir() and len(list(done.glob("*.json"))) >= 2):
        assert proc.poll() is None, "the ingest finished before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = len(list(done.glob("*.json")))
    assert 2 <= committed < 5, committed

    summary = run_ingest(str(src), str(crashed), config, progress=False)
    assert summary.units_skipped == committed and summary.units_run == 5 - committed
    assert _canonical(_tables(str(crashed))) == _canonical(_tables(reference))
    again = run_ingest(str(src), str(crashed), config, progress=False)
    assert again.units_run == 0
    assert _canonical(_tables(str(crashed))) == _canonical(_tables(reference))
    ids = _tables(str(crashed))["recordings"].column("recording_id")
    assert len(pc.unique(ids)) == len(ids) == 24


def test_s3_source_and_build(tmp_path, shared_data, moto_s3_options):
    import pyarrow.fs as pafs

    options = moto_s3_options
    s3 = pafs.S3FileSystem(**options, allow_bucket_creation=True)
    s3.create_dir("corpus")
    for path in sorted((shared_data / "asr_speechbrain_en").glob("spk1_*.wav")):
        with s3.open_output_stream(f"corpus/audio/{path.name}") as out:
            out.write(path.read_bytes())
        with s3.open_output_stream(f"corpus/audio/{path.stem}.txt") as out:
            out.write(f"text of {path.stem}".encode())
    config = IngestConfig(storage_options=options)
    summary = run_ingest("s3://corpus/audio/", "s3://corpus/build", config, progress=False)
    recs = read_table(BuildDir("s3://corpus/build", **options), "recordings")
    assert s3.get_file_info("corpus/build/_state/ingest/summary.json").is_file
    assert recs.num_rows == 5, summary.render()
    assert all(
        uri.startswith("s3://corpus/audio/") for uri in recs.column("source_uri").to_pylist()
    )
    assert sorted(recs.column("transcript").to_pylist())[0] == "text of spk1_snt1"


def test_local_multi_node_cluster_gives_the_same_tables(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    src = _write_corpus(tmp_path / "src", 8)
    config = IngestConfig(files_per_unit=4)
    run_ingest(str(src), str(tmp_path / "local"), config, progress=False)
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        run_ingest(str(src), str(tmp_path / "cluster"), config, progress=False)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert _canonical(_tables(str(tmp_path / "cluster"))) == _canonical(
        _tables(str(tmp_path / "local"))
    )
