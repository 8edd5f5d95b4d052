"""Labels in every ingest layout: manifests (JSONL / CSV / Parquet / .json), Kaldi label files,
Lhotse supervisions; bad label values quarantined with their location; ignored columns counted.

The reader tests list placeholder audio (readers never open it) and need no Ray; one run test
ingests real speech from ../shared/data end to end and reads the label columns back.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from minmo.config import ConfigError
from pipelines.build import BuildDir
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.items import SourceItem, label_cells
from pipelines.ingest.layouts.common import MAX_TALLIED_COLUMNS, OTHER_COLUMNS, ColumnTally
from pipelines.ingest.run import read_table, run_ingest
from pipelines.ingest.sources import list_sources
from schemas import RECORDINGS, SEGMENTS
from schemas.quarantine import QUARANTINE

AUDIO = b"RIFF\x00\x00\x00\x00WAVE"  # never decoded by the readers


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    return _write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _list(src: Path, **kw) -> tuple[dict[str, SourceItem], list[dict]]:
    entries = list(list_sources(str(src), **kw))
    items = {Path(e.source_uri).name: e for e in entries if isinstance(e, SourceItem)}
    rows = [e for e in entries if not isinstance(e, SourceItem)]
    QUARANTINE.from_rows(rows)
    return items, rows


def _problems(items: dict[str, SourceItem]) -> dict[str, list[str]]:
    return {name: [p.detail for p in i.label_problems] for name, i in items.items()}


# --- manifests ---------------------------------------------------------------------------------


def test_jsonl_emotion_codes_and_words_map_onto_the_vocabulary(tmp_path: Path):
    rows = [
        ("03-01-05-01-01-01-01.wav", "05"),  # RAVDESS code
        ("03-01-03-01-01-01-02.wav", "3"),  # RAVDESS code written without its zero
        ("1001_DFA_ANG_XX.wav", "ANG"),  # CREMA-D
        ("0011_000001.wav", "Neutral"),  # ESD
        ("dia1_utt0.wav", "joy"),  # MELD
        ("Ses01F_impro01_F000.wav", "xxx"),  # IEMOCAP: no agreement, no label
    ]
    for name, _ in rows:
        _write(tmp_path / "clips" / name, AUDIO)
    manifest = _jsonl(
        tmp_path / "ravdess.jsonl",
        [
            {"path": f"clips/{n}", "text": "kids are talking by the door", "emotion": e}
            for n, e in rows
        ],
    )
    items, refused = _list(manifest)
    assert refused == []
    got = {n: i.labels.get("emotion") for n, i in items.items()}
    assert got == {
        "03-01-05-01-01-01-01.wav": "angry",
        "03-01-03-01-01-01-02.wav": "happy",
        "1001_DFA_ANG_XX.wav": "angry",
        "0011_000001.wav": "neutral",
        "dia1_utt0.wav": "happy",
        "Ses01F_impro01_F000.wav": None,
    }
    whole = items["1001_DFA_ANG_XX.wav"].supervisions
    assert len(whole) == 1 and whole[0].labels == {"emotion": "angry"}


def test_csv_gender_age_events_translations_and_dialect(tmp_path: Path):
    _write(tmp_path / "a.wav", AUDIO)
    _write(tmp_path / "b.wav", AUDIO)
    path = tmp_path / "corpus.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["path", "text", "gender", "age", "audio_events", "translations", "dialect"])
        out.writerow(
            [
                "a.wav",
                "hello there",
                "F",
                "34",
                '["Laughter", "music", "laughter"]',
                '[{"language": "de", "text": "Hallo da"}, {"lang": "fr", "text": "salut"}]',
                "Scottish English",
            ]
        )
        out.writerow(["b.wav", "hi", "male", "thirties", "", "", ""])
    items, refused = _list(path)
    assert refused == []
    assert items["a.wav"].labels == {
        "gender": "female",
        "age": 34,
        "audio_events": ["laughter", "music"],
        "translations": [
            {"language": "de", "text": "Hallo da"},
            {"language": "fr", "text": "salut"},
        ],
        "dialect": "Scottish English",
    }
    assert items["b.wav"].labels == {"gender": "male", "age": 35}  # blank cells: no label
    assert items["b.wav"].supervisions[0].labels == items["b.wav"].labels


def test_parquet_lists_and_the_events_alias(tmp_path: Path):
    _write(tmp_path / "a.wav", AUDIO)
    _write(tmp_path / "b.wav", AUDIO)
    table = pa.table(
        {
            "audio_filepath": ["a.wav", "b.wav"],
            "events": [["Applause"], None],
            "translations": [[{"language": "zh", "text": "你好"}], None],
            "age": [41.0, 250.0],
            "speaker_age_group": ["adult", None],
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    tally = ColumnTally()
    items, refused = _list(tmp_path / "m.parquet", ignored=tally)
    assert refused == []
    assert items["a.wav"].labels == {
        "audio_events": ["applause"],
        "translations": [{"language": "zh", "text": "你好"}],
        "age": 41,
    }
    assert items["b.wav"].labels == {}
    ((problem,),) = [i.label_problems for i in items.values() if i.label_problems]
    assert problem.detail.startswith("m.parquet#row 2: age: ")
    assert "250" in problem.detail
    assert tally.as_dict() == {"speaker_age_group": 1}  # only rows that give it a value


def test_each_bad_label_is_located_and_the_recording_kept(tmp_path: Path):
    for name in "abcde":
        _write(tmp_path / f"{name}.wav", AUDIO)
    manifest = _jsonl(
        tmp_path / "labels.jsonl",
        [
            {"path": "a.wav", "emotion": "furious", "gender": "f"},
            {"path": "b.wav", "age": "old", "emotion": "sad"},
            {"path": "c.wav", "audio_events": "laughter"},
            {"path": "d.wav", "audio_events": {"laughter": 1}},
            {"path": "e.wav", "id": "utt-e", "translations": [{"text": "bonjour"}], "dialect": "x"},
        ],
    )
    items, refused = _list(manifest)
    assert refused == [] and sorted(items) == ["a.wav", "b.wav", "c.wav", "d.wav", "e.wav"]
    problems = _problems(items)
    assert [d.split(": ")[:2] for ds in problems.values() for d in ds] == [
        ["labels.jsonl#line 1", "emotion"],
        ["labels.jsonl#line 2", "age"],
        ["labels.jsonl#line 3", "audio_events"],
        ["labels.jsonl#line 4", "audio_events"],
        ["labels.jsonl#line 5", "translations"],
    ]
    assert "'furious'" in problems["a.wav"][0] and "'old'" in problems["b.wav"][0]
    assert "no language" in problems["e.wav"][0]
    assert items["e.wav"].label_problems[0].item_key == "utt-e"
    # the other labels of a row with a bad one are kept
    assert items["a.wav"].labels == {"gender": "female"}
    assert items["b.wav"].labels == {"emotion": "sad"}
    assert items["e.wav"].labels == {"dialect": "x"}


def test_bad_labels_in_csv_name_the_line(tmp_path: Path):
    _write(tmp_path / "a.wav", AUDIO)
    _write(
        tmp_path / "m.csv", 'path,gender,audio_events\n\na.wav,robot,"[""ok"", 3]"\n'
    )  # a blank line: CSV line numbers count it
    items, _ = _list(tmp_path / "m.csv")
    details = _problems(items)["a.wav"]
    assert [d.split(": ")[:2] for d in details] == [
        ["m.csv#line 3", "gender"],
        ["m.csv#line 3", "audio_events"],
    ]


def test_json_document_rows_are_numbered(tmp_path: Path):
    _write(tmp_path / "a.wav", AUDIO)
    _write(tmp_path / "b.wav", AUDIO)
    doc = {"u1": {"wav": "a.wav", "emotion": "happy"}, "u2": {"wav": "b.wav", "emotion": "meh"}}
    _write(tmp_path / "annotation.json", json.dumps(doc))
    items, _ = _list(tmp_path / "annotation.json", fmt="jsonl")
    assert items["a.wav"].labels == {"emotion": "happy"}
    (problem,) = items["b.wav"].label_problems
    assert problem.item_key == "u2" and problem.detail.startswith("annotation.json#row 2: emotion")


def test_ignored_columns_are_tallied_once_with_their_counts(tmp_path: Path):
    _write(tmp_path / "a.wav", AUDIO)
    rows = [
        {"path": "a.wav", "duration": 1.0, "offset": 0, "speaker_age_group": "adult", "foo": i}
        for i in range(3)
    ]
    rows[0]["foo"] = None  # a null cell gives no value: not counted
    rows.append({"path": "a.wav", "speaker_age_group": "child", "events": ["x"], "lang": "en"})
    manifest = _jsonl(tmp_path / "m.jsonl", rows)
    tally = ColumnTally()
    list(list_sources(str(manifest), ignored=tally))
    assert tally.as_dict() == {"speaker_age_group": 4, "foo": 2}


def test_column_tally_is_bounded():
    tally = ColumnTally()
    tally.add(f"c{i}" for i in range(MAX_TALLIED_COLUMNS + 10))
    tally.add(["c0", "new"])
    counts = tally.as_dict()
    assert len(counts) == MAX_TALLIED_COLUMNS + 1
    assert counts[OTHER_COLUMNS] == 11 and counts["c0"] == 2


def test_emotion_map_gives_the_jobs_own_codes(tmp_path: Path):
    _write(tmp_path / "a.wav", AUDIO)
    _write(tmp_path / "b.wav", AUDIO)
    manifest = _jsonl(
        tmp_path / "m.jsonl",
        [{"path": "a.wav", "emotion": "Grr"}, {"path": "b.wav", "emotion": "A"}],
    )
    config = IngestConfig(emotion_map={" GRR ": "angry", "a": "happy"})
    assert config.emotion_map == {"grr": "angry", "a": "happy"}
    items, _ = _list(manifest, emotion_map=config.emotion_map)
    assert {n: i.labels["emotion"] for n, i in items.items()} == {
        "a.wav": "angry",
        "b.wav": "happy",
    }
    with pytest.raises(ConfigError, match="emotion_map"):
        IngestConfig(emotion_map={"grr": "cross"})


def test_label_cells_layer_supervision_over_recording():
    cells = label_cells({"emotion": "sad"}, {"emotion": "happy", "gender": "male"})
    assert cells == {
        "emotion": "sad",
        "gender": "male",
        "age": None,
        "audio_events": None,
        "translations": None,
        "dialect": None,
    }
    assert label_cells() == dict.fromkeys(cells)


# --- Kaldi -------------------------------------------------------------------------------------


def _kaldi(root: Path, *, segments: bool) -> Path:
    data = root / "data"
    _write(root / "rec1.wav", AUDIO)
    _write(root / "rec2.wav", AUDIO)
    _write(data / "wav.scp", "rec1 ../rec1.wav\nrec2 ../rec2.wav\n")
    if segments:
        _write(
            data / "segments",
            "rec1-a rec1 0.0 1.0\nrec1-b rec1 1.0 2.0\nrec1-c rec1 2.0 3.0\nrec2-a rec2 0 1\n",
        )
        _write(data / "utt2spk", "rec1-a spkA\nrec1-b spkB\nrec1-c spkA\nrec2-a spkB\n")
        _write(data / "spk2gender", "spkA f\nspkB m\n")
        _write(data / "utt2gender", "rec1-c m\n")  # the utterance's own file wins
        _write(data / "utt2emotion", "rec1-a ang\nrec1-b ecstatic\nrec2-a 04\n")
        _write(data / "utt2age", "rec1-a 30\nrec1-b 31\nrec9-z 40\n")
        _write(data / "utt2dialect", "rec2-a Doric\n")
    else:
        _write(data / "utt2spk", "rec1 spkA\nrec2 spkB\n")
        _write(data / "spk2gender", "spkA f\nspkB x\n")
        _write(data / "utt2emotion", "rec1 hap\n")
    return data


def test_kaldi_label_files_with_segments(tmp_path: Path):
    items, refused = _list(_kaldi(tmp_path, segments=True))
    assert refused == []
    labels = {s.item_key: s.labels for i in items.values() for s in i.supervisions}
    assert labels == {
        "rec1-a": {"gender": "female", "emotion": "angry", "age": 30},
        "rec1-b": {"gender": "male", "age": 31},
        "rec1-c": {"gender": "male"},
        "rec2-a": {"gender": "male", "emotion": "sad", "dialect": "Doric"},
    }
    assert items["rec1.wav"].labels == {}  # the recording has no whole-file labels
    (problem,) = items["rec1.wav"].label_problems
    assert problem.item_key == "rec1-b"
    assert problem.detail.startswith("utt2emotion#line 2: emotion: ")
    assert "'ecstatic'" in problem.detail
    assert items["rec2.wav"].label_problems == []


def test_kaldi_label_files_without_segments(tmp_path: Path):
    items, refused = _list(_kaldi(tmp_path, segments=False))
    assert refused == []
    assert items["rec1.wav"].labels == {"gender": "female", "emotion": "happy"}
    assert items["rec2.wav"].labels == {}
    (problem,) = items["rec2.wav"].label_problems
    assert problem.item_key == "rec2" and problem.detail.startswith("spk2gender#line 2: gender")


# --- Lhotse ------------------------------------------------------------------------------------


def _recording(rec_id: str, source: str, duration: float) -> dict:
    return {
        "id": rec_id,
        "sources": [{"type": "file", "channels": [0], "source": source}],
        "sampling_rate": 16000,
        "num_samples": int(duration * 16000),
        "duration": duration,
    }


def _sup(sup_id: str, rec_id: str, start: float, duration: float, **kw) -> dict:
    return {"id": sup_id, "recording_id": rec_id, "start": start, "duration": duration, **kw}


def test_lhotse_supervision_gender_and_custom(tmp_path: Path):
    root = tmp_path / "lh"
    _write(root / "r1.wav", AUDIO)
    _write(root / "r2.wav", AUDIO)
    _jsonl(
        root / "recordings.jsonl",
        [_recording("r1", "r1.wav", 4.0), _recording("r2", "r2.wav", 2.0)],
    )
    _jsonl(
        root / "supervisions.jsonl",
        [
            _sup("s1", "r1", 0.0, 1.0, text="hi", gender="F", custom={"emotion": "Happy"}),
            _sup(
                "s2",
                "r1",
                1.0,
                1.0,
                custom={"age": "forty", "events": ["Cough"], "snr": 3, "gender": "m"},
            ),
            _sup(
                "s3",
                "r2",
                0.0,
                2.0,
                text="whole",
                language="en",
                custom={"translations": [{"language": "de", "text": "ganz"}], "dialect": "Geordie"},
            ),
        ],
    )
    tally = ColumnTally()
    items, refused = _list(root, ignored=tally)
    assert refused == []
    labels = {s.item_key: s.labels for i in items.values() for s in i.supervisions}
    assert labels == {
        "s1": {"gender": "female", "emotion": "happy"},
        "s2": {"gender": "male", "audio_events": ["cough"]},
        "s3": {"translations": [{"language": "de", "text": "ganz"}], "dialect": "Geordie"},
    }
    (problem,) = items["r1.wav"].label_problems
    assert problem.item_key == "s2"
    assert (
        problem.detail.startswith("supervisions.jsonl#line 2: age: ")
        and "'forty'" in problem.detail
    )
    # one supervision spanning the whole file labels the recording too
    assert items["r2.wav"].labels == labels["s3"] and items["r1.wav"].labels == {}
    assert tally.as_dict() == {"custom.snr": 1}


def test_lhotse_cut_supervisions_are_located(tmp_path: Path):
    root = tmp_path / "cuts"
    _write(root / "r1.wav", AUDIO)
    cut = {
        "id": "c1",
        "start": 1.0,
        "duration": 2.0,
        "channel": 0,
        "recording": _recording("r1", "r1.wav", 4.0),
        "supervisions": [_sup("s1", "r1", 0.5, 1.0, gender="robot", custom={"emotion": "sad"})],
        "type": "MonoCut",
    }
    _jsonl(root / "cuts.jsonl", [cut])
    items, refused = _list(root)
    assert refused == []
    (sup,) = items["r1.wav"].supervisions
    assert (sup.start_s, sup.labels) == (1.5, {"emotion": "sad"})
    (problem,) = items["r1.wav"].label_problems
    assert problem.detail.startswith("cuts.jsonl#line 1: gender: ") and problem.item_key == "s1"


# --- a version-1 build ---------------------------------------------------------------------------


def test_a_build_without_label_columns_reads_with_them_null(tmp_path: Path):
    build = BuildDir(str(tmp_path / "build"))
    v1 = SEGMENTS.schema
    for name in ("emotion", "gender", "age", "audio_events", "translations", "dialect"):
        v1 = v1.remove(v1.get_field_index(name))
    row = {
        "segment_id": "r-c0-000000000-000001000",
        "recording_id": "r",
        "channel": 0,
        "start_s": 0.0,
        "end_s": 1.0,
        "duration_s": 1.0,
        "speech_prob": 0.9,
        "origin": "vad",
        "text": None,
        "speaker": None,
        "language": None,
    }
    path = Path(build.table_dir("segments")) / "ingest~old_0000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row], schema=v1), path)
    table = read_table(build, "segments")
    SEGMENTS.validate(table)
    assert table.to_pylist()[0]["emotion"] is None and table.column("translations").null_count == 1


# --- end to end --------------------------------------------------------------------------------


@pytest.mark.slow
def test_labels_reach_recordings_and_segments(tmp_path: Path, shared_data: Path):
    clips = shared_data / "asr_speechbrain_en"
    rows = [
        {"path": str(clips / "spk1_snt1.wav"), "text": "the cat", "emotion": "05", "gender": "m"},
        {"path": str(clips / "spk1_snt2.wav"), "emotion": "Neutral", "age": "34", "mood": "ok"},
        {"path": str(clips / "spk2_snt1.wav"), "emotion": "furious", "audio_events": '["Music"]'},
        {
            "path": str(clips / "spk2_snt2.wav"),
            "age": "old",
            "translations": [{"language": "de", "text": "Hallo"}],
            "mood": "meh",
            "speaker_age_group": "adult",
        },
    ]
    manifest = _jsonl(tmp_path / "clips.jsonl", rows)
    build = str(tmp_path / "build")
    config = IngestConfig(vad_actors=1)
    summary = run_ingest(str(manifest), build, config, progress=False)
    b = BuildDir(build)
    recs = RECORDINGS.validate(read_table(b, "recordings"))
    segs = SEGMENTS.validate(read_table(b, "segments")).to_pylist()
    quarantine = read_table(b, "quarantine").to_pylist()
    assert recs.num_rows == 4, quarantine
    by_name = {Path(r["source_uri"]).name: r for r in recs.to_pylist()}
    assert (by_name["spk1_snt1.wav"]["emotion"], by_name["spk1_snt1.wav"]["gender"]) == (
        "angry",
        "male",
    )
    assert (by_name["spk1_snt2.wav"]["emotion"], by_name["spk1_snt2.wav"]["age"]) == ("neutral", 34)
    assert by_name["spk2_snt1.wav"]["emotion"] is None  # refused, and the recording kept
    assert by_name["spk2_snt1.wav"]["audio_events"] == ["music"]
    assert by_name["spk2_snt2.wav"]["translations"] == [{"language": "de", "text": "Hallo"}]
    assert by_name["spk2_snt2.wav"]["age"] is None

    name_of = {r["recording_id"]: n for n, r in by_name.items()}
    for seg in segs:  # supervised (transcribed) and VAD segments alike carry the file's labels
        rec = by_name[name_of[seg["recording_id"]]]
        assert {k: seg[k] for k in ("emotion", "gender", "age", "audio_events")} == {
            k: rec[k] for k in ("emotion", "gender", "age", "audio_events")
        }
    origins = {(name_of[s["recording_id"]], s["origin"]) for s in segs}
    assert ("spk1_snt1.wav", "supervision") in origins and ("spk1_snt2.wav", "vad") in origins

    bad = sorted(
        (q["detail"], q["source_uri"]) for q in quarantine if q["reason_code"] == "bad_label"
    )
    assert [d.split(": ")[:2] for d, _ in bad] == [
        ["clips.jsonl#line 3", "emotion"],
        ["clips.jsonl#line 4", "age"],
    ]
    assert bad[0][1].endswith("spk2_snt1.wav") and all(q["source_key"] for q in quarantine)
    assert summary.quarantined == {"bad_label": 2}
    assert summary.ignored_columns == {"mood": 2, "speaker_age_group": 1}
    assert "ignored manifest columns: mood (2 rows), speaker_age_group (1 row)" in summary.render()
    saved = json.loads((tmp_path / "build" / "_state" / "ingest" / "summary.json").read_text())
    assert saved["ignored_columns"] == {"mood": 2, "speaker_age_group": 1}

    again = run_ingest(str(manifest), build, config, progress=False)  # resumed: nothing to do
    assert again.units_run == 0 and again.quarantined == {"bad_label": 2}
    assert again.ignored_columns == summary.ignored_columns
