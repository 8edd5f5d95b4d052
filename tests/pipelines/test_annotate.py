"""minmo annotate: SenseVoice's tag parsing on real output strings, confidences from CTC
log-probs, the tiny random-init SenseVoiceSmall loaded and decoded through funasr's AutoModel,
and the step end to end on an ingested build (one row per segment, quarantine, rerun, resume)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from minmo.annotate.rich_tags import ALL_TAGS, EMOTION_TAGS, EVENT_TAGS, parse_rich, tag_piece
from minmo.annotate.sensevoice import (
    ModelDirError,
    SenseVoiceLabeler,
    check_model_dir,
    ctc_confidences,
    labels_of,
    model_version,
)
from minmo.config import ConfigError
from minmo.demo.annotator import SENSEVOICE_BPE_FILE, build_tiny_sensevoice_dir
from pipelines.annotate import AnnotateConfig, run_annotate
from pipelines.audio_source import load_audio_16k
from pipelines.build import BuildDir
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.run import read_table, run_ingest
from pipelines.shards.plan import unit_key
from schemas import ANNOTATIONS, QUARANTINE, SEGMENTS, ReasonCode
from schemas.labels import EMOTIONS

# ---- tag parsing, on strings SenseVoiceSmall prints (its README, funasr's demos) ----------

JFK = (
    "<|en|><|NEUTRAL|><|Speech|><|woitn|>and so my fellow americans ask not what your country "
    "can do for you ask what you can do for your country"
)


def test_parse_rich_reads_the_four_tags_and_the_words():
    rich = parse_rich(JFK)
    assert (rich.language, rich.emotion, rich.audio_events) == ("en", "neutral", None)
    assert rich.transcript.startswith("and so my fellow americans") and "<|" not in rich.transcript
    assert rich.event_tags == ("Speech",)  # seen, but not an event label (rich_tags docstring)


@pytest.mark.parametrize(
    ("text", "language", "emotion", "events", "transcript"),
    [
        (
            "<|zh|><|HAPPY|><|BGM|><|withitn|>欢迎大家来体验达摩院推出的语音识别模型。",
            "zh",
            "happy",
            ["music"],
            "欢迎大家来体验达摩院推出的语音识别模型。",
        ),
        ("<|yue|><|NEUTRAL|><|Speech|><|woitn|>你今日食咗飯未呀", "yue", "neutral", None, None),
        ("<|ja|><|SAD|><|Speech|><|withitn|>今日はいい天気ですね。", "ja", "sad", None, None),
        ("<|ko|><|ANGRY|><|Laughter|><|woitn|>안녕하세요", "ko", "angry", ["laughter"], None),
        ("<|nospeech|><|EMO_UNKNOWN|><|Event_UNK|><|woitn|>", None, None, None, ""),
        (  # code-switched: a second block adds its event, the first block's labels stand
            "<|zh|><|NEUTRAL|><|Speech|><|woitn|>我们开会吧<|en|><|HAPPY|><|Applause|><|woitn|>ok",
            "zh",
            "neutral",
            ["applause"],
            "我们开会吧 ok",
        ),
        (
            "<|en|><|SURPRISED|><|Cough|><|Sneeze|><|woitn|>oh",
            "en",
            "surprised",
            ["cough", "sneeze"],
            "oh",
        ),
    ],
)
def test_parse_rich_on_real_strings(text, language, emotion, events, transcript):
    rich = parse_rich(text)
    assert rich.language == language and rich.emotion == emotion
    assert rich.audio_events == events
    if transcript is not None:
        assert rich.transcript == transcript
    assert rich.unknown_tags == ()


def test_every_emotion_tag_maps_into_the_vocabulary_and_unknown_tags_are_reported():
    assert {parse_rich(f"<|{t}|>").emotion for t in EMOTION_TAGS} <= set(EMOTIONS)
    assert parse_rich("<|EMO_UNKNOWN|>x").emotion is None
    assert all(n is None or n == n.lower() for n in EVENT_TAGS.values())
    rich = parse_rich("<|en|><|NEUTRAL|><|Whistle|><|woitn|>hi")
    assert rich.unknown_tags == ("Whistle",) and rich.transcript == "hi"


# ---- confidences from CTC log-probs --------------------------------------------------------


def test_ctc_confidences_merge_runs_and_drop_blanks():
    probs = torch.full((5, 4), 0.01)
    # frames: blank, 2, 2, blank, 3 with the chosen token's probability below
    chosen = [(0, 0.9), (2, 0.8), (2, 0.6), (0, 0.7), (3, 0.5)]
    for t, (token, p) in enumerate(chosen):
        probs[t, token] = p
    tokens = ctc_confidences(probs.log())
    assert [t for t, _ in tokens] == [2, 3]
    assert tokens[0][1] == pytest.approx(0.7) and tokens[1][1] == pytest.approx(0.5)


def test_labels_of_takes_each_tag_confidence_from_its_token():
    tag_ids = {100: "en", 101: "HAPPY", 102: "BGM", 103: "woitn", 104: "Speech"}
    tokens = [(100, 0.9), (101, 0.6), (102, 0.4), (104, 0.3), (103, 0.99), (7, 0.5), (8, 0.7)]
    labels = labels_of("<|en|><|HAPPY|><|BGM|><|Speech|><|woitn|>hi there", tokens, tag_ids)
    assert (labels.language, labels.emotion, labels.audio_events) == ("en", "happy", ["music"])
    assert labels.language_confidence == pytest.approx(0.9)
    assert labels.emotion_confidence == pytest.approx(0.6)
    assert labels.audio_events_confidence == pytest.approx(0.4)  # Speech is not an event label
    assert labels.transcript == "hi there" and labels.transcript_confidence == pytest.approx(0.6)
    empty = labels_of("<|nospeech|><|EMO_UNKNOWN|><|Event_UNK|><|woitn|>", [(1, 0.5)], {})
    assert empty.language is None and empty.transcript == ""
    assert empty.transcript_confidence is None and empty.language_confidence is None


# ---- the tiny model through funasr ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sensevoice_dir(tmp_path_factory.mktemp("sv") / "SenseVoiceSmall")


@pytest.fixture(scope="module")
def jfk(shared_data: Path) -> np.ndarray:
    return load_audio_16k(str(shared_data / "asr_whisper_jfk" / "jfk.flac"), 1, {})[0]


def test_model_dir_is_checked_before_funasr_could_download(tiny_dir, tmp_path):
    assert check_model_dir(tiny_dir) == tiny_dir
    with pytest.raises(ModelDirError, match="never downloads"):
        check_model_dir(tmp_path / "iic/SenseVoiceSmall")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / SENSEVOICE_BPE_FILE).unlink()
    with pytest.raises(ModelDirError, match=SENSEVOICE_BPE_FILE):
        check_model_dir(broken)
    with pytest.raises(ConfigError, match="--model"):
        AnnotateConfig()
    version = model_version(tiny_dir)
    assert version == model_version(tiny_dir) and len(version) == 16
    (broken / SENSEVOICE_BPE_FILE).write_bytes((tiny_dir / SENSEVOICE_BPE_FILE).read_bytes())
    (broken / "am.mvn").write_text((tiny_dir / "am.mvn").read_text() + " ")
    assert model_version(broken) != version


@pytest.mark.slow
def test_tiny_model_loads_and_decodes_through_automodel(tiny_dir, jfk):
    labeler = SenseVoiceLabeler(tiny_dir, device="cpu")
    assert sorted(labeler.tag_ids.values()) == sorted(ALL_TAGS)  # each tag: one piece
    out = labeler.label([jfk[: 3 * 16000], jfk[16000 : 2 * 16000]])
    assert len(out) == 2
    for labels in out:
        assert labels.raw_text  # a random model still emits tokens, decoded by the tokenizer
        assert labels.transcript_confidence is not None
        assert 0.0 < labels.transcript_confidence <= 1.0


@pytest.mark.slow
def test_a_head_that_favours_a_tag_labels_it_with_high_confidence(tiny_dir, tmp_path, jfk):
    """The tag path end to end: a CTC bias toward <|HAPPY|> makes every frame emit it."""
    biased = tmp_path / "biased"
    shutil.copytree(tiny_dir, biased)
    state = torch.load(biased / "model.pt", weights_only=True)
    labeler = SenseVoiceLabeler(tiny_dir, device="cpu")
    happy = next(i for i, name in labeler.tag_ids.items() if name == "HAPPY")
    state["ctc.ctc_lo.bias"][happy] += 1000.0
    torch.save(state, biased / "model.pt")
    (labels,) = SenseVoiceLabeler(biased, device="cpu").label([jfk[: 2 * 16000]])
    assert labels.raw_text == tag_piece("HAPPY")
    assert labels.emotion == "happy" and labels.emotion_confidence == pytest.approx(1.0)
    assert labels.transcript == "" and labels.language is None


# ---- the step on a build -------------------------------------------------------------------


@pytest.fixture(scope="module")
def build(ray_local, shared_data, tiny_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("annotate")
    src = root / "src"
    src.mkdir()
    for name in ("ja.wav", "ko.wav", "yue.wav", "zh.wav"):
        shutil.copy(shared_data / "asr_sensevoice_multilang" / name, src / name)
    shutil.copy(shared_data / "asr_whisper_jfk" / "jfk.flac", src / "jfk.flac")
    build_dir = str(root / "build")
    run_ingest(str(src), build_dir, IngestConfig(files_per_unit=2), progress=False)
    (src / "zh.wav").unlink()  # its segments cannot be read again: quarantined by annotate
    config = AnnotateConfig(model=str(tiny_dir), actors=1, batch_size=4, units_per_wave=2)
    first = run_annotate(build_dir, config, progress=False)
    return {"build": build_dir, "config": config, "first": first}


def _annotation_files(build_dir: str) -> list[str]:
    b = BuildDir(build_dir)
    return [p.rsplit("/", 1)[-1] for p in b.files(b.table_dir("annotations"), ".parquet")]


@pytest.mark.slow
def test_every_segment_is_labelled_or_quarantined_once(build):
    b = BuildDir(build["build"])
    segments = SEGMENTS.validate(read_table(b, "segments")).to_pylist()
    annotations = ANNOTATIONS.validate(read_table(b, "annotations"))
    quarantine = QUARANTINE.validate(read_table(b, "quarantine")).to_pylist()
    ours = [q for q in quarantine if q["step"] == "annotate"]
    labelled = annotations.column("segment_id").to_pylist()
    assert len(labelled) == len(set(labelled))
    assert sorted(labelled + [q["item_key"] for q in ours]) == sorted(
        s["segment_id"] for s in segments
    )
    assert ours and all(q["reason_code"] == ReasonCode.MISSING_FILE.value for q in ours)
    assert all(q["source_uri"].endswith("zh.wav") for q in ours)
    rows = annotations.to_pylist()
    assert {r["model"] for r in rows} == {"SenseVoiceSmall"}
    assert {r["model_version"] for r in rows} == {build["first"].model_version}
    assert all(r["transcript"] is not None for r in rows)
    first = build["first"]
    assert first.segments == len(rows) == first.segments_run - len(ours)
    assert first.quarantined == {ReasonCode.MISSING_FILE.value: len(ours)}
    assert first.audio_s == pytest.approx(
        sum(s["duration_s"] for s in segments if s["segment_id"] in set(labelled)), rel=1e-3
    )
    assert first.hours_per_core_hour > 0 and "per core-h" in first.render()


@pytest.mark.slow
def test_part_files_fold_into_the_segments_unit_they_label(build):
    b = BuildDir(build["build"])
    segment_units = {unit_key(p.rsplit("/", 1)[-1]) for p in b.files(b.table_dir("segments"))}
    names = _annotation_files(build["build"])
    assert names and all(n.startswith("annotate~ingest.") for n in names)
    assert {unit_key(n, "annotations") for n in names} <= segment_units
    assert build["first"].units == len(segment_units) >= 2


@pytest.mark.slow
def test_rerun_is_a_no_op_and_a_lost_marker_redoes_only_its_unit(build):
    b = BuildDir(build["build"])
    before = read_table(b, "annotations").sort_by("segment_id")
    files_before = _annotation_files(build["build"])
    again = run_annotate(build["build"], build["config"], progress=False)
    assert again.units_run == 0 and again.segments_run == 0
    assert again.segments == build["first"].segments
    markers = b.files(b.path("_state", "annotate", "done"), ".json")
    b.delete(markers[0])
    redo = run_annotate(build["build"], build["config"], progress=False)
    assert redo.units_run == 1 and redo.segments == build["first"].segments
    after = read_table(b, "annotations").sort_by("segment_id")
    assert after.equals(before)  # same rows, none twice: the unit's old files were replaced
    assert _annotation_files(build["build"]) == files_before


def test_the_command_refuses_a_missing_model_before_any_work(tmp_path, capsys):
    from minmo.cli import main

    build_dir = str(tmp_path / "build")
    assert main(["annotate", "--build", build_dir, "--model", str(tmp_path / "none")]) == 2
    assert "never downloads" in capsys.readouterr().err
    assert main(["annotate", "--build", build_dir]) == 2
    assert "--model" in capsys.readouterr().err
    assert not (tmp_path / "build" / "annotations").exists()


@pytest.mark.slow
def test_another_model_version_is_refused_not_mixed_in(build, tiny_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    (other / "am.mvn").write_text((tiny_dir / "am.mvn").read_text() + "\n")
    config = AnnotateConfig(model=str(other), actors=1)
    with pytest.raises(ConfigError, match="delete .*annotations"):
        run_annotate(build["build"], config, progress=False)
