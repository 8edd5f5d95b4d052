"""Statistics of the tables checked against values worked out by hand (tests/stats/tables.py
holds the rows and says what they contain)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.stats.compute import StatsConfig, compute_stats
from pipelines.stats.run import run_stats
from pipelines.stats.sources import discover
from schemas import QUARANTINE, RECORDINGS
from schemas.quarantine import quarantine_row
from tests.stats.tables import _recording, write_build


@pytest.fixture(scope="module")
def stats(tmp_path_factory):
    root = write_build(tmp_path_factory.mktemp("hand") / "build")
    return compute_stats(str(root), StatsConfig(out=str(root / "stats")), progress=False)


def test_hours_and_counts_by_corpus_language_task(stats):
    rec = stats["recordings"]
    assert rec["count"] == 4
    assert rec["hours"] == pytest.approx((3600 + 1800 + 1800 + 60) / 3600, abs=1e-6)
    assert rec["by"]["corpus"] == [
        {"key": "a", "count": 3, "hours": pytest.approx(2.0)},
        {"key": "b", "count": 1, "hours": pytest.approx(60 / 3600, abs=1e-6)},
    ]
    # en: r1 3600 s + c1 60 s; de: r2 + r3, 3600 s in all
    assert [(r["key"], r["count"]) for r in rec["by"]["language"]] == [("en", 2), ("de", 2)]
    assert rec["by"]["language"][0]["hours"] == pytest.approx(3660 / 3600, abs=1e-6)
    assert {r["key"]: r["count"] for r in rec["by"]["task"]} == {"asr": 3, "conversation": 1}


def test_duration_histogram_counts_hours_and_moments(stats):
    dur = stats["recordings"]["duration_s"]
    edges = dur["edges"]
    bin_of = {v: max(i for i, e in enumerate(edges[:-1]) if e <= v) for v in (60, 1800, 3600)}
    expected = [0] * (len(edges) - 1)
    for value, n in ((60, 1), (1800, 2), (3600, 1)):
        expected[bin_of[value]] = n
    assert dur["counts"] == expected
    assert dur["hours"][bin_of[1800]] == pytest.approx(1.0)
    assert dur["hours"][bin_of[3600]] == pytest.approx(1.0)
    assert (dur["n"], dur["min"], dur["max"]) == (4, 60.0, 3600.0)
    assert dur["mean"] == pytest.approx(7260 / 4)
    assert dur["underflow"] == dur["overflow"] == 0
    # per corpus: a holds the three long ones, b the one-minute call
    assert sum(dur["by"]["corpus"]["a"]["counts"]) == 3
    assert dur["by"]["corpus"]["b"]["counts"][bin_of[60]] == 1


def test_level_clipping_snr_distributions(stats):
    rec = stats["recordings"]
    rms = rec["rms_dbfs"]
    assert rms["mean"] == pytest.approx((-30 - 20 - 20 - 20) / 4)
    assert rms["counts"][rms["edges"].index(-30.0)] == 1
    assert rms["counts"][rms["edges"].index(-20.0)] == 3
    snr = rec["snr_db"]
    assert (snr["n"], snr["nulls"]) == (3, 1)  # r1 has no SNR (no pause to measure noise in)
    assert snr["mean"] == pytest.approx((10 + 20 + 35) / 3)
    clip = rec["clipping_ratio"]
    assert clip["max"] == pytest.approx(0.002)
    assert clip["counts"][0] == 3  # no clipping
    assert clip["counts"][clip["edges"].index(1e-3)] == 1
    assert rec["speech_ratio"]["mean"] == pytest.approx(0.5)


def test_speakers_and_exact_duplicates(stats):
    rec = stats["recordings"]
    # corpus a: alice, bob (recordings) + carol (a segment of r1); b: no labels, 2 diarized voices
    assert rec["speakers"] == [
        {"corpus": "a", "speakers": 3, "diarized_speakers": 0},
        {"corpus": "b", "speakers": 0, "diarized_speakers": 2},
    ]
    dup = rec["duplicates"]
    assert (dup["count"], dup["hours"]) == (1, pytest.approx(0.5))
    assert dup["by_corpus"] == [{"key": "a", "count": 1, "hours": pytest.approx(0.5)}]


def test_segments_by_corpus_through_the_recordings(stats):
    seg = stats["segments"]
    assert seg["count"] == 4
    assert seg["hours"] == pytest.approx(60.25 / 3600, abs=1e-6)
    by_corpus = {r["key"]: (r["count"], r["hours"] * 3600) for r in seg["by"]["corpus"]}
    # hours keep 6 decimals (3.6 ms)
    assert by_corpus["a"] == (3, pytest.approx(30.25, abs=0.005))
    assert by_corpus["b"] == (1, pytest.approx(30.0, abs=0.005))
    dur = seg["duration_s"]
    assert dur["counts"][0] == 1  # 0.25 s, in [0, 0.5)
    assert dur["counts"][dur["edges"].index(10)] == 1
    assert dur["counts"][dur["edges"].index(30)] == 1


def test_quarantine_counts_by_reason_with_example_uris(stats):
    q = stats["quarantine"]
    assert q["count"] == 7
    assert [(r["step"], r["reason_code"], r["count"]) for r in q["by_reason"]] == [
        ("ingest", "undecodable", 4),
        ("diarize", "no_speech", 1),
        ("ingest", "empty_audio", 1),
        ("synthesize", "bad_dialogue", 1),
    ]
    first = q["by_reason"][0]
    assert first["examples"] == ["/data/x/a.wav", "/data/x/m.wav", "/data/x/q.wav"]
    assert first["example_detail"] == "a"
    assert q["by_reason"][3]["examples"] == ["/data/chats.jsonl#line 7"]


def test_conversation_gaps_overlaps_and_rates(stats):
    c = stats["conversations"]
    assert (c["recordings"], c["turns"], c["speaker_changes"]) == (1, 5, 4)
    # floor-transfer offsets: +0.5 (gap), -0.5, -5.0 (the back-channel inside A's turn), +5.0
    fto = c["floor_transfer_s"]
    assert fto["n"] == 4 and fto["mean"] == pytest.approx(0.0)
    assert (fto["underflow"], fto["overflow"]) == (1, 1)  # -5 and +5 lie off the +-3 s axis
    assert c["gap_s"]["n"] == 2 and c["gap_s"]["mean"] == pytest.approx(2.75)
    assert c["overlap_s"]["n"] == 2 and c["overlap_s"]["mean"] == pytest.approx(0.75)
    assert c["overlap_s"]["max"] == pytest.approx(1.0)
    tpm = c["turns_per_minute"]  # 5 turns in a 60 s recording
    assert tpm["mean"] == pytest.approx(5.0)
    assert tpm["counts"][tpm["edges"].index(4.0)] == 1


def test_duplex_event_rates_and_frame_balance(stats):
    ev = stats["conversations"]["events"]
    assert (ev["samples"], ev["hours"]) == (2, pytest.approx(120 / 3600, abs=1e-6))
    assert ev["counts"] == {
        "assistant_turn_taking": 1,
        "user_backchannel": 1,
        "user_turn_taking": 2,
    }
    assert ev["per_hour"]["user_turn_taking"] == pytest.approx(60.0)
    assert ev["per_hour"]["assistant_turn_taking"] == pytest.approx(30.0)
    assert ev["backchannel_per_minute"] == pytest.approx(0.5)
    assert ev["backchannel_share"] == pytest.approx(1 / 3, abs=1e-4)
    assert ev["barge_in_share"] == pytest.approx(0.5)
    assert ev["user_gap_s"]["n"] == 1 and ev["user_gap_s"]["mean"] == pytest.approx(0.6)
    frames = stats["conversations"]["frame_labels"]
    assert frames["frames"] == 20
    assert frames["counts"] == {"listen": 14, "speak_now": 1, "keep_speaking": 4, "stop_now": 1}
    assert frames["share"]["listen"] == pytest.approx(0.7)


def test_absent_tables_give_null_sections(tmp_path):
    from tests.stats.tables import RECORDING_ROWS

    root = write_build(tmp_path / "only-recordings", {"recordings": RECORDING_ROWS})
    stats = compute_stats(str(root), StatsConfig(out=str(tmp_path / "out")), progress=False)
    assert stats["recordings"]["count"] == 4
    assert stats["segments"] is None and stats["conversations"] is None
    assert stats["samples"] is None and stats["shards"] == {}
    assert stats["quarantine"] == {"count": 0, "by_reason": []}


def test_nothing_to_summarise_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover(str(tmp_path / "missing"))
    (tmp_path / "empty" / "recordings").mkdir(parents=True)
    with pytest.raises(ValueError, match="nothing to summarise"):
        discover(str(tmp_path / "empty"))


def test_tables_are_found_anywhere_under_the_input(tmp_path):
    """Two builds under one folder: their tables are summarised together."""
    from tests.stats.tables import RECORDING_ROWS

    write_build(tmp_path / "x" / "one", {"recordings": RECORDING_ROWS[:2]})
    write_build(tmp_path / "x" / "two", {"recordings": RECORDING_ROWS[2:]})
    stats = compute_stats(str(tmp_path / "x"), StatsConfig(out=str(tmp_path / "o")), progress=False)
    assert stats["inputs"]["tables"]["recordings"]["files"] == 2
    assert stats["recordings"]["count"] == 4


def test_a_corrupt_table_file_costs_only_its_section(tmp_path):
    root = write_build(tmp_path / "b")
    (root / "segments" / "part-0001.parquet").write_bytes(b"PAR1 not really parquet")
    stats = compute_stats(str(root), StatsConfig(out=str(tmp_path / "o")), progress=False)
    assert stats["segments"] is None
    assert [e["section"] for e in stats["errors"]] == ["segments"]
    assert stats["recordings"]["count"] == 4 and stats["conversations"]["turns"] == 5


def test_a_rerun_gives_byte_identical_stats_json(tmp_path):
    """Analysts diff stats.json: rerunning `minmo stats` on one build must give the same bytes,
    with DuckDB on several threads (float sums and t-digests would follow their finishing
    order) and with ties (equal hours, one quarantined source with several details)."""
    rng = np.random.default_rng(0)
    write_build(tmp_path / "build")
    for part in range(4):
        extra = [
            _recording(
                f"x{part}-{i}",
                f"c{i % 3}",
                float(rng.uniform(0.1, 30.0)),
                snr_db=float(rng.normal(20, 5)),
                speech_ratio=float(rng.uniform(0, 1)),
            )
            for i in range(20_000)
        ]
        extra += [_recording(f"tie{part}-{c}", f"tie{c}", 10.0) for c in "ab"]  # equal hours
        pq.write_table(
            RECORDINGS.from_rows(extra), tmp_path / "build" / "recordings" / f"extra{part}.parquet"
        )
    stage = [
        quarantine_row("/d/same.wav", "undecodable", f"detail {i}", step="ingest") for i in range(9)
    ]
    pq.write_table(QUARANTINE.from_rows(stage), tmp_path / "build" / "quarantine" / "extra.parquet")
    config = StatsConfig(threads=4)
    outputs = []
    for _ in range(3):
        run_stats([str(tmp_path / "build")], config, progress=False)
        outputs.append((tmp_path / "build" / "stats" / "stats.json").read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    stats = json.loads(outputs[0])
    assert "elapsed_s" not in stats
    (undecodable,) = [
        r for r in stats["quarantine"]["by_reason"] if r["reason_code"] == "undecodable"
    ]
    assert undecodable["example_detail"] == "detail 0"  # the tie is broken by the detail


def test_a_distribution_sum_and_mean_do_not_depend_on_row_order():
    """A resumed build may hold the same rows in other part files, in another order: a float
    sum then rounds the other way in its last kept decimal (the chaos bench saw 80.756062 and
    80.756063 for one build). The sum and mean are exact, so every order gives the same."""
    import random

    import duckdb

    from pipelines.stats.dist import SHARD_HOURS, distribution

    # Durations whose float sum, in some orders, moves the mean's 6th decimal (found by search).
    values = [27.423858, 18.839287, 20.525778, 7.853055, 24.076853, 4.749591, 25.142748, 23.202618]
    con = duckdb.connect()
    figures = set()
    rng = random.Random(0)
    for _ in range(24):
        rng.shuffle(values)
        con.execute("CREATE OR REPLACE TABLE t (v DOUBLE)")
        con.executemany("INSERT INTO t VALUES (?)", [[v] for v in values])
        d = distribution(con, "t", "v", SHARD_HOURS)
        figures.add((d["sum"], d["mean"]))
    assert figures == {(151.813788, 18.976723)}, figures
