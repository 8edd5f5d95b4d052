"""All four stages from real recorded speech in ../shared/data: transcribed utterances (en, zh,
22.05 kHz and 44.1 kHz stereo sources), a real two-channel customer-service call, nothing
synthesised. Stage 3 has no speech-to-speech material here and must come out empty, not fail."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from minmo.testing.tiny_models import build_tiny_checkpoint
from pipelines.diarize import DiarizeConfig, run_diarize
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.run import run_ingest
from pipelines.label_turns import LabelTurnsConfig, run_label_turns
from pipelines.shards.step import ShardsConfig, run_shards
from pipelines.verify import verify_shards
from schemas.shards import index_path

UTTERANCES = (
    ("asr_wenet_zh_en/aishell-BAC009S0724W0121.wav", "zh", "广州市房地产中介协会分析"),
    (
        "asr_wenet_zh_en/librispeech-1995-1837-0001.wav",
        "en",
        "IT WAS THE FIRST GREAT SORROW OF HIS LIFE IT WAS NOT SO MUCH THE LOSS OF THE COTTON "
        "ITSELF BUT THE FANTASY THE HOPES THE DREAMS BUILT AROUND IT",
    ),
    ("asr_speechbrain_en/example1.wav", "en", "The birch canoe slid on the smooth planks"),
    ("asr_whisper_jfk/jfk.flac", "en", None),  # text read from jfk.txt below
    ("asr_lhotse_libri_lj/LJ002-0020.wav", "en", None),
)
CALL = "stereo_aws_lca_autorepairs40/Auto_Repairs_40_UTC_stereo.wav"


@pytest.fixture(scope="module")
def built(ray_local, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("real_shards")
    lj_text = dict(
        line.split(" ", 1)
        for line in (shared_data / "asr_lhotse_libri_lj/text").read_text().splitlines()
        if line.strip()
    )
    rows = []
    for path, lang, text in UTTERANCES:
        if text is None:
            stem = Path(path).stem
            text = (
                (shared_data / "asr_whisper_jfk/jfk.txt").read_text().strip()
                if stem == "jfk"
                else lj_text[stem].strip()
            )
        rows.append({"path": str(shared_data / path), "text": text, "language": lang})
    rows.append({"path": str(shared_data / CALL), "task": "conversation"})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    build = str(root / "build")
    run_ingest(str(manifest), build, IngestConfig(corpus="shared"), progress=False)
    run_diarize(build, DiarizeConfig(), progress=False)
    run_label_turns(build, LabelTurnsConfig(), progress=False)
    tokenizer = build_tiny_checkpoint(root / "s3tiny.pt")
    config = ShardsConfig(speech_tokenizer=str(tokenizer), samples={"max_input_s": 300})
    summary = run_shards(build, config, progress=False)
    return {"build": Path(build), "summary": summary, "texts": {r["text"] for r in rows[:-1]}}


def _samples(stage_dir: Path) -> list[dict[str, Any]]:
    return list(wds.WebDataset(sorted(str(p) for p in stage_dir.glob("*.tar")), shardshuffle=False))


def test_every_stage_verifies_and_stage3_is_empty(built: dict[str, Any]) -> None:
    results = verify_shards(built["build"] / "shards")
    assert results == {f"stage{i}": [] for i in range(1, 5)}
    by_stage = {s["stage"]: s for s in built["summary"].stages}
    assert by_stage["stage3"]["totals"]["samples"] == 0
    assert by_stage["stage1"]["tasks"]["asr"]["samples"] == len(UTTERANCES)
    assert by_stage["stage2"]["tasks"]["tts"]["samples"] == len(UTTERANCES)
    # One real call: both speakers play the user once.
    assert by_stage["stage4"]["tasks"]["duplex"]["samples"] == 2
    assert by_stage["stage1"]["tasks"]["speaker_analysis"]["samples"] == 1


def test_real_transcripts_and_audio_reach_the_shards(built: dict[str, Any]) -> None:
    asr = [
        s
        for s in _samples(built["build"] / "shards/stage1")
        if json.loads(s["json"])["task"] == "asr"
    ]
    assert {json.loads(s["json"])["messages"][-1]["content"] for s in asr} == built["texts"]
    for s in asr:
        audio, rate = sf.read(io.BytesIO(s["flac"]), dtype="float32")
        assert rate == 16000 and audio.ndim == 1 and np.abs(audio).max() > 0.05


def test_the_real_call_gives_each_role_its_own_stream_and_labels(built: dict[str, Any]) -> None:
    """schemas/duplex.py: a stereo call's stage-4 input is the user's channel alone, with the
    assistant's activity beside it; the two role samples hear different audio."""
    samples = _samples(built["build"] / "shards/stage4")
    streams = {}
    for s in samples:
        meta = json.loads(s["json"])
        audio, _ = sf.read(io.BytesIO(s["flac"]), dtype="float32")
        assert audio.ndim == 1 and abs(audio.size / 16_000 - 245.0) < 1.0
        labels = np.load(io.BytesIO(s["labels.npy"]))
        duration_s = audio.size / 16_000
        assert (
            labels.size == meta["n_labels"] == round(duration_s / 0.12)
            or abs(labels.size - duration_s / 0.12) <= 1
        )
        assert set(np.unique(labels)) == {0, 1, 2, 3}
        activity = np.load(io.BytesIO(s["assistant_activity.npy"]))
        assert activity.shape == labels.shape and set(np.unique(activity)) == {0, 1}
        streams[meta["provenance"]["user_channel"]] = audio
    assert set(streams) == {0, 1}
    assert not np.array_equal(streams[0], streams[1])


def test_speech_tokens_of_real_speech(built: dict[str, Any]) -> None:
    index = json.loads(Path(index_path(str(built["build"] / "shards/stage2"))).read_text())
    assert 24.9 < index["totals"]["speech_tokens_per_s"] < 25.2
    # jfk.flac is 11 s: one clip, 275 tokens.
    jfk = [
        s
        for s in _samples(built["build"] / "shards/stage2")
        if json.loads(s["json"])["provenance"]["source_key"].endswith("jfk.flac")
    ]
    assert len(jfk) == 1
    assert np.load(io.BytesIO(jfk[0]["speech_tokens.npy"])).size == 275
