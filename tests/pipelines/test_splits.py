"""Held-out splits: the split of a sample is a fixed hash of its speaker (or recording), so no
speaker is in two splits and adding data never moves a sample; a split stage writes
`shards/<stage>/{train,valid,test}/`, each verified and indexed on its own; without splits the
stage directory is laid out as before."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest
import webdataset as wds

from minmo.config import ConfigError
from minmo.testing.tiny_models import build_tiny_checkpoint
from pipelines.shards.plan import (
    SPEC_SCHEMA,
    SpecParams,
    _spec_rows,
    assign_shards,
    layout,
    summarize,
    summary_rows,
)
from pipelines.shards.splits import SplitConfig, split_fraction, split_key, split_of
from pipelines.shards.step import ShardsConfig, filtered_by_task, run_shards
from pipelines.verify import verify_shards
from schemas.shards import SPLITS, index_path, split_dir

# ---- the hash (no Ray) -----------------------------------------------------------------------


def test_fractions_are_respected_on_many_keys() -> None:
    config = SplitConfig(valid=0.05, test=0.1)
    counts = Counter(split_of({"speaker": f"c:s{i}"}, config) for i in range(40_000))
    assert abs(counts["test"] / 40_000 - 0.10) < 0.01
    assert abs(counts["valid"] / 40_000 - 0.05) < 0.01
    assert abs(counts["train"] / 40_000 - 0.85) < 0.01
    points = [split_fraction(str(i)) for i in range(10_000)]
    assert min(points) >= 0.0 and max(points) < 1.0


def test_split_is_the_key_alone() -> None:
    config = SplitConfig(valid=0.3, test=0.3)
    # Same speaker, different recordings, samples and other meta: one split.
    splits = {
        split_of({"speaker": "vctk:p225", "recording_id": f"r{i}", "task": t}, config, f"k{i}")
        for i in range(50)
        for t in ("asr", "emotion")
    }
    assert len(splits) == 1
    # No speaker: the recording decides, then source_key, then the sample's own key.
    assert split_key({"recording_id": "r1", "source_key": "a.wav"}, "speaker") == "recording:r1"
    assert split_key({"source_key": "a.wav"}, "speaker") == "recording:a.wav"
    assert split_key({}, "speaker", "k9") == "sample:k9"
    # By recording: a labelled speaker is not the key.
    assert split_key({"speaker": "c:s", "recording_id": "r1"}, "recording") == "recording:r1"
    # Growing valid moves keys from train into valid only; test keeps its keys.
    small, big = SplitConfig(valid=0.1, test=0.1), SplitConfig(valid=0.2, test=0.1)
    for i in range(5000):
        a, b = split_of({"speaker": str(i)}, small), split_of({"speaker": str(i)}, big)
        assert a == b or (a, b) == ("train", "valid")


def test_no_fraction_is_unsplit_and_bad_configs_are_refused() -> None:
    assert split_of({"speaker": "x"}, SplitConfig()) == ""
    assert split_dir("b/shards/stage1", "") == "b/shards/stage1"
    assert split_dir("b/shards/stage1", "valid") == "b/shards/stage1/valid"
    for bad in ({"valid": -0.1}, {"test": 1.0}, {"valid": 0.6, "test": 0.5}, {"by": "corpus"}):
        with pytest.raises(ConfigError):
            SplitConfig(**bad)
    with pytest.raises(ConfigError, match="splits.by"):
        ShardsConfig(splits={"valid": 0.1, "by": "session"})


def _summary_rows(rows: list[tuple[str, str, int, str, int]]) -> list[dict[str, Any]]:
    keys = ("kind", "task", "bucket", "split", "n_sum")
    return [
        {**dict(zip(keys, r, strict=True)), "est_bytes_sum": 10, "seconds_sum": 3.0} for r in rows
    ]


def test_layout_unsplit_keys_are_buckets_and_split_shards_never_share_a_number() -> None:
    unsplit = summarize(_summary_rows([("spec", "asr", 0, "", 5), ("spec", "asr", 1, "", 3)]))
    assert layout(unsplit, 4, 10**9) == {"0": [0, 2], "1": [2, 1]}  # the record as before
    split = summarize(
        _summary_rows(
            [
                ("spec", "asr", 0, "valid", 2),
                ("spec", "asr", 0, "train", 9),
                ("spec", "asr", 1, "train", 1),
                ("spec", "asr", 0, "test", 1),
                ("filter", "asr: min_snr_db", 0, "", 4),
            ]
        )
    )
    assert split.split_kept == Counter({"train": 10, "valid": 2, "test": 1})
    assert split.filtered == Counter({"asr: min_snr_db": 4})
    assert split.filtered_s == Counter({"asr: min_snr_db": 3.0})
    plan = layout(split, 4, 10**9)
    assert plan == {"train/0": [0, 3], "train/1": [3, 1], "valid/0": [4, 1], "test/0": [5, 1]}
    specs = pa.Table.from_pylist(
        [
            {
                "kind": "spec",
                "task": "asr",
                "n": 1,
                "key": f"k{i}",
                "bucket": 0,
                "slot": i,
                "est_bytes": 1,
                "order": 0,
                "spec": "{}",
                "split": s,
                "seconds": 1.0,
            }
            for i, s in enumerate(["train", "valid", "test", "train"])
        ],
        schema=SPEC_SCHEMA,
    )
    shards = assign_shards(specs, plan).column("shard").to_pylist()
    assert shards == [0, 4, 5, 0 + 3 % 3]
    assert filtered_by_task(split.filtered, split.filtered_s) == {
        "asr": {"min_snr_db": {"samples": 4, "hours": round(3 / 3600, 6)}}
    }


# ---- a build, split by speaker, read back (Ray) ------------------------------------------------

SPEAKERS = {"spk1": [1, 2, 3, 4], "spk2": [1, 2, 3, 4]}
MORE = {"spk1": [5], "spk2": [5]}


def _manifest(path: Path, shared: Path, clips: dict[str, list[int]], extra: list[str]) -> Path:
    rows = [
        {
            "path": str(shared / f"asr_speechbrain_en/{spk}_snt{i}.wav"),
            "speaker": spk,
            "text": f"sentence {i} read by {spk}",
            "language": "en",
        }
        for spk, numbers in clips.items()
        for i in numbers
    ]
    rows += [
        {"path": str(shared / name), "text": "a recording with no speaker label", "language": "en"}
        for name in extra
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read_split(stage: Path, split: str) -> list[dict[str, Any]]:
    urls = sorted(str(p) for p in (stage / split).glob("*.tar"))
    return (
        [
            {**json.loads(s["json"]), "__url__": s["__url__"]}
            for s in wds.WebDataset(urls, shardshuffle=False)
        ]
        if urls
        else []
    )


@pytest.fixture(scope="module")
def split_build(ray_local, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from pipelines.ingest.config import IngestConfig
    from pipelines.ingest.run import run_ingest

    root = tmp_path_factory.mktemp("splits")
    build = str(root / "build")
    extra = ["asr_lhotse_libri_lj/LJ002-0020.wav", "asr_speechbrain_en/example1.wav"]
    manifest = _manifest(root / "a.jsonl", shared_data, SPEAKERS, extra)
    run_ingest(str(manifest), build, IngestConfig(corpus="sb"), progress=False)
    tokenizer = build_tiny_checkpoint(root / "s3tiny.pt")
    config = ShardsConfig(
        stages=["stage1"],
        speech_tokenizer=str(tokenizer),
        max_samples=4,
        splits={"valid": 0.34, "test": 0.33, "by": "speaker"},
    )
    summary = run_shards(build, config, progress=False)
    return {"root": root, "build": build, "config": config, "summary": summary}


def _by_split(stage: Path) -> dict[str, list[dict[str, Any]]]:
    return {s: _read_split(stage, s) for s in SPLITS}


def test_split_dirs_each_hold_their_shards_and_index(split_build: dict) -> None:
    stage = Path(split_build["build"]) / "shards/stage1"
    assert not list(stage.glob("*.tar"))  # a split stage holds only its split directories
    assert not (stage / "_index").exists()
    samples = _by_split(stage)
    assert sum(len(v) for v in samples.values()) > 0
    result = split_build["summary"].stages[0]
    for split in SPLITS:
        index = json.loads(Path(index_path(str(stage / split))).read_text())
        assert index["split"] == split and index["stage"] == "stage1"
        assert index["totals"]["samples"] == len(samples[split])
        assert {s["name"] for s in index["shards"]} == {
            p.name for p in (stage / split).glob("*.tar")
        }
        assert all(s["split"] == split for s in index["shards"])
        assert sum(t["samples"] for t in index["tasks"].values()) == len(samples[split])
        assert result["splits"][split]["samples"] == len(samples[split])
        assert index["splits"] == result["splits"]
    assert result["totals"]["samples"] == sum(len(v) for v in samples.values())
    # at least two splits hold data, so that the disjointness below means something
    assert sum(1 for v in samples.values() if v) >= 2
    assert "splits: train" in split_build["summary"].render()
    assert verify_shards(Path(split_build["build"]) / "shards") == {
        f"stage1/{s}": [] for s in SPLITS
    }
    assert verify_shards(stage) == {f"stage1/{s}": [] for s in SPLITS}


def _groups(samples: dict[str, list[dict[str, Any]]], by: str) -> dict[str, set[str]]:
    """split key (speaker, else recording) -> the splits its samples are in."""
    out: dict[str, set[str]] = {}
    for split, rows in samples.items():
        for row in rows:
            out.setdefault(split_key(row["provenance"], by, row["key"]), set()).add(split)
    return out


def test_no_speaker_or_recording_is_in_two_splits(split_build: dict) -> None:
    stage = Path(split_build["build"]) / "shards/stage1"
    samples = _by_split(stage)
    for key, splits in _groups(samples, "speaker").items():
        assert len(splits) == 1, f"{key} is in {sorted(splits)}"
    # A recording is never cut across splits either (its speaker, or itself, decides).
    for key, splits in _groups(samples, "recording").items():
        assert len(splits) == 1, f"{key} is in {sorted(splits)}"
    # Where the builder carries the speaker label, the manifest's speakers are the keys.
    speakers = {row["provenance"].get("speaker") for rows in samples.values() for row in rows}
    if speakers - {None}:
        assert any(s and s.endswith("spk1") for s in speakers)


def test_added_data_never_moves_a_sample_between_splits(
    split_build: dict, shared_data: Path, tmp_path: Path
) -> None:
    from pipelines.ingest.config import IngestConfig
    from pipelines.ingest.run import run_ingest

    copy = tmp_path / "build"
    shutil.copytree(split_build["build"], copy)
    stage = copy / "shards/stage1"
    before = {r["key"]: s for s, rows in _by_split(stage).items() for r in rows}
    tars_before = {p.relative_to(stage): p.read_bytes() for p in stage.glob("*/*.tar")}
    more = _manifest(
        tmp_path / "b.jsonl", shared_data, MORE, ["asr_lhotse_libri_lj/LJ002-0035.wav"]
    )
    run_ingest(str(more), str(copy), IngestConfig(corpus="sb"), progress=False)
    summary = run_shards(str(copy), split_build["config"], progress=False)
    result = summary.stages[0]
    assert result["rebuilt"] is None and result["generations"] == 2
    after_samples = _by_split(stage)
    after = {r["key"]: s for s, rows in after_samples.items() for r in rows}
    assert len(after) > len(before)
    assert {k: after[k] for k in before} == before
    # committed shards are untouched; the new generation's are new files
    assert {p: p_bytes for p, p_bytes in tars_before.items()} == {
        p: (stage / p).read_bytes() for p in tars_before
    }
    for key, splits in _groups(after_samples, "speaker").items():
        assert len(splits) == 1, f"{key} is in {sorted(splits)}"
    # the same speaker's new recordings join the split its old ones are in
    spk = {}
    for split, rows in after_samples.items():
        for row in rows:
            prov = row["provenance"]
            if prov.get("speaker"):
                spk.setdefault(prov["speaker"], set()).add(split)
    assert all(len(s) == 1 for s in spk.values())
    assert verify_shards(copy / "shards") == {f"stage1/{s}": [] for s in SPLITS}
    again = run_shards(str(copy), split_build["config"], progress=False)
    assert again.stages[0]["shards_written_now"] == 0 and again.stages[0]["new_units"] == 0


class _Builder:
    """A StageBuilder double: two speakers' specs and the counters H2's builder keeps
    (`filtered`: "<task>: <reason>" -> samples, `filtered_s` -> seconds)."""

    def __init__(self) -> None:
        self.counts = SimpleNamespace(
            built=Counter({"asr": 6}),
            skipped=Counter({"asr: no transcript": 1}),
            filtered=Counter({"asr: min_snr_db": 2, "emotion: chars_per_second": 1}),
            filtered_s=Counter({"asr: min_snr_db": 7.5, "emotion: chars_per_second": 2.0}),
        )

    def specs(self, stage: str) -> list[dict[str, Any]]:
        return [
            {
                "key": f"k{i}",
                "task": "asr",
                "meta": {"speaker": f"c:s{i % 2}", "recording_id": f"r{i}"},
                "input_audio": {"uri": "a.wav", "start_s": 0.0, "end_s": 2.0},
                "target_speech": None,
                "labels": None,
                "messages": [{"role": "user", "content": "hi"}],
            }
            for i in range(6)
        ]


def test_spec_rows_carry_each_samples_split_and_the_filter_counts() -> None:
    params = SpecParams(
        build_uri="/nowhere",
        storage_options={},
        stage="stage1",
        spec_dir="/nowhere/specs",
        seed=3,
        shuffle=True,
        bucket_edges_s=[],
        weights={"asr": 2.0},
        splits={"valid": 0.4, "test": 0.4},
    )
    rows = _spec_rows(_Builder(), params)  # type: ignore[arg-type]
    specs = [r for r in rows if r["kind"] == "spec"]
    assert len(specs) == 12  # weight 2: each sample and its repeat
    by_speaker: dict[str, set[str]] = {}
    for r in specs:
        by_speaker.setdefault(json.loads(r["spec"])["meta"]["speaker"], set()).add(r["split"])
        assert r["seconds"] == 2.0
    assert all(len(s) == 1 for s in by_speaker.values())  # repeats keep their speaker's split
    expected = {s: split_of({"speaker": s}, SplitConfig(valid=0.4, test=0.4)) for s in by_speaker}
    assert {s: next(iter(v)) for s, v in by_speaker.items()} == expected
    table = pa.Table.from_pylist(rows, schema=SPEC_SCHEMA)
    summary = summarize(summary_rows(table).to_pylist())
    assert summary.filtered == Counter({"asr: min_snr_db": 2, "emotion: chars_per_second": 1})
    assert summary.filtered_s == Counter({"asr: min_snr_db": 7.5, "emotion: chars_per_second": 2.0})
    assert summary.built == Counter({"asr": 6}) and summary.kept == Counter({"asr": 12})
    assert summary.skipped == Counter({"asr: no transcript": 1})
    assert sum(summary.split_kept.values()) == 12
    # unsplit: every spec's split is "" and the layout keys are the buckets alone
    unsplit = _spec_rows(_Builder(), SpecParams(**{**params.__dict__, "splits": {}}))  # type: ignore[arg-type]
    assert {r["split"] for r in unsplit} == {""}
    plain = summarize(summary_rows(pa.Table.from_pylist(unsplit, schema=SPEC_SCHEMA)).to_pylist())
    assert list(layout(plain, 2000, 10**9)) == ["0"]


def test_filter_counts_reach_the_index_and_the_summary(split_build: dict, tmp_path: Path) -> None:
    """A quality filter's removals, per task and reason with their hours, in every split's
    index.json (stage-wide) and the summary; the removed samples are in no shard."""
    copy = tmp_path / "build"
    shutil.copytree(split_build["build"], copy)
    # LJ002-0020 says 33 characters in about 1.5 s (over 20 per second): filtered; the
    # speakers' clips say 23 characters in 2 to 3 s: kept.
    config = ShardsConfig(
        **{**split_build["config"].to_dict(), "filters": {"chars_per_second": [2, 18]}}
    )
    summary = run_shards(str(copy), config, progress=False)
    result = summary.stages[0]
    assert result["rebuilt"]  # a new filter is a new config
    asr = result["filtered"]["asr"]["chars_per_second"]
    assert asr["samples"] >= 1 and asr["hours"] > 0
    stage = copy / "shards/stage1"
    for split in SPLITS:
        index = json.loads(Path(index_path(str(stage / split))).read_text())
        assert index["filtered"] == result["filtered"]
    assert f"filtered: asr: chars_per_second: {asr['samples']} samples" in summary.render()
    kept = [r for rows in _by_split(stage).values() for r in rows if r["task"] == "asr"]
    assert any(r["provenance"].get("source_key", "").endswith("_snt1.wav") for r in kept)
    assert kept and not any(
        r["provenance"].get("source_key", "").endswith("LJ002-0020.wav") for r in kept
    )
    record = json.loads((copy / "_state/shards/stage1/g0000.json").read_text())
    assert record["filtered"]["asr: chars_per_second"] == asr["samples"]
