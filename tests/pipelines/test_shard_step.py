"""The shards step on the demo build: four stages written, read back, verified; reruns, crash
recovery, determinism, mixture weights, bucketing, quarantine, and reading with Ray Data."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds
import yaml

from minmo.cli.jobs import run_job
from minmo.testing.tiny_models import build_tiny_checkpoint
from minmo.tokens.speech import n_speech_tokens
from minmo.tokens.text import load_text_tokenizer
from pipelines.build import BuildDir
from pipelines.ingest.run import read_table
from pipelines.shards.step import ShardsConfig, run_shards
from pipelines.verify import verify_shards
from schemas.shards import index_path, owner_tag, temp_name

# The first test pays for the module's demo build (350 s of setup in CI with other work beside).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
ROOT = Path(__file__).resolve().parents[2]
STAGE_TASKS = {
    "stage1": {
        "asr",
        "contextual_asr",
        "language_id",
        "speech_translation",
        "emotion",
        "speaker_analysis",
        "audio_event",
        "s2t_chat",
    },
    "stage2": {"tts", "instruct_tts"},
    "stage3": {"s2s_chat", "s2s_style_chat"},
    "stage4": {"duplex"},
}


def _config(tokenizer: Path, **overrides: Any) -> ShardsConfig:
    base: dict[str, Any] = {
        "speech_tokenizer": str(tokenizer),
        "max_samples": 24,
        "mixture": {"stage1": {"speech_translation": 2.0, "language_id": 0.5}},
        "samples": {"translations": [str(ROOT / "jobs/data/demo_translations.jsonl")]},
    }
    return ShardsConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def demo(ray_local, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed: apt-get install espeak-ng")
    root = tmp_path_factory.mktemp("shards")
    spec = yaml.safe_load((ROOT / "jobs/demo.yaml").read_text())
    spec["steps"] = spec["steps"][: spec["steps"].index("shards")]  # the steps before shards
    job = ROOT / "jobs" / f".test-{root.name}.yaml"  # beside demo.yaml so {job_dir} resolves
    job.write_text(yaml.safe_dump(spec))
    build = str(root / "build")
    try:
        run_job(job, build, progress=False)
    finally:
        job.unlink()
    tokenizer = build_tiny_checkpoint(root / "s3tiny.pt")
    summary = run_shards(build, _config(tokenizer), progress=False)
    return {"root": root, "build": build, "tokenizer": tokenizer, "summary": summary}


def _samples(stage_dir: Path) -> list[dict[str, Any]]:
    urls = sorted(str(p) for p in stage_dir.glob("*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False))


def _stage(demo: dict[str, Any], stage: str) -> Path:
    return Path(demo["build"]) / "shards" / stage


def _index(demo: dict[str, Any], stage: str) -> dict[str, Any]:
    return json.loads(Path(index_path(str(_stage(demo, stage)))).read_text())


def test_all_four_stages_verify_with_their_tasks(demo: dict[str, Any]) -> None:
    assert verify_shards(Path(demo["build"]) / "shards") == {s: [] for s in STAGE_TASKS}
    for stage, tasks in STAGE_TASKS.items():
        index = _index(demo, stage)
        assert set(index["tasks"]) == tasks, stage
        assert index["totals"]["samples"] == sum(s["samples"] for s in index["shards"]) > 0
        assert index["tokenizers"]["speech_tokenizer_random_init"] is False
    # 24 samples per shard at most: stage 1 (about 200 samples) spans several shards.
    assert len(_index(demo, "stage1")["shards"]) >= 5
    assert all(s["samples"] <= 24 for s in _index(demo, "stage1")["shards"])


def test_stage1_samples_carry_transcripts_and_their_audio(demo: dict[str, Any]) -> None:
    segments = {
        s["segment_id"]: s for s in read_table(BuildDir(demo["build"]), "segments").to_pylist()
    }
    tokenizer = load_text_tokenizer(None)
    seen = 0
    for sample in _samples(_stage(demo, "stage1")):
        meta = json.loads(sample["json"])
        audio, rate = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
        assert rate == 16000
        assert abs(len(audio) / rate - meta["input_duration_s"]) < 0.002
        ids = np.load(io.BytesIO(sample["text_tokens.npy"]))
        assert ids.size == meta["n_text_tokens"]
        answer = tokenizer.decode(ids[meta["target_start"] :])
        assert answer.startswith(meta["messages"][-1]["content"])
        assert "<|startofspeech|><|endofspeech|>" in tokenizer.decode(ids[: meta["target_start"]])
        if meta["task"] == "asr":
            segment = segments[meta["provenance"]["segment_id"]]
            assert meta["messages"][-1]["content"] == segment["text"]
            assert abs(meta["input_duration_s"] - segment["duration_s"]) < 0.002
            seen += 1
        if meta["task"] == "contextual_asr":
            words = set(meta["messages"][-1]["content"].replace(".", " ").replace(",", " ").split())
            bias = meta["provenance"]["hotwords"]
            assert any(w in words for w in bias) and any(w not in words for w in bias)
            assert all(w in meta["messages"][0]["content"] for w in bias)
    assert seen == sum(1 for s in segments.values() if s["text"])


def test_prompts_are_paraphrased_and_chosen_per_sample(demo: dict[str, Any]) -> None:
    prompts = [
        json.loads(s["json"])["messages"][0]["content"]
        for s in _samples(_stage(demo, "stage1"))
        if json.loads(s["json"])["task"] == "asr"
    ]
    assert len({p.split("\n")[0] for p in prompts}) >= 3


def test_speech_tokens_are_25_per_second_of_target_speech(demo: dict[str, Any]) -> None:
    for stage in ("stage2", "stage3"):
        for sample in _samples(_stage(demo, stage)):
            meta = json.loads(sample["json"])
            codes = np.load(io.BytesIO(sample["speech_tokens.npy"]))
            assert codes.size == n_speech_tokens(round(meta["target_speech_s"] * 16000))
            assert codes.min() >= 0 and codes.max() < 6561
        totals = _index(demo, stage)["totals"]
        assert 24.9 < totals["speech_tokens_per_s"] < 25.3


def test_stage3_and_stage4_samples_match_their_tables(demo: dict[str, Any]) -> None:
    build = BuildDir(demo["build"])
    s2s = {r["sample_id"]: r for r in read_table(build, "s2s_samples").to_pylist()}
    for sample in _samples(_stage(demo, "stage3")):
        meta = json.loads(sample["json"])
        row = s2s[meta["provenance"]["sample_id"]]
        assert meta["messages"][-1]["content"] == row["assistant_text"]
        assert meta["task"] == ("s2s_style_chat" if row["style_instruction"] else "s2s_chat")
    labels = {r["sample_id"]: r for r in read_table(build, "frame_labels").to_pylist()}
    recordings = {r["recording_id"]: r for r in read_table(build, "recordings").to_pylist()}
    samples = _samples(_stage(demo, "stage4"))
    assert len(samples) == len(labels)
    backchannels: dict[str, list[float]] = {}
    for event in read_table(build, "events").to_pylist():
        if event["event_type"] == "user_backchannel":
            backchannels.setdefault(event["sample_id"], []).append(round(event["time_s"], 3))
    said = sum(len(json.loads(s["json"])["provenance"]["backchannel_s"]) for s in samples)
    assert said == sum(map(len, backchannels.values())) > 0  # each back-channel, once
    for sample in samples:
        meta = json.loads(sample["json"])
        row = labels[meta["provenance"]["sample_id"]]
        assert np.load(io.BytesIO(sample["labels.npy"])).tolist() == row["labels"]
        expected = sorted(backchannels.get(row["sample_id"], []))
        assert meta["provenance"]["backchannel_s"] == expected
        activity = np.load(io.BytesIO(sample["assistant_activity.npy"])).tolist()
        assert activity == row["assistant_activity"]
        # The user's stream: one channel, the user's on a multi-channel call.
        info = sf.info(io.BytesIO(sample["flac"]))
        assert info.channels == 1
        if recordings[row["recording_id"]]["channels"] > 1:
            assert meta["provenance"]["user_channel"] == row["user_channel"]
        assert abs(info.duration - row["duration_s"]) < 0.01


def test_mixture_weights_repeat_and_subsample(demo: dict[str, Any]) -> None:
    mixture = _index(demo, "stage1")["mixture"]
    st = mixture["speech_translation"]
    assert st["weight"] == 2.0 and st["kept"] == 2 * st["built"] > 0
    lid = mixture["language_id"]
    assert 0.25 * lid["built"] <= lid["kept"] <= 0.75 * lid["built"]
    assert mixture["asr"]["kept"] == mixture["asr"]["built"]
    assert _index(demo, "stage1")["tasks"]["speech_translation"]["samples"] == st["kept"]


def test_rerun_writes_nothing_and_a_lost_shard_is_rebuilt_identically(
    demo: dict[str, Any], dead_pid: int
) -> None:
    stage1 = _stage(demo, "stage1")
    build = Path(demo["build"])
    index = Path(index_path(str(stage1)))
    before = index.read_bytes()
    again = run_shards(demo["build"], _config(demo["tokenizer"]), progress=False)
    assert all(s["shards_written_now"] == 0 for s in again.stages)
    assert index.read_bytes() == before
    clean = _tree_bytes(build)
    assert not (build / "_state/shards/staging").exists()  # no empty staging/<run>/ folders
    # A crash that lost shard 2 (tar gone, marker gone) while its writer, now dead, was writing
    # it: its temp tar and temp .idx stay behind, named as the writer names them, and so does
    # the killed run's staging folder. The generation's record is not complete yet, as it
    # would not be after a crash.
    tar = stage1 / "stage1-g0000-000002.tar"
    lost = tar.read_bytes()
    tar.unlink()
    (build / "_state/shards/done/stage1-g0000-000002.json").unlink()
    (stage1 / temp_name(tar.name, pid=dead_pid)).write_bytes(lost[:1000])
    (stage1 / "_index" / temp_name(f"{tar.name}.idx", pid=dead_pid)).write_bytes(b"\0" * 8)
    staged = build / "_state/shards/staging" / f"{owner_tag(dead_pid)}-0badf00d" / "u"
    staged.mkdir(parents=True)
    (staged / "part.parquet").write_bytes(b"partial")
    assert len(verify_shards(stage1)["stage1"]) == 3  # the lost tar, and the two temp files
    record_path = build / "_state/shards/stage1/g0000.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "complete": False, "shards": []}))
    redo = run_shards(demo["build"], _config(demo["tokenizer"], stages=["stage1"]), progress=False)
    assert redo.stages[0]["shards_written_now"] == 1
    assert tar.read_bytes() == lost
    assert index.read_bytes() == before
    assert verify_shards(stage1) == {"stage1": []}
    # exactly the files the clean build held, with the same bytes, but for what names the run:
    # the summary's wall time and the redone marker's writer (node, pid)
    after = _tree_bytes(build)
    assert sorted(after) == sorted(clean)
    assert _without_run(after) == _without_run(clean)


def _without_run(tree: dict[str, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in tree.items() if k != "_state/shards/summary.json"}
    for name in [k for k in out if k.startswith("_state/shards/done/")]:
        marker = json.loads(out[name])
        marker.pop("written_by")
        out[name] = marker
    return out


def test_a_fresh_build_is_byte_identical(demo: dict[str, Any], tmp_path: Path) -> None:
    copy = tmp_path / "build"
    shutil.copytree(demo["build"], copy, ignore=shutil.ignore_patterns("shards", "_state"))
    shutil.copytree(
        Path(demo["build"]) / "_state", copy / "_state", ignore=shutil.ignore_patterns("shards")
    )
    run_shards(str(copy), _config(demo["tokenizer"], stages=["stage2", "stage4"]), progress=False)
    for stage in ("stage2", "stage4"):
        ours = _tree_bytes(copy / "shards" / stage)
        assert ours == _tree_bytes(_stage(demo, stage)), stage
        assert any(name.startswith("_index/") for name in ours)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_failed_samples_are_quarantined_and_counted(demo: dict[str, Any], tmp_path: Path) -> None:
    copy = tmp_path / "build"
    # "shards" also drops _state/shards: the copy has no shard step history.
    shutil.copytree(demo["build"], copy, ignore=shutil.ignore_patterns("shards"))
    s2s = read_table(BuildDir(str(copy)), "s2s_samples").to_pylist()
    victim = next(r for r in s2s if r["recipe"] == "tts_dialogue")
    # The rows name synthesized audio by build key: the copy reads (and here breaks) its own.
    original = Path(BuildDir(str(copy)).resolve_key(victim["assistant_audio_uri"]))
    assert str(copy) in str(original)
    saved = original.read_bytes()
    original.write_bytes(b"not audio at all")
    try:
        summary = run_shards(
            str(copy), _config(demo["tokenizer"], stages=["stage3"]), progress=False
        )
    finally:
        original.write_bytes(saved)
    stage = summary.stages[0]
    assert stage["quarantined"] == {"sample_failed": 1}
    assert stage["totals"]["samples"] == len(s2s) - 1
    rows = [
        r
        for r in read_table(BuildDir(str(copy)), "quarantine").to_pylist()
        if r["step"] == "shards"
    ]
    assert len(rows) == 1 and rows[0]["reason_code"] == "sample_failed"
    assert verify_shards(copy / "shards" / "stage3") == {"stage3": []}


def test_duration_buckets_keep_shards_homogeneous(demo: dict[str, Any], tmp_path: Path) -> None:
    copy = tmp_path / "build"
    shutil.copytree(demo["build"], copy, ignore=shutil.ignore_patterns("shards", "_state"))
    cfg = _config(demo["tokenizer"], stages=["stage2"], bucket_edges_s=[3.0])
    run_shards(str(copy), cfg, progress=False)
    index = json.loads(Path(index_path(str(copy / "shards/stage2"))).read_text())
    buckets = [tuple(s["duration_bucket_s"]) for s in index["shards"]]
    assert (0.0, 3.0) in buckets and (3.0, None) in buckets
    for shard in index["shards"]:
        lo, hi = shard["duration_bucket_s"]
        for sample in wds.WebDataset(
            str(copy / "shards/stage2" / shard["name"]), shardshuffle=False
        ):
            d = json.loads(sample["json"])["target_speech_s"]
            assert lo - 0.01 <= d and (hi is None or d < hi + 0.01)


def test_ray_data_reads_the_shards(demo: dict[str, Any]) -> None:
    import ray

    stage4 = _stage(demo, "stage4")
    ds = ray.data.read_webdataset(str(stage4), decoder=None)  # no extra arguments needed
    rows = ds.take_all()
    assert len(rows) == _index(demo, "stage4")["totals"]["samples"]
    keys = {r["__key__"] for r in rows}
    assert all(k.startswith("duplex-") for k in keys)
    assert all("labels.npy" in r and "assistant_activity.npy" in r and "flac" in r for r in rows)


def test_minmo_verify_names_the_first_bad_shard_and_sample(
    demo: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib
    import tarfile

    from minmo.cli import main

    stage3 = tmp_path / "stage3"
    shutil.copytree(_stage(demo, "stage3"), stage3)
    assert main(["verify", str(stage3)]) == 0
    # Drop one sample's speech tokens and re-seal the index, so only the member check sees it.
    tar_path = next(iter(sorted(stage3.glob("*.tar"))))
    out = io.BytesIO()
    dropped = None
    with (
        tarfile.open(tar_path) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst,
    ):
        for member in src.getmembers():
            if dropped is None and member.name.endswith(".speech_tokens.npy"):
                dropped = member.name.split(".")[0]
                continue
            dst.addfile(member, src.extractfile(member))
    tar_path.write_bytes(out.getvalue())
    index_file = Path(index_path(str(stage3)))
    index = json.loads(index_file.read_text())
    entry = next(s for s in index["shards"] if s["name"] == tar_path.name)
    entry["bytes"] = tar_path.stat().st_size
    entry["sha256"] = hashlib.sha256(tar_path.read_bytes()).hexdigest()
    index_file.write_text(json.dumps(index))
    capsys.readouterr()
    assert main(["verify", str(stage3)]) == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert tar_path.name in first and dropped in first and "speech_tokens.npy" in first


def _stat(stage_dir: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every tar's inode, mtime and bytes: a rewrite changes at least the first two."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in stage_dir.glob("*.tar")
    }


def test_added_data_is_a_new_generation_and_nothing_committed_is_rewritten(
    demo: dict[str, Any], tmp_path: Path, shared_data: Path
) -> None:
    from minmo.train.data import ShardIndex
    from pipelines.ingest.config import IngestConfig
    from pipelines.ingest.run import run_ingest

    copy = tmp_path / "build"
    shutil.copytree(demo["build"], copy)
    before = {stage: _stat(copy / "shards" / stage) for stage in ("stage1", "stage2")}
    old_index = json.loads(Path(index_path(str(copy / "shards/stage1"))).read_text())
    manifest = tmp_path / "more.jsonl"
    jfk = shared_data / "asr_whisper_jfk/jfk.flac"
    text = "And so my fellow Americans ask not what your country can do for you"
    manifest.write_text(json.dumps({"path": str(jfk), "text": text, "language": "en"}) + "\n")
    run_ingest(str(manifest), str(copy), IngestConfig(corpus="more"), progress=False)

    cfg = _config(demo["tokenizer"], stages=["stage1", "stage2"])
    summary = run_shards(str(copy), cfg, progress=False)
    for stage, result in zip(("stage1", "stage2"), summary.stages, strict=True):
        assert result["rebuilt"] is None and result["generations"] == 2, stage
        after = _stat(copy / "shards" / stage)
        assert {n: after[n] for n in before[stage]} == before[stage], stage  # untouched
        new = sorted(set(after) - set(before[stage]))
        assert new and all(n.startswith(f"{stage}-g0001-") for n in new)
        index = json.loads(Path(index_path(str(copy / "shards" / stage))).read_text())
        assert [g["generation"] for g in index["generations"]] == [0, 1]
        assert {s["name"] for s in index["shards"]} == set(after)
        for name in new:  # the new generation holds only the new recording's samples
            for sample in wds.WebDataset(str(copy / "shards" / stage / name), shardshuffle=False):
                assert json.loads(sample["json"])["provenance"]["source_key"].endswith("jfk.flac")
        # The trainer's epoch permutation runs over every generation's shards.
        loader_index = ShardIndex.load(copy / "shards" / stage)
        assert loader_index.total == index["totals"]["samples"]
    new_index = json.loads(Path(index_path(str(copy / "shards/stage1"))).read_text())
    assert new_index["shards"][: len(old_index["shards"])] == old_index["shards"]
    assert verify_shards(copy / "shards") == {
        s: [] for s in ("stage1", "stage2", "stage3", "stage4")
    }
    # Nothing new for stage 3: the same run on it appends nothing.
    again = run_shards(str(copy), _config(demo["tokenizer"], stages=["stage3"]), progress=False)
    assert again.stages[0]["new_units"] == 0 and again.stages[0]["shards_written_now"] == 0


def test_a_changed_config_rebuilds_the_stage_and_says_so_first(
    demo: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "build"
    shutil.copytree(demo["build"], copy)
    capsys.readouterr()
    changed = _config(demo["tokenizer"], stages=["stage3"], max_samples=5)
    summary = run_shards(str(copy), changed, progress=False)
    err = capsys.readouterr().err
    assert "rebuilding stage3 because the config changed (max_samples)" in err
    assert summary.stages[0]["generations"] == 1
    index = json.loads(Path(index_path(str(copy / "shards/stage3"))).read_text())
    assert all(s["samples"] <= 5 for s in index["shards"]) and len(index["shards"]) >= 3
    assert verify_shards(copy / "shards/stage3") == {"stage3": []}
    # --rebuild forces it even when nothing changed, and says so too.
    run_shards(str(copy), changed, progress=False, rebuild=True)
    assert "rebuilding stage3 because --rebuild was given" in capsys.readouterr().err


def test_workers_write_the_shards_not_the_driver(demo: dict[str, Any]) -> None:
    import os

    markers = list((Path(demo["build"]) / "_state/shards/done").glob("*.json"))
    writers = {json.loads(m.read_text())["written_by"]["pid"] for m in markers}
    assert markers and os.getpid() not in writers


def _to_s3(demo: dict[str, Any], options: dict[str, Any], bucket: str) -> str:
    """The demo build's tables (no shards, no shard state) copied to `s3://<bucket>/demo`."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(**options, allow_bucket_creation=True)
    fs.create_dir(bucket)
    local = Path(demo["build"])
    for item in local.iterdir():
        if item.name in ("shards", "_state"):
            continue
        pafs.copy_files(
            str(item),
            f"{bucket}/demo/{item.name}",
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=fs,
        )
    return f"s3://{bucket}/demo"


def _s3_tars(uri: str, options: dict[str, Any]) -> dict[str, bytes]:
    import pyarrow.fs as pafs

    from minmo.io.fs import open_filesystem

    fs, path = open_filesystem(uri, **options)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    out = {}
    for info in infos:
        if info.base_name.endswith(".tar"):
            with fs.open_input_stream(info.path) as f:
                out[info.base_name] = f.read()
    return out


def test_shards_on_s3_are_the_local_bytes_and_verify(
    demo: dict[str, Any], moto_s3_options: dict[str, Any], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # anything written to a relative local path would land here
    build = _to_s3(demo, moto_s3_options, "shards-s3")
    cfg = _config(demo["tokenizer"], stages=["stage2", "stage4"], storage_options=moto_s3_options)
    summary = run_shards(build, cfg, progress=False)
    assert all(s["shards_written_now"] > 0 for s in summary.stages)
    assert list(tmp_path.iterdir()) == []
    assert verify_shards(f"{build}/shards", moto_s3_options) == {"stage2": [], "stage4": []}
    for stage in ("stage2", "stage4"):
        local = {p.name: p.read_bytes() for p in _stage(demo, stage).glob("*.tar")}
        assert _s3_tars(f"{build}/shards/{stage}", moto_s3_options) == local, stage


def test_an_upload_cut_mid_run_leaves_no_marker_and_the_rerun_redoes_only_that(
    demo: dict[str, Any], tmp_path: Path
) -> None:
    import socket
    import threading
    import time

    from moto.server import ThreadedMotoServer

    from minmo.io.fs import open_filesystem

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = {
        "endpoint_override": f"http://127.0.0.1:{port}",
        "access_key": "test",
        "secret_key": "test",
        "region": "us-east-1",
        "scheme": "http",
        "connect_timeout": 1,
        "request_timeout": 2,
    }
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        build = _to_s3(demo, options, "shards-cut")
        cfg = _config(demo["tokenizer"], stages=["stage2"], max_samples=4, storage_options=options)
        fs, root = open_filesystem(build, **options)
        done_dir = f"{root}/_state/shards/done"
        failure: list[BaseException] = []

        def run() -> None:
            try:
                run_shards(build, cfg, progress=False)
            except BaseException as exc:  # noqa: BLE001 - the cut is expected to fail the run
                failure.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and thread.is_alive():
            if len(BuildDir(build, **options).files(done_dir, ".json")) >= 2:
                break
            time.sleep(0.05)
        server.stop()  # the object store goes away in the middle of the writes
        thread.join(600)
        assert failure, "the run should fail when its object store disappears"
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()  # the same in-process store comes back, as after an outage
        committed = {
            m.rsplit("/", 1)[-1] for m in BuildDir(build, **options).files(done_dir, ".json")
        }
        planned = json.loads(
            fs.open_input_stream(f"{root}/_state/shards/stage2/g0000.json").read()
        )["planned_shards"]
        assert 2 <= len(committed) < planned
        before = _s3_tars(f"{build}/shards/stage2", options)
        redo = run_shards(build, cfg, progress=False)
        markers = BuildDir(build, **options).files(done_dir, ".json")
        assert redo.stages[0]["shards_written_now"] == len(markers) - len(committed) > 0
        after = _s3_tars(f"{build}/shards/stage2", options)
        for marker in committed:  # committed shards are the same bytes
            name = marker[: -len(".json")] + ".tar"
            assert after[name] == before[name]
        assert verify_shards(f"{build}/shards", options) == {"stage2": []}
    finally:
        server.stop()


def test_a_units_samples_do_not_depend_on_the_rest_of_the_build(
    demo: dict[str, Any], tmp_path: Path
) -> None:
    """The same unit alone in a build gives the same specs (keys, prompts, hotwords) as in the
    full demo build: nothing is drawn from a corpus-wide pool."""
    from pipelines.samples.builders import StageBuilder
    from pipelines.shards.plan import list_units

    full = BuildDir(demo["build"])
    sample_config = _config(demo["tokenizer"]).sample_config()
    units = [u for u in list_units(full, "stage1") if u.key.startswith("ingest~")]
    unit = max(units, key=lambda u: len(u.view["segments"]))
    alone_dir = tmp_path / "alone"
    view_alone: dict[str, list[str]] = {}
    for table, files in unit.view.items():
        (alone_dir / table).mkdir(parents=True)
        for f in files:
            shutil.copy(f, alone_dir / table)
            view_alone.setdefault(table, []).append(str(alone_dir / table / Path(f).name))
    alone = BuildDir(str(alone_dir))

    def specs(build: BuildDir, view: dict[str, list[str]] | None) -> dict[str, dict[str, Any]]:
        return {s["key"]: s for s in StageBuilder(build, sample_config, view).specs("stage1")}

    in_full = specs(full, unit.view)
    assert in_full == specs(alone, None) == specs(alone, view_alone)
    assert any(s["task"] == "contextual_asr" for s in in_full.values())
