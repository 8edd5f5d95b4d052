"""The VAD stage on pyarrow batches, without Ray: segmentation, supervisions, measurements."""

import json

import pyarrow as pa
import pytest

from pipelines.ingest.config import IngestConfig
from pipelines.ingest.decode_stage import decode_batch
from pipelines.ingest.items import LabelProblem, SourceItem, Supervision
from pipelines.ingest.vad_stage import VadSegmenter, merge_regions


@pytest.fixture(scope="module")
def segmenter():
    return VadSegmenter(IngestConfig().to_dict())


def _run(segmenter, items):
    batch = pa.table(
        {
            "unit": ["u"] * len(items),
            "order": list(range(len(items))),
            "item_json": [json.dumps(i.to_row()) for i in items],
        }
    )
    decoded = decode_batch(batch, IngestConfig().to_dict())
    out = segmenter(decoded).to_pylist()
    return [
        (
            json.loads(r["recording_json"]) if r["recording_json"] else None,
            json.loads(r["segments_json"]),
            json.loads(r["quarantine_json"]),
        )
        for r in out
    ]


def test_merge_regions_joins_short_pauses_up_to_the_cap():
    regions = [(0.0, 1.0), (1.2, 2.0), (3.0, 4.0), (4.1, 40.0)]
    assert merge_regions(regions, max_gap_s=0.5, max_len_s=30.0) == [
        (0.0, 2.0),
        (3.0, 4.0),
        (4.1, 40.0),
    ]


def test_two_channel_call_is_segmented_per_channel(segmenter, shared_data):
    path = shared_data / "stereo_aws_lca_autorepairs40" / "Auto_Repairs_40_UTC_stereo.wav"
    ((recording, segments, rejected),) = _run(segmenter, [SourceItem(str(path), corpus="aws")])
    assert rejected == []
    assert recording["channels"] == 2 and 0.2 < recording["speech_ratio"] < 1.0
    assert recording["snr_db"] is not None and recording["snr_db"] > 10
    assert {s["channel"] for s in segments} == {0, 1}
    assert all(0 < s["duration_s"] <= 30.0 + 1e-9 for s in segments)
    assert all(s["origin"] == "vad" and s["text"] is None for s in segments)
    assert len({s["segment_id"] for s in segments}) == len(segments)
    for channel in (0, 1):
        mine = [s for s in segments if s["channel"] == channel]
        assert all(a["end_s"] <= b["start_s"] for a, b in zip(mine, mine[1:], strict=False))
        assert sum(s["speech_prob"] for s in mine) / len(mine) > 0.5


def test_transcripts_become_segments_only_when_they_fit(segmenter, shared_data):
    short = shared_data / "asr_whisper_jfk" / "jfk.flac"
    long = shared_data / "asr_fasterwhisper_en_de" / "multilingual.mp3"
    items = [
        SourceItem(str(short), corpus="c", text="ask not", language="en"),
        SourceItem(str(long), corpus="c", text="a long transcript", language="en"),
    ]
    (jfk, jfk_segments, _), (mp3, mp3_segments, _) = _run(segmenter, items)
    assert [(s["origin"], s["text"], s["start_s"]) for s in jfk_segments] == [
        ("supervision", "ask not", 0.0)
    ]
    assert jfk_segments[0]["end_s"] == pytest.approx(jfk["duration_s"], abs=1e-3)
    assert mp3["transcript"] == "a long transcript"
    assert mp3_segments and all(s["origin"] == "vad" for s in mp3_segments)
    assert all(s["duration_s"] <= 30.0 + 1e-9 for s in mp3_segments)


def test_supervision_outside_the_audio_is_quarantined(segmenter, shared_data):
    path = shared_data / "asr_whisper_jfk" / "jfk.flac"
    sups = [
        Supervision(1.0, 3.0, text="fine", speaker="jfk", item_key="u1"),
        Supervision(20.0, 25.0, text="past the end", item_key="u2"),
        Supervision(2.0, 4.0, channel=1, text="no such channel", item_key="u3"),
    ]
    ((_, segments, rejected),) = _run(
        segmenter, [SourceItem(str(path), corpus="c", supervisions=sups)]
    )
    assert [(s["text"], s["speaker"]) for s in segments] == [("fine", "jfk")]
    assert sorted((q["reason_code"], q["item_key"]) for q in rejected) == [
        ("bad_segment", "u2"),
        ("bad_segment", "u3"),
    ]


def test_labels_layer_onto_segments_and_refusals_are_kept(segmenter, shared_data):
    path = shared_data / "asr_whisper_jfk" / "jfk.flac"
    sups = [
        Supervision(1.0, 3.0, text="fine", item_key="u1", labels={"emotion": "sad"}),
        Supervision(4.0, 6.0, text="more", item_key="u2"),
    ]
    file_labels = {"emotion": "neutral", "gender": "male", "audio_events": ["applause"]}
    problem = LabelProblem("u2", "m.jsonl#line 2: age: age 'old' is not a number")
    labelled = SourceItem(
        str(path), corpus="c", supervisions=sups, labels=file_labels, label_problems=[problem]
    )
    unsupervised = SourceItem(str(path), corpus="d", labels={"age": 43})
    (rec, segments, rejected), (_, vad_segments, vad_rejected) = _run(
        segmenter, [labelled, unsupervised]
    )
    assert (rec["emotion"], rec["gender"], rec["age"]) == ("neutral", "male", None)
    cells = [(s["emotion"], s["gender"], s["audio_events"]) for s in segments]
    assert cells == [("sad", "male", ["applause"]), ("neutral", "male", ["applause"])]
    # the decoded item's refused label is still a bad_label row, beside its recording
    assert [(q["reason_code"], q["item_key"], q["detail"]) for q in rejected] == [
        ("bad_label", "u2", problem.detail)
    ]
    assert vad_segments and vad_rejected == []
    assert all((s["origin"], s["age"], s["emotion"]) == ("vad", 43, None) for s in vad_segments)
