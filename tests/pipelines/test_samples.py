"""Sample-builder pieces without a build: prompt templates, keys, mixture copies, buckets,
shard planning limits and config errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.build import BuildDir
from pipelines.samples import sources
from pipelines.samples.builders import (
    STAGE1_TASKS,
    SampleConfig,
    Segment,
    Stage1Task,
    StageBuilder,
)
from pipelines.samples.prompts import PromptBook
from pipelines.samples.spec import audio_ref, estimated_bytes, make_spec, sample_key
from pipelines.shards.plan import bucket_of, mixture_copies
from pipelines.shards.step import ShardsConfig
from schemas.shards import validate_key
from schemas.tasks import STAGE_TASKS


def _spec(key_source: str = "seg-1", seconds: float = 4.0) -> dict:
    return make_spec(
        stage="stage1",
        task="asr",
        source_id=key_source,
        language="en",
        messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
        meta={},
        input_audio=audio_ref("/a.wav", 1, 0, 1.0, 1.0 + seconds),
    )


def test_bundled_prompts_cover_every_task_and_fill_fields() -> None:
    book = PromptBook.load()
    for tasks in STAGE_TASKS.values():
        for task in tasks:
            assert task in book.templates
    text = book.choose("speech_translation", "s1", target_language="German")
    assert "German" in text and "{" not in text
    assert book.choose("asr", "s1") == book.choose("asr", "s1")
    assert len({book.choose("asr", f"s{i}") for i in range(50)}) == len(book.templates["asr"])
    assert PromptBook.load(seed=1).choose("asr", "s7") in book.templates["asr"]


def test_a_template_with_an_unknown_field_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text('asr: ["Transcribe {speaker_name}"]\n')
    with pytest.raises(ValueError, match="speaker_name"):
        PromptBook.load(bad)


def test_keys_are_stable_unique_and_webdataset_safe() -> None:
    a, b = sample_key("asr", "rec.1/seg"), sample_key("asr", "rec.1/seg2")
    assert a == sample_key("asr", "rec.1/seg") and a != b
    assert sample_key("language_id", "rec.1/seg") != a
    assert validate_key(a) is None and "." not in a and "/" not in a


def test_mixture_weights_copy_and_subsample_deterministically() -> None:
    specs = [_spec(f"seg-{i}") for i in range(2000)]
    doubled = [c for s in specs[:10] for c in mixture_copies(s, 2.0, 0)]
    assert len(doubled) == 20 and len({c["key"] for c in doubled}) == 20
    assert all(c["meta"].get("repeat") == 1 for c in doubled[1::2])
    kept = [c for s in specs for c in mixture_copies(s, 0.3, 0)]
    assert 0.25 * 2000 < len(kept) < 0.35 * 2000
    assert kept == [c for s in specs for c in mixture_copies(s, 0.3, 0)]
    assert [c for s in specs for c in mixture_copies(s, 0.0, 0)] == []
    one_and_half = [c for s in specs for c in mixture_copies(s, 1.5, 0)]
    assert 1.45 * 2000 < len(one_and_half) < 1.55 * 2000


def test_buckets_and_size_estimates() -> None:
    assert [bucket_of(d, [5.0, 10.0]) for d in (0.5, 5.0, 9.9, 10.0, 30.0)] == [0, 1, 1, 2, 2]
    short, long = estimated_bytes(_spec(seconds=2.0)), estimated_bytes(_spec(seconds=20.0))
    assert 10 * 16000 * 2 * 0.5 < long - short < 20 * 16000 * 2  # about 60 % of 16-bit PCM


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stages": ["stage5"]}, "unknown stage"),
        ({"mixture": {"stage1": {"tts": 1.0}}}, "unknown task 'tts'"),
        ({"mixture": {"stage2": {"tts": -1}}}, "weight must be >= 0"),
        ({"bucket_edges_s": [10, 5]}, "increasing"),
        ({"max_samples": 0}, ">= 1"),
    ],
)
def test_config_errors_say_what_is_wrong(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShardsConfig(**kwargs)


def test_all_means_every_stage() -> None:
    assert ShardsConfig(stages="all").stages == ["stage1", "stage2", "stage3", "stage4"]


def test_s2s_provenance_names_the_user_audio_by_key_not_path(tmp_path: Path) -> None:
    builder = StageBuilder(BuildDir(str(tmp_path)), SampleConfig())
    row = {"sample_id": "s", "dialogue_id": "d", "recipe": "asr_query"}
    row["user_audio_uri"] = "/mnt/a/corpus/x.wav"
    meta = builder._s2s_provenance({**row, "user_audio_key": "corpus:x.wav"}, {})
    assert meta == {"sample_id": "s", "dialogue_id": "d", "recipe": "asr_query"} | {
        "source_key": "corpus:x.wav"
    }
    # A row from before s2s_samples v2: the unit's recordings map its URI to the key.
    old = builder._s2s_provenance(row, {"/mnt/a/corpus/x.wav": "corpus:x.wav"})
    assert old["source_key"] == "corpus:x.wav"


def test_stage1_registry_matches_the_task_names_contract() -> None:
    assert sorted(STAGE1_TASKS) == sorted(STAGE_TASKS["stage1"])


def test_a_registered_toy_stage1_task_is_one_function_and_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def backwards(builder: StageBuilder, seg: Segment):
        if seg.text:
            yield builder.segment_spec(seg, "backwards", "Say it backwards.", seg.text[::-1])

    monkeypatch.setitem(STAGE1_TASKS, "backwards", Stage1Task(per_segment=backwards))
    rec = sources.RecordingInfo("/a.wav", "c:a.wav", 1, "c", 3.0, "asr", False)
    seg = {"segment_id": "s1", "recording_id": "r1", "channel": 0, "start_s": 0.5}
    seg |= {"end_s": 2.5, "text": " hello world ", "language": "en"}
    builder = StageBuilder(BuildDir(str(tmp_path)), SampleConfig(), recs={"r1": rec})
    monkeypatch.setattr(builder, "_segments", lambda: iter([(seg, rec)]))
    specs = list(builder.specs("stage1"))
    assert [s["task"] for s in specs] == ["asr", "language_id", "backwards"]
    toy = specs[-1]
    assert toy["messages"][-1]["content"] == "dlrow olleh"
    assert toy["meta"]["segment_id"] == "s1" and toy["meta"]["source_key"] == "c:a.wav"
    assert builder.counts.built["backwards"] == 1
