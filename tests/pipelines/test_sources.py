"""Source layout readers: every folder of ../shared/data, synthetic hostile layouts, and S3.

The readers never open audio, so synthetic layouts hold placeholder bytes where audio would be;
the real folders hold real audio and their reference transcripts.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from minmo.io.channel_uri import channel_uris
from minmo.io.fs import Location, open_filesystem
from pipelines.ingest.items import SourceItem
from pipelines.ingest.layouts.common import KeyedLookup, Pending, ReadContext
from pipelines.ingest.sources import (
    AUDIO_EXTENSIONS,
    FORMATS,
    LAYOUTS,
    Layout,
    detect_format,
    list_sources,
)
from schemas.quarantine import QUARANTINE

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
AUDIO = b"RIFF\x00\x00\x00\x00WAVE"  # never decoded here: readers only list


def split(entries) -> tuple[list[SourceItem], list[dict]]:
    entries = list(entries)
    items = [e for e in entries if isinstance(e, SourceItem)]
    rows = [e for e in entries if not isinstance(e, SourceItem)]
    QUARANTINE.from_rows(rows)  # every refusal is a valid quarantine row with a closed code
    return items, rows


def reasons(rows: list[dict]) -> list[str]:
    return sorted(r["reason_code"] for r in rows)


def by_name(items: list[SourceItem]) -> dict[str, SourceItem]:
    return {Path(i.source_uri).name: i for i in items}


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# --- the real folders --------------------------------------------------------------------------

# folder → (layout, items, supervisions, quarantined)
EXPECTED = {
    "asr_diar_lhotse_ami_ES2011a": ("lhotse", 1, 2, 1),
    "asr_fasterwhisper_en_de": ("dir", 1, 1, 0),
    "asr_lhotse_libri_lj": ("lhotse", 3, 3, 1),
    "asr_sensevoice_multilang": ("dir", 4, 4, 0),
    "asr_speechbrain_en": ("dir", 13, 13, 0),
    "asr_wenet_zh_en": ("dir", 2, 2, 0),
    "asr_whisper_jfk": ("dir", 1, 1, 0),
    "diar_pyannote_sample": ("dir", 1, 0, 0),
    "stereo_aws_lca_autorepairs40": ("dir", 1, 0, 0),
    "stereo_fasterwhisper_2ch": ("dir", 1, 0, 0),
    "stereo_mcgill_M1F1": ("dir", 1, 0, 0),
    "vad_speechbrain": ("dir", 2, 0, 0),
}


def test_every_shared_folder_is_covered():
    assert sorted(p.name for p in DATA.iterdir() if p.is_dir()) == sorted(EXPECTED)


@pytest.mark.parametrize("folder", sorted(EXPECTED))
def test_shared_folder_lists(folder):
    fmt, n_items, n_sups, n_rejected = EXPECTED[folder]
    src = str(DATA / folder)
    assert detect_format(src) == fmt
    items, rows = split(list_sources(src))
    assert (len(items), sum(len(i.supervisions) for i in items), len(rows)) == (
        n_items,
        n_sups,
        n_rejected,
    )
    for item in items:
        assert Path(item.source_uri).is_file()
        assert item.corpus == folder
        assert Path(item.source_uri).suffix in AUDIO_EXTENSIONS


def test_wenet_kaldi_text_keeps_chinese():
    items = by_name(split(list_sources(str(DATA / "asr_wenet_zh_en")))[0])
    zh = items["aishell-BAC009S0724W0121.wav"]
    assert zh.text == "广州市房地产中介协会分析"
    assert zh.supervisions[0].text == zh.text and zh.supervisions[0].end_s is None
    en = items["librispeech-1995-1837-0001.wav"].text
    assert en.startswith("IT WAS THE FIRST GREAT SORROW") and en.endswith("BUILT AROUND IT")


def test_sensevoice_text_tsv_gives_text_and_language():
    items = by_name(split(list_sources(str(DATA / "asr_sensevoice_multilang")))[0])
    assert {n: i.language for n, i in items.items()} == {
        "ja.wav": "ja",
        "ko.wav": "ko",
        "yue.wav": "yue",
        "zh.wav": "zh",
    }
    assert items["zh.wav"].text == "开放时间早上9点至下午5点。"
    assert items["ko.wav"].text == "조금만 생각을 하면서 살면 훨씬 편할 거야."
    assert items["yue.wav"].text == "呢几个字都表达唔到，我想讲嘅意思。"
    assert items["ja.wav"].text.startswith("うちの中学は弁当制")


def test_speechbrain_text_file_and_flac():
    items = by_name(split(list_sources(str(DATA / "asr_speechbrain_en")))[0])
    assert items["example2.flac"].text == "my father has revealed the culprit"
    assert items["spk2_snt5.wav"].text == "KEN PAIRS LACK FULL FLAVOR"
    assert all(i.text for i in items.values())


def test_jfk_sidecar_transcript():
    [item] = split(list_sources(str(DATA / "asr_whisper_jfk")))[0]
    assert item.text.startswith("And so my fellow Americans, ask not")
    assert item.item_key == "jfk"


def test_ami_cuts_give_speakers_and_quarantine_unattached_supervisions():
    items, rows = split(list_sources(str(DATA / "asr_diar_lhotse_ami_ES2011a")))
    [item] = items
    assert item.source_uri == str(
        DATA / "asr_diar_lhotse_ami_ES2011a/ES2011a.Headset-0-40s-46s.wav"
    )
    sups = [(s.start_s, s.end_s, s.speaker, s.text, s.channel) for s in item.supervisions]
    assert sups == [
        (1.46, 2.82, "ES2011a.Headset-1", "I'M ABIGAIL CLAFLIN", 0),
        (3.36, 4.36, "ES2011a.Headset-2", "YOU CAN CALL ME ABBIE", 0),
    ]
    [row] = rows  # the full-meeting supervisions name recording ES2011a, which is not here
    assert (row["reason_code"], row["item_key"]) == ("missing_file", "ES2011a")
    assert "348 supervision" in row["detail"]


def test_lhotse_libri_flac_found_by_basename_and_missing_track_quarantined():
    items, rows = split(list_sources(str(DATA / "asr_lhotse_libri_lj")))
    items_by = by_name(items)
    flac = items_by["2412-153948-0000.flac"]
    assert flac.text.startswith("IF THE READER WILL EXCUSE ME")
    assert flac.speaker == "2412"
    assert flac.supervisions[0].end_s == pytest.approx(11.66)
    assert items_by["LJ002-0020.wav"].text == "IN EIGHTEEN THIRTEEN"
    [row] = rows  # the second track of the mixed cut has no audio here
    assert (row["reason_code"], row["item_key"]) == ("missing_file", "2412-153948-0001")


def test_lhotse_folder_as_dir_uses_kaldi_text():
    items = by_name(split(list_sources(str(DATA / "asr_lhotse_libri_lj"), "dir"))[0])
    assert items["LJ002-0035.wav"].text == "EIGHT THE PRESS YARD"
    assert len(items) == 3 and all(i.text for i in items.values())


def test_single_files_as_sources():
    cuts = DATA / "asr_diar_lhotse_ami_ES2011a" / "cuts.json"
    assert detect_format(str(cuts)) == "lhotse"
    items, rows = split(list_sources(str(cuts)))
    assert len(items) == 1 and rows == []
    jfk = DATA / "asr_whisper_jfk" / "jfk.flac"
    [item] = split(list_sources(str(jfk), corpus="jfk", task="asr"))[0]
    assert (item.corpus, item.task, item.text is not None) == ("jfk", "asr", True)


def test_speechbrain_json_manifest_placeholders_are_missing_files():
    items, rows = split(list_sources(str(DATA / "asr_speechbrain_en" / "ASR_dev.json")))
    assert items == [] and rows
    assert set(reasons(rows)) == {"missing_file"}  # "{data_root}/..." paths point nowhere


# --- directory layout --------------------------------------------------------------------------


@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    root = tmp_path / "mycorpus"
    write(root / "b.wav", AUDIO)
    write(root / "b.txt", "  你好，世界  \n")
    write(root / "a.flac", AUDIO)
    write(root / "a.lab", "hello there")
    write(root / "bad.wav", AUDIO)
    write(root / "bad.txt", b"caf\xe9\n")
    write(root / "blank.ogg", AUDIO)
    write(root / "blank.txt", " \n")
    write(root / "notes.txt", "not a transcript")
    write(root / "meta.json", "{}")
    write(root / "sub" / "c.mp3", AUDIO)
    write(root / "sub" / "d.opus", AUDIO)
    write(root / "sub" / "text", "c 这是中文\nd  \ne orphan line\n")
    write(root / "sub2" / "x.wav", AUDIO)
    write(root / "sub2" / "text", "unrelated not a transcript of x\n")
    write(root / "a" / "z.wav", AUDIO)
    write(root / "._b.wav", b"\x00\x05\x16\x07")  # a macOS resource fork, not audio
    write(root / ".cache" / "y.wav", AUDIO)
    return root


def test_directory_layout(audio_dir: Path):
    assert detect_format(str(audio_dir)) == "dir"
    items, rows = split(list_sources(str(audio_dir)))
    keys = [i.item_key for i in items]
    assert keys == ["a", "a/z", "b", "sub/c", "sub2/x"]  # sorted as full paths
    got = {i.item_key: i.text for i in items}
    assert got == {
        "a": "hello there",
        "a/z": None,
        "b": "你好，世界",
        "sub/c": "这是中文",
        "sub2/x": None,
    }
    assert {i.corpus for i in items} == {"mycorpus"}
    by_reason = {(r["reason_code"], r["item_key"]) for r in rows}
    assert by_reason == {
        ("bad_transcript_encoding", "bad"),
        ("empty_transcript", "blank"),
        ("empty_transcript", "sub/d"),
        ("missing_file", "e"),
        # beside audio with sidecars, a .txt is a transcript: one without its audio is said
        ("missing_file", "notes"),
    }
    bad = next(r for r in rows if r["item_key"] == "bad")
    assert bad["source_uri"] == str(audio_dir / "bad.wav") and "0xe9" in bad["detail"]


def test_globs(audio_dir: Path):
    def keys(src: str) -> list[str]:
        return [i.item_key for i in split(list_sources(src))[0]]

    assert keys(str(audio_dir / "*.flac")) == ["a"]
    assert keys(str(audio_dir / "**" / "*.wav")) == ["a/z", "b", "sub2/x"]
    assert keys(str(audio_dir / "sub*" / "*")) == ["sub/c", "sub2/x"]  # relative to the base
    assert keys(str(audio_dir / "*")) == ["a", "b"]  # only audio, only this level
    assert detect_format(str(audio_dir / "**" / "*.wav")) == "dir"
    items = split(list_sources(str(audio_dir / "sub" / "*.mp3")))[0]
    assert [(i.text, i.corpus) for i in items] == [("这是中文", "sub")]


# --- manifests ---------------------------------------------------------------------------------


@pytest.fixture
def manifest_dir(tmp_path: Path) -> Path:
    root = tmp_path / "man"
    write(root / "audio" / "good.wav", AUDIO)
    write(root / "audio" / "nemo.flac", AUDIO)
    write(root / "audio" / "blank.wav", AUDIO)
    return root


def jsonl_line(row: dict) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode() + b"\n"


def test_jsonl_manifest_hostile_rows(manifest_dir: Path):
    lines = [
        jsonl_line(
            {"path": "audio/good.wav", "text": "早上好", "language": "zh", "speaker": 7, "id": "u1"}
        ),
        jsonl_line(
            {
                "audio_filepath": str(manifest_dir / "audio/nemo.flac"),
                "text": "hi",
                "corpus": "nemo",
                "duration": 1.5,
            }
        ),
        jsonl_line({"text": "no path here", "id": "u3"}),
        jsonl_line({"path": "audio/missing.wav", "text": "gone"}),
        jsonl_line({"path": "audio/blank.wav", "text": "   "}),
        b'{"path": "audio/good.wav", "text": "caf\xe9"}\n',
        b'{"path": "audio/good.wav", "text": \n',
        b"\n",
        jsonl_line({"path": "audio/good.wav", "text": 42}),
        jsonl_line({"path": "audio/good.wav", "offset": 3.0, "duration": 2.0}),
        jsonl_line(["not", "an", "object"]),
    ]
    manifest = write(manifest_dir / "train.jsonl", b"".join(lines))
    assert detect_format(str(manifest)) == "jsonl"
    items, rows = split(list_sources(str(manifest), task="asr"))
    assert [(Path(i.source_uri).name, i.text, i.corpus, i.task) for i in items] == [
        ("good.wav", "早上好", "man", "asr"),
        ("nemo.flac", "hi", "nemo", "asr"),
    ]
    assert (items[0].language, items[0].speaker, items[0].item_key) == ("zh", "7", "u1")
    assert items[0].source_uri == str(manifest_dir / "audio" / "good.wav")
    assert [(r["reason_code"], r["detail"].split(":")[0]) for r in rows] == [
        ("bad_manifest_row", "line 3"),
        ("missing_file", "no audio file at " + str(manifest_dir / "audio/missing.wav")),
        ("empty_transcript", "line 5"),
        ("bad_transcript_encoding", "line 6"),
        ("bad_manifest_row", "line 7"),
        ("bad_manifest_row", "line 9"),
        ("unsupported_source", "line 10"),
        ("bad_manifest_row", "line 11"),
    ]
    assert rows[0]["item_key"] == "u3" and rows[0]["source_uri"] == str(manifest)


def test_jsonl_gz_manifest(manifest_dir: Path):
    manifest = manifest_dir / "m.jsonl.gz"
    manifest.write_bytes(gzip.compress(jsonl_line({"wav": "audio/good.wav", "txt": "こんにちは"})))
    assert detect_format(str(manifest)) == "jsonl"
    [item] = split(list_sources(str(manifest)))[0]
    assert item.text == "こんにちは"


def test_csv_manifest_hostile_rows(manifest_dir: Path):
    body = (
        "path,text,speaker\n"
        'audio/good.wav,"안녕하세요, 반갑습니다",spk1\n'
        "audio/missing.wav,gone,\n"
        ",no path,\n"
        "audio/blank.wav,,\n"
    ).encode() + b"audio/good.wav,caf\xe9,\n"
    manifest = write(manifest_dir / "m.csv", body)
    assert detect_format(str(manifest)) == "csv"
    items, rows = split(list_sources(str(manifest)))
    assert [(i.text, i.speaker) for i in items] == [("안녕하세요, 반갑습니다", "spk1")]
    assert [(r["reason_code"], r["detail"].split(":")[0]) for r in rows] == [
        ("missing_file", "no audio file at " + str(manifest_dir / "audio/missing.wav")),
        ("bad_manifest_row", "line 4"),
        ("empty_transcript", "line 5"),
        ("bad_transcript_encoding", "line 6"),
    ]


def test_csv_without_path_column(manifest_dir: Path):
    manifest = write(manifest_dir / "m.tsv", "file\ttext\naudio/good.wav\thello\n")
    items, rows = split(list_sources(str(manifest)))
    assert items == [] and reasons(rows) == ["bad_manifest_row"]
    assert "looked for path" in rows[0]["detail"]


def test_parquet_manifest_hostile_rows(manifest_dir: Path):
    table = pa.table(
        {
            "audio": [
                "audio/good.wav",
                None,
                "audio/missing.wav",
                "audio/blank.wav",
                "audio/good.wav",
            ],
            "text": [b"\xe7\xb2\xa4\xe8\xaf\xad", b"x", b"y", b"  ", b"caf\xe9"],
            "language": ["yue", None, None, None, None],
        }
    )
    manifest = manifest_dir / "m.parquet"
    pq.write_table(table, manifest)
    assert detect_format(str(manifest)) == "parquet"
    items, rows = split(list_sources(str(manifest)))
    assert [(i.text, i.language) for i in items] == [("粤语", "yue")]
    assert [(r["reason_code"], r["detail"].split(":")[0]) for r in rows] == [
        ("bad_manifest_row", "row 2"),
        ("missing_file", "no audio file at " + str(manifest_dir / "audio/missing.wav")),
        ("empty_transcript", "row 4"),
        ("bad_transcript_encoding", "row 5"),
    ]


def test_parquet_text_not_a_string(manifest_dir: Path):
    manifest = manifest_dir / "n.parquet"
    pq.write_table(pa.table({"path": ["audio/good.wav"], "text": [3]}), manifest)
    assert reasons(split(list_sources(str(manifest)))[1]) == ["bad_manifest_row"]


def test_check_exists_false_trusts_the_manifest(manifest_dir: Path):
    manifest = write(manifest_dir / "m.jsonl", jsonl_line({"path": "audio/missing.wav"}))
    [item] = split(list_sources(str(manifest), check_exists=False))[0]
    assert item.source_uri == str(manifest_dir / "audio" / "missing.wav")


# --- Kaldi -------------------------------------------------------------------------------------


def kaldi_dir(root: Path, *, sorted_files: bool = True) -> Path:
    data = root / "data" / "train"
    write(root / "wavs" / "rec1.wav", AUDIO)
    write(root / "wavs" / "rec3.flac", AUDIO)
    wav_scp = [
        "rec1 ../../wavs/rec1.wav",
        "rec2 sox in.wav -t wav - |",
        f"rec3 {root / 'wavs' / 'rec3.flac'}",
        "rec4 missing.wav",
        "rec4 listed-twice.wav",
    ]
    segments = [
        "rec1-a rec1 0.00 1.50",
        "rec1-b rec1 1.50 -1",
        "rec1-c rec1 2.00 1.00",
        "rec1-d rec1 3.0 4.0",
        "rec2-a rec2 0 1",
        "rec3-a rec3 -0.5 1.0",
        "rec3-b rec3 1.0 2.0",
        "rec9-a rec9 0 1",
        "rec3-z rec3 oops",
    ]
    text = [
        "rec1-a 第一句 话".encode(),
        b"rec1-b second",
        b"rec1-c inverted",
        b"rec1-d caf\xe9",
        b"rec2-a piped",
        b"rec3-b third",
        b"rec5-a nowhere",
    ]
    utt2spk = ["rec1-a spkA", "rec1-b spkB", "rec3-b spkC"]
    if not sorted_files:
        wav_scp.reverse()
        segments.reverse()
        text.reverse()
    write(data / "wav.scp", "\n".join(wav_scp) + "\n")
    write(data / "segments", "\n".join(segments) + "\n")
    write(data / "text", b"\n".join(text) + b"\n")
    write(data / "utt2spk", "\n".join(utt2spk) + "\n")
    return data


def summarize(items: list[SourceItem]) -> dict:
    return {
        i.item_key: [(s.item_key, s.start_s, s.end_s, s.text, s.speaker) for s in i.supervisions]
        for i in items
    }


KALDI_ITEMS = {
    "rec1": [
        ("rec1-a", 0.0, 1.5, "第一句 话", "spkA"),
        ("rec1-b", 1.5, None, "second", "spkB"),
    ],
    "rec3": [("rec3-b", 1.0, 2.0, "third", "spkC")],
}
KALDI_REJECTS = {
    ("bad_manifest_row", "rec3-z"),  # malformed segments line
    ("bad_segment", "rec1-c"),  # end before start
    ("bad_segment", "rec3-a"),  # negative start
    ("bad_transcript_encoding", "rec1-d"),
    ("missing_file", "rec4"),  # wav.scp names a file that is not there
    ("bad_manifest_row", "rec4"),  # ... and names rec4 twice
    ("missing_file", "rec5-a"),  # text of an utterance no segment has
    ("missing_file", "rec9-a"),  # segment of a recording wav.scp lacks
    ("unsupported_source", "rec2"),  # pipe command
}


@pytest.mark.parametrize("sorted_files", [True, False], ids=["sorted", "unsorted"])
def test_kaldi_with_segments(tmp_path: Path, sorted_files: bool):
    data = kaldi_dir(tmp_path, sorted_files=sorted_files)
    assert detect_format(str(data)) == "kaldi"
    items, rows = split(list_sources(str(data), corpus="k"))
    assert summarize(items) == KALDI_ITEMS
    assert {(r["reason_code"], r["item_key"]) for r in rows} == KALDI_REJECTS
    assert len(rows) == len(KALDI_REJECTS)
    rec1 = next(i for i in items if i.item_key == "rec1")
    assert rec1.source_uri == str(tmp_path / "wavs" / "rec1.wav")  # relative to the data dir
    assert rec1.text is None and rec1.corpus == "k"


def test_kaldi_without_segments(tmp_path: Path):
    data = tmp_path / "kd"
    for name in ("u1", "u2", "u3", "u4"):
        write(data / "audio" / f"{name}.wav", AUDIO)
    write(data / "wav.scp", "".join(f"{u} audio/{u}.wav\n" for u in ("u1", "u2", "u3", "u4")))
    write(data / "text", b"u1 \xe4\xbd\xa0\xe5\xa5\xbd\nu2\nu3 caf\xe9\n")
    write(data / "utt2spk", "u1 s1\nu2 s2\nu3 s3\nu4 s4\n")
    write(data / "utt2lang", "u1 zh\n")
    items, rows = split(list_sources(str(data)))
    assert [(i.item_key, i.text, i.speaker, i.language, i.corpus) for i in items] == [
        ("u1", "你好", "s1", "zh", "kd"),
        ("u4", None, "s4", None, "kd"),
    ]
    assert [(s.start_s, s.end_s, s.text) for s in items[0].supervisions] == [(0.0, None, "你好")]
    assert items[1].supervisions == []
    assert {(r["reason_code"], r["item_key"]) for r in rows} == {
        ("empty_transcript", "u2"),
        ("bad_transcript_encoding", "u3"),
    }


# --- Lhotse ------------------------------------------------------------------------------------


def lhotse_recording(rec_id: str, source: str, kind: str = "file", duration: float = 4.0):
    from lhotse import AudioSource, Recording

    return Recording(
        id=rec_id,
        sources=[AudioSource(type=kind, channels=[0], source=source)],
        sampling_rate=16000,
        num_samples=int(duration * 16000),
        duration=duration,
    )


def lhotse_sup(sup_id: str, rec_id: str, start: float, duration: float, text: str | None, **kw):
    from lhotse import SupervisionSegment

    return SupervisionSegment(
        id=sup_id, recording_id=rec_id, start=start, duration=duration, text=text, **kw
    )


@pytest.mark.parametrize("shuffled", [False, True], ids=["sorted", "unsorted"])
def test_lhotse_recordings_and_supervisions(tmp_path: Path, shuffled: bool):
    from lhotse import RecordingSet, SupervisionSet

    root = tmp_path / "lh"
    write(root / "audio" / "r1.wav", AUDIO)
    write(root / "audio" / "r2.wav", AUDIO)
    recs = [
        lhotse_recording("r1", "audio/r1.wav"),
        lhotse_recording("r2", str(root / "audio" / "r2.wav")),
        lhotse_recording("r3", "https://example.com/r3.wav", kind="url"),
        lhotse_recording("r4", "elsewhere/r4.wav"),
        lhotse_recording("r5", "audio/r1.wav").perturb_speed(1.1),
    ]
    sups = [
        lhotse_sup("s1", "r1", 0.5, 1.0, "한국어", speaker="A", language="ko", channel=[0]),
        lhotse_sup("s2", "r1", 2.0, 1.0, "second", speaker="B"),
        lhotse_sup("s3", "r2", 0.0, 4.0, "whole file", speaker="C"),
        lhotse_sup("s4", "r2", 0.0, 1.0, " "),
        lhotse_sup("s9", "r9", 0.0, 1.0, "orphan"),
    ]
    if shuffled:
        recs.reverse()
        sups.reverse()
    RecordingSet.from_recordings(recs).to_file(root / "corpus_recordings_train.jsonl.gz")
    SupervisionSet.from_segments(sups).to_file(root / "corpus_supervisions_train.jsonl.gz")
    assert detect_format(str(root)) == "lhotse"
    items, rows = split(list_sources(str(root)))
    got = {
        i.item_key: (
            i.text,
            [(s.start_s, s.end_s, s.text, s.speaker, s.channel) for s in i.supervisions],
        )
        for i in items
    }
    assert got == {
        "r1": (None, [(0.5, 1.5, "한국어", "A", 0), (2.0, 3.0, "second", "B", 0)]),
        "r2": ("whole file", [(0.0, 4.0, "whole file", "C", 0)]),
    }
    assert {(r["reason_code"], r["item_key"]) for r in rows} == {
        ("empty_transcript", "s4"),
        ("unsupported_source", "r3"),  # http URL
        ("missing_file", "r4"),
        ("unsupported_source", "r5_sp1.1"),  # speed perturbation
        ("missing_file", "r9"),  # supervision of no recording
    }
    # a recordings manifest alone picks up its supervisions manifest by name
    single = split(list_sources(str(root / "corpus_recordings_train.jsonl.gz")))[0]
    assert summarize(single) == summarize(items)


def test_lhotse_cuts_dedupe_and_offsets(tmp_path: Path):
    from lhotse import CutSet, MonoCut

    root = tmp_path / "cuts"
    write(root / "long.flac", AUDIO)
    rec = lhotse_recording("long", "/original/place/long.flac", duration=20.0)
    # supervision times are relative to their cut: s2 sits at 4-6 s of the recording in both
    s1 = lhotse_sup("s1", "long", 1.0, 2.0, "one", speaker="A")
    s2 = lhotse_sup("s2", "long", 4.0, 2.0, "two", speaker="B")
    s2_in_c3 = lhotse_sup("s2", "long", -1.0, 2.0, "two", speaker="B")
    s3 = lhotse_sup("s3", "long", 1.0, 1.0, "three", speaker="A")
    cuts = [
        MonoCut(id="c1", start=0.0, duration=10.0, channel=0, recording=rec, supervisions=[s1, s2]),
        MonoCut(id="c2", start=10.0, duration=10.0, channel=0, recording=rec, supervisions=[s3]),
        MonoCut(
            id="c3", start=5.0, duration=5.0, channel=0, recording=rec, supervisions=[s2_in_c3]
        ),
    ]
    CutSet.from_cuts(cuts).to_file(root / "cuts_train.jsonl.gz")
    [item] = split(list_sources(str(root / "cuts_train.jsonl.gz")))[0]
    assert item.source_uri == str(root / "long.flac")  # found by basename beside the manifest
    assert [(s.item_key, s.start_s, s.end_s, s.speaker) for s in item.supervisions] == [
        ("s1", 1.0, 3.0, "A"),
        ("s2", 4.0, 6.0, "B"),
        ("s3", 11.0, 12.0, "A"),
    ]


def test_lhotse_multi_source_recording_is_one_recording(tmp_path: Path):
    """A recording stored one file per channel (a two-track call) is one item: its files in
    channel order whatever order the manifest lists them, its supervisions on their row of the
    stacked audio, keyed relative to the source root; a missing channel file refuses it whole."""
    from lhotse import AudioSource, Recording, RecordingSet, SupervisionSet

    root = tmp_path / "array"
    write(root / "ch0.wav", AUDIO)
    write(root / "ch1.wav", AUDIO)

    def call(rec_id: str, second: str) -> Recording:
        return Recording(
            id=rec_id,
            sources=[  # listed right channel first: the reader orders them by channel id
                AudioSource(type="file", channels=[3], source=second),
                AudioSource(type="file", channels=[2], source="ch0.wav"),
            ],
            sampling_rate=16000,
            num_samples=160000,
            duration=10.0,
        )

    sups = [
        lhotse_sup("near0", "meeting", 1.0, 1.0, "left", channel=2),
        lhotse_sup("near1", "meeting", 2.0, 1.0, "right", channel=3),
        lhotse_sup("both", "meeting", 3.0, 1.0, "everyone", channel=[2, 3]),
    ]
    recs = [call("meeting", "ch1.wav"), call("torn", "gone.wav")]
    RecordingSet.from_recordings(recs).to_file(root / "recordings.jsonl.gz")
    SupervisionSet.from_segments(sups).to_file(root / "supervisions.jsonl.gz")
    items, rows = split(list_sources(str(root)))
    assert {i.item_key: [(s.item_key, s.channel) for s in i.supervisions] for i in items} == {
        "meeting": [("near0", 0), ("near1", 1), ("both", None)],
    }
    [item] = items
    assert channel_uris(item.source_uri) == [str(root / "ch0.wav"), str(root / "ch1.wav")]
    assert item.key == 'array:channels:["ch0.wav","ch1.wav"]'
    [row] = rows
    assert (row["reason_code"], row["item_key"]) == ("missing_file", "torn")
    assert "gone.wav" in row["detail"] and "ch0.wav" not in row["detail"]


def test_manifest_row_with_a_list_of_paths_is_one_recording(tmp_path: Path):
    """JSONL `path` as a list, and a CSV cell holding a JSON array, name one file per channel."""
    root = tmp_path / "calls"
    for name in ("a.wav", "b.wav"):
        write(root / name, AUDIO)
    write(
        root / "calls.jsonl",
        jsonl_line({"id": "c1", "path": ["a.wav", "b.wav"], "task": "conversation"})
        + jsonl_line({"id": "c2", "path": ["a.wav", 7]})
        + jsonl_line({"id": "c3", "path": ["a.wav"]}),
    )
    write(root / "calls.csv", 'id,path\nc1,"[""a.wav"",""b.wav""]"\n')
    items, rows = split(list_sources(str(root / "calls.jsonl")))
    assert [(i.item_key, channel_uris(i.source_uri)) for i in items] == [
        ("c1", [str(root / "a.wav"), str(root / "b.wav")]),
        ("c3", [str(root / "a.wav")]),  # a one-element list is the plain file
    ]
    assert items[1].source_uri == str(root / "a.wav")
    assert [(r["reason_code"], r["item_key"]) for r in rows] == [("bad_manifest_row", "c2")]
    [from_csv] = split(list_sources(str(root / "calls.csv")))[0]
    assert from_csv.source_uri == items[0].source_uri and from_csv.key == items[0].key


def test_lhotse_bad_lines(tmp_path: Path):
    root = tmp_path / "bad"
    write(root / "a.wav", AUDIO)
    good = lhotse_recording("a", "a.wav").to_dict()
    body = jsonl_line(good) + b"{not json\n" + b'{"sources": 3, "sampling_rate": 1}\n'
    manifest = write(root / "recordings.jsonl", body)
    assert detect_format(str(manifest)) == "lhotse"
    items, rows = split(list_sources(str(manifest)))
    assert [i.item_key for i in items] == ["a"]
    assert reasons(rows) == ["bad_manifest_row", "bad_manifest_row"]
    cut = {"type": "MonoCut", "id": "c", "start": 0, "duration": 1, "channel": 0, "recording": good}
    sup = {"id": "s", "recording_id": "a", "start": 0, "duration": 1}
    cuts = write(root / "cuts.jsonl", jsonl_line(cut) + jsonl_line(sup) + b"\xff\n")
    items, rows = split(list_sources(str(cuts)))
    assert [i.item_key for i in items] == ["a"]
    assert reasons(rows) == ["bad_manifest_row", "bad_transcript_encoding"]


def test_keyed_lookup_streams_sorted_files():
    records = [("a", 1), ("b", 2), ("b", 3), (None, "bad"), ("c", 4), ("e", 5)]
    pulled: list[str | None] = []

    def stream():
        for key, value in records:
            pulled.append(key)
            yield key, value

    lookup = KeyedLookup(stream, streaming=True)
    assert lookup.get("b") == [2, 3]
    assert pulled == ["a", "b", "b", None, "c"]  # read only up to the first key past "b"
    assert lookup.take_orphans() == [("a", 1), (None, "bad")]
    assert lookup.get("d") == [] and lookup.take_orphans() == [("c", 4)]
    assert lookup.finish() == [("e", 5)]
    indexed = KeyedLookup(lambda: iter(records), streaming=False)
    assert indexed.get("c") == [4] and indexed.get("b") == [2, 3]
    assert sorted(indexed.finish(), key=str) == sorted([(None, "bad"), ("a", 1), ("e", 5)], key=str)


# --- detection ---------------------------------------------------------------------------------


def test_detect_format_errors(tmp_path: Path):
    with pytest.raises(ValueError, match="does not exist"):
        detect_format(str(tmp_path / "nope"))
    odd = write(tmp_path / "x.yaml", "a: 1")
    with pytest.raises(ValueError, match=r"\.jsonl.*\.parquet"):
        detect_format(str(odd))
    with pytest.raises(ValueError, match="choose one of"):
        list_sources(str(tmp_path), "tar")
    with pytest.raises(ValueError, match="no wav.scp"):
        list(list_sources(str(tmp_path), "kaldi"))
    assert FORMATS[0] == "auto"
    assert FORMATS[1:] == tuple(LAYOUTS)


def test_a_registered_toy_layout_is_one_reader_and_one_line(tmp_path: Path, monkeypatch):
    """A layout is a `read(src, ctx, **fs_options)` generator plus one `LAYOUTS` entry."""
    audio = write(tmp_path / "corpus" / "a.wav", b"RIFF")
    listing = write(tmp_path / "corpus" / "list.toy", "a.wav\nmissing.wav\n")

    def read_toy(src: str, ctx: ReadContext, **fs_options) -> Iterator[Pending]:
        loc = Location.from_uri(src, **fs_options)
        for name in loc.read_bytes().decode().split():
            item = SourceItem(source_uri="", corpus=ctx.corpus_for(), task=ctx.task_for())
            yield Pending(item, [loc.parent.child(name)])

    monkeypatch.setitem(LAYOUTS, "toy", Layout(read_toy, manifest=True))
    items, rows = split(list_sources(str(listing), "toy", task="asr"))
    assert [i.source_uri for i in items] == [str(audio)]
    assert items[0].corpus == "corpus" and items[0].source_key == "corpus:a.wav"
    assert reasons(rows) == ["missing_file"]


def test_open_filesystem_local(tmp_path: Path):
    fs, path = open_filesystem(str(tmp_path / "a" / ".." / "b"))
    assert fs.type_name == "local" and path == str(tmp_path / "b")
    assert Location.from_uri(f"file://{tmp_path}").path == str(tmp_path)


# --- S3 (moto's server, in-process) ------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_s3_dir_and_jsonl(s3_endpoint: str):
    options = {"endpoint_override": s3_endpoint}
    fs, _ = open_filesystem("s3://corpus", allow_bucket_creation=True, **options)
    fs.create_dir("corpus")
    files = {
        "corpus/set/a.wav": AUDIO,
        "corpus/set/a.txt": "天气很好".encode(),
        "corpus/set/sub/b.flac": AUDIO,
        "corpus/set/sub/b.lab": b"\xff\xfe",
        "corpus/set/sub/c.flac": AUDIO,
        "corpus/m/train.jsonl": b"".join(
            [
                jsonl_line({"path": "../set/a.wav", "text": "天气很好"}),
                jsonl_line({"path": "s3://corpus/set/sub/c.flac"}),
                jsonl_line({"path": "gone.wav"}),
            ]
        ),
    }
    for key, data in files.items():
        with fs.open_output_stream(key) as out:
            out.write(data)

    assert detect_format("s3://corpus/set", **options) == "dir"
    items, rows = split(list_sources("s3://corpus/set", **options))
    assert [(i.source_uri, i.text, i.corpus) for i in items] == [
        ("s3://corpus/set/a.wav", "天气很好", "set"),
        ("s3://corpus/set/sub/c.flac", None, "set"),
    ]
    assert [(r["reason_code"], r["source_uri"]) for r in rows] == [
        ("bad_transcript_encoding", "s3://corpus/set/sub/b.flac")
    ]
    globbed = split(list_sources("s3://corpus/set/**/*.flac", **options))[0]
    assert [i.source_uri for i in globbed] == ["s3://corpus/set/sub/c.flac"]

    assert detect_format("s3://corpus/m/train.jsonl", **options) == "jsonl"
    items, rows = split(list_sources("s3://corpus/m/train.jsonl", **options))
    assert [(i.source_uri, i.text, i.corpus) for i in items] == [
        ("s3://corpus/set/a.wav", "天气很好", "m"),
        ("s3://corpus/set/sub/c.flac", None, "m"),
    ]
    assert [(r["reason_code"], r["source_uri"]) for r in rows] == [
        ("missing_file", "s3://corpus/m/gone.wav")
    ]


def test_s3_endpoint_from_environment(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    fs, _ = open_filesystem("s3://envbucket", allow_bucket_creation=True)
    fs.create_dir("envbucket")
    with fs.open_output_stream("envbucket/x/one.wav") as out:
        out.write(AUDIO)
    items, rows = split(list_sources("s3://envbucket/x"))
    assert [i.source_uri for i in items] == ["s3://envbucket/x/one.wav"] and rows == []


# -- entries a listing cannot give: nothing skipped silently ------------------------------------


def _hostile_dir(root: Path) -> Path:
    """One of each entry a directory walk used to skip without a word, beside one good file."""
    root.mkdir()
    (root / "ok.wav").write_bytes(AUDIO)
    (root / "ok.txt").write_text("a transcript")
    (root / "x.wav").mkdir()  # a directory with an audio name, holding audio of its own
    (root / "x.wav" / "inner.wav").write_bytes(AUDIO)
    os.symlink("b.wav", root / "a.wav")
    os.symlink("a.wav", root / "b.wav")
    os.symlink("nowhere.wav", root / "dangling.wav")
    os.mkfifo(root / "pipe.wav")
    (root / os.fsdecode(b"bad\xff.wav")).write_bytes(AUDIO)
    (root / "ghost.txt").write_text("a transcript whose audio is missing")
    (root / "notes.md").write_text("not audio: not an entry")
    return root


def test_every_entry_a_walk_cannot_ingest_is_refused_with_its_reason(tmp_path: Path) -> None:
    root = _hostile_dir(tmp_path / "corpus")
    items, rows = split(list_sources(str(root)))
    assert sorted(i.item_key for i in items) == ["ok", "x.wav/inner"]
    refused = {r["item_key"]: (r["reason_code"], r["source_uri"]) for r in rows}
    assert refused == {
        "a": ("symlink_loop", f"{root}/a.wav"),
        "b": ("symlink_loop", f"{root}/b.wav"),
        "dangling": ("missing_file", f"{root}/dangling.wav"),
        "pipe": ("not_a_file", f"{root}/pipe.wav"),
        "x": ("not_a_file", f"{root}/x.wav"),
        "bad\\xff": ("bad_filename", f"{root}/bad\\xff.wav"),
        "ghost": ("missing_file", f"{root}/ghost.txt"),
    }
    assert all(r["detail"] and r["source_key"] for r in rows)
    QUARANTINE.from_rows(rows)  # valid rows of the closed reason enum
    # a glob picks among audio names: the refusals it matches, never the transcript orphan
    _, globbed = split(list_sources(f"{root}/*.wav"))
    assert sorted(r["item_key"] for r in globbed) == ["a", "b", "bad\\xff", "dangling", "pipe", "x"]


def test_a_manifest_row_whose_audio_is_missing_is_refused(tmp_path: Path) -> None:
    (tmp_path / "here.wav").write_bytes(AUDIO)
    manifest = tmp_path / "m.jsonl"
    rows = [{"audio": "here.wav"}, {"audio": "gone.wav", "text": "lost"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items, refused = split(list_sources(str(manifest)))
    assert [i.source_uri for i in items] == [str(tmp_path / "here.wav")]
    assert [(r["reason_code"], r["source_uri"]) for r in refused] == [
        ("missing_file", str(tmp_path / "gone.wav"))
    ]


_LIST_AND_DECODE = """
import json, sys
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.decode_stage import decode_or_quarantine
from pipelines.ingest.items import SourceItem
from pipelines.ingest.sources import list_sources
out = {}
for entry in list_sources(sys.argv[1]):
    if isinstance(entry, SourceItem):
        decoded, rejects = decode_or_quarantine(entry, IngestConfig())
        out[entry.item_key] = rejects[0]["reason_code"] if decoded is None else "ok"
    else:
        out[entry["item_key"]] = entry["reason_code"]
print(json.dumps(out))
"""


def _without_root_powers() -> list[str]:
    """A command prefix under which file permissions apply: none for a normal user; for root,
    `setpriv` dropping the two capabilities that let root read anything."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be made to apply")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def test_unreadable_files_and_folders_are_read_errors(tmp_path: Path) -> None:
    import soundfile as sf

    root = tmp_path / "corpus"
    root.mkdir()
    tone = (np.sin(np.arange(16000) / 5) * 0.3).astype(np.float32)
    for name in ("fine", "locked", "talk"):
        sf.write(root / f"{name}.wav", tone, 16000)
    (root / "talk.txt").write_text("its transcript cannot be read")
    (root / "sealed").mkdir()
    sf.write(root / "sealed" / "inner.wav", tone, 16000)
    for path in (root / "locked.wav", root / "talk.txt", root / "sealed"):
        path.chmod(0)
    try:
        proc = subprocess.run(
            [*_without_root_powers(), sys.executable, "-c", _LIST_AND_DECODE, str(root)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=120,
        )
    finally:
        (root / "sealed").chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "fine": "ok",
        "locked": "read_error",
        "talk": "read_error",
        "sealed": "read_error",
    }
