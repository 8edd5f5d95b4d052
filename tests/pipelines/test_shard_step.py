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

from minmo.jobs import run_job
from minmo.tokens.speech import build_tiny_checkpoint, n_speech_tokens
from minmo.tokens.text import load_text_tokenizer
from pipelines.build import BuildDir
from pipelines.ingest.run import read_table
from pipelines.shard_step import ShardsConfig, run_shards
from pipelines.verify import verify_shards

ROOT = Path(__file__).resolve().parents[2]
STAGE_TASKS = {
    "stage1": {
        "asr",
        "contextual_asr",
        "language_id",
        "speech_translation",
        "emotion",
        "speaker_analysis",
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
    return json.loads((_stage(demo, stage) / "index.json").read_text())


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
    for sample in samples:
        meta = json.loads(sample["json"])
        row = labels[meta["provenance"]["sample_id"]]
        assert np.load(io.BytesIO(sample["labels.npy"])).tolist() == row["labels"]
        info = sf.info(io.BytesIO(sample["flac"]))
        assert info.channels == recordings[row["recording_id"]]["channels"]
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
    demo: dict[str, Any],
) -> None:
    stage1 = _stage(demo, "stage1")
    before = (stage1 / "index.json").read_bytes()
    again = run_shards(demo["build"], _config(demo["tokenizer"]), progress=False)
    assert all(s["shards_written_now"] == 0 for s in again.stages)
    assert (stage1 / "index.json").read_bytes() == before
    # A crash that lost shard 2 (tar gone, marker gone) and left a temp file behind.
    (stage1 / "stage1-000002.tar").unlink()
    marker = Path(demo["build"]) / "_state/shards/done/stage1-000002.json"
    marker.unlink()
    (stage1 / ".stage1-000002.tar.tmp-1").write_bytes(b"partial")
    redo = run_shards(demo["build"], _config(demo["tokenizer"], stages=["stage1"]), progress=False)
    assert redo.stages[0]["shards_written_now"] == 1
    assert (stage1 / "index.json").read_bytes() == before
    assert verify_shards(stage1) == {"stage1": []}


def test_a_fresh_build_is_byte_identical(demo: dict[str, Any], tmp_path: Path) -> None:
    copy = tmp_path / "build"
    shutil.copytree(demo["build"], copy, ignore=shutil.ignore_patterns("shards", "_state"))
    shutil.copytree(
        Path(demo["build"]) / "_state", copy / "_state", ignore=shutil.ignore_patterns("shards")
    )
    run_shards(str(copy), _config(demo["tokenizer"], stages=["stage2", "stage4"]), progress=False)
    for stage in ("stage2", "stage4"):
        ours = {p.name: p.read_bytes() for p in (copy / "shards" / stage).iterdir()}
        theirs = {p.name: p.read_bytes() for p in _stage(demo, stage).iterdir()}
        assert ours == theirs, stage


def test_failed_samples_are_quarantined_and_counted(demo: dict[str, Any], tmp_path: Path) -> None:
    copy = tmp_path / "build"
    # "shards" also drops _state/shards: the copy has no shard step history.
    shutil.copytree(demo["build"], copy, ignore=shutil.ignore_patterns("shards"))
    s2s = read_table(BuildDir(str(copy)), "s2s_samples").to_pylist()
    victim = next(r for r in s2s if r["recipe"] == "tts_dialogue")
    # The copy's rows still name the original build's audio: corrupt it for this run only.
    original = Path(victim["assistant_audio_uri"])
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
    index = json.loads((copy / "shards/stage2/index.json").read_text())
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
    ds = ray.data.read_webdataset(str(stage4), decoder=None, file_extensions=["tar"])
    rows = ds.take_all()
    assert len(rows) == _index(demo, "stage4")["totals"]["samples"]
    keys = {r["__key__"] for r in rows}
    assert all(k.startswith("duplex-") for k in keys)
    assert all("labels.npy" in r and "flac" in r for r in rows)


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
    index = json.loads((stage3 / "index.json").read_text())
    entry = next(s for s in index["shards"] if s["name"] == tar_path.name)
    entry["bytes"] = tar_path.stat().st_size
    entry["sha256"] = hashlib.sha256(tar_path.read_bytes()).hexdigest()
    (stage3 / "index.json").write_text(json.dumps(index))
    capsys.readouterr()
    assert main(["verify", str(stage3)]) == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert tar_path.name in first and dropped in first and "speech_tokens.npy" in first
