"""The report and comparison mode: every plot drawn with a caption, nothing loaded from outside,
deltas right, and the page rendered in headless Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from minmo.cli import main
from pipelines.stats.compare import compare_stats
from pipelines.stats.compute import StatsConfig
from pipelines.stats.run import run_stats
from schemas.shards import shard_name
from schemas.stats import StatsSchemaError, validate_stats
from tests.stats.chromium import render_report, require_chromium
from tests.stats.tables import QUARANTINE_ROWS, RECORDING_ROWS, _recording, write_build
from tests.stats.test_stats_shards import write_stage

FIGURE = re.compile(r'<figure class="plot" id="([^"]+)">(.*?)</figure>', re.S)


def _build(root: Path) -> Path:
    write_build(root)
    write_stage(root)
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = _build(tmp_path_factory.mktemp("rep") / "build")
    return run_stats([str(root)], StatsConfig(), progress=False)


def test_report_is_self_contained_with_a_caption_per_plot(report):
    page = Path(report.report_html).read_text()
    figures = FIGURE.findall(page)
    assert len(figures) == report.figures >= 25
    ids = [i for i, _ in figures]
    assert len(ids) == len(set(ids))
    for fig_id, body in figures:
        assert body.count("<svg") == 1, fig_id
        caption = re.search(r"<figcaption>(.*?)</figcaption>", body, re.S)
        assert caption and len(re.sub("<[^>]+>", "", caption.group(1))) > 20, fig_id
        # the y label says what is counted or carries a unit: "(h)", "(s)", "(dBFS)", ...
        axis_text = re.findall(r"<text[^>]*>([^<]+)</text>", body)
        assert any(
            re.search(r"\(\S+\)|count|share|speakers|refused|samples|per hour", t)
            for t in axis_text
        )
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<script" not in page and "<link" not in page
    assert json.loads(Path(report.stats_json).read_text())["recordings"]["count"] == 4


def test_stats_json_keeps_its_schema(report):
    stats = json.loads(Path(report.stats_json).read_text())
    validate_stats(stats)
    broken = {**stats, "recordings": {**stats["recordings"], "count": -1}}
    with pytest.raises(StatsSchemaError, match="recordings/count"):
        validate_stats(broken)
    # an earlier version (v1 listed every shard): say so and how to get a current one
    with pytest.raises(StatsSchemaError, match="version 1, .* rerun `minmo stats`"):
        validate_stats({**stats, "version": 1})


def test_compare_two_builds_gives_deltas(tmp_path):
    a = write_build(tmp_path / "a")
    rows = {
        "recordings": [*RECORDING_ROWS, _recording("n1", "c", 1800.0)],
        "quarantine": [q for q in QUARANTINE_ROWS if q["step"] != "diarize"],
    }
    b = write_build(tmp_path / "b", rows)
    summary = run_stats([str(a), str(b)], StatsConfig(out=str(tmp_path / "cmp")), progress=False)
    deltas = {r["metric"]: r for r in json.loads(Path(summary.compare_json).read_text())["deltas"]}
    assert deltas["recordings.count"] == {
        "metric": "recordings.count",
        "a": 4,
        "b": 5,
        "delta": 1,
        "relative": 0.25,
    }
    assert deltas["recordings.hours"]["delta"] == pytest.approx(0.5)
    assert deltas["recordings.by.corpus[c].hours"]["a"] is None
    assert deltas["recordings.by.corpus[c].hours"]["b"] == pytest.approx(0.5)
    assert deltas["quarantine.count"]["delta"] == -1
    assert deltas["quarantine[diarize:no_speech].count"] == {
        "metric": "quarantine[diarize:no_speech].count",
        "a": 1,
        "b": 0,
        "delta": -1,
        "relative": -1.0,
    }
    page = Path(summary.report_html).read_text()
    assert "delta (B - A)" in page and "+1 (+25.0%)" in page
    # an earlier stats.json stands for a build: compare it against the build itself
    again = run_stats(
        [summary.stats_json, str(b)], StatsConfig(out=str(tmp_path / "cmp2")), progress=False
    )
    assert json.loads(Path(again.compare_json).read_text())["changed"] == 0


def test_compare_of_identical_stats_changes_nothing(report):
    stats = json.loads(Path(report.stats_json).read_text())
    result = compare_stats(stats, stats)
    assert result["changed"] == 0 and len(result["deltas"]) > 20


def test_cli_stats_and_its_errors(tmp_path, capsys):
    root = write_build(tmp_path / "b")
    assert main(["-q", "stats", str(root), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'r' / 'report.html'}" in out
    assert main(["stats", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()
    assert main(["stats", str(root), str(root), str(root)]) == 2


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report, tmp_path):
    require_chromium()
    shot = tmp_path / "report.png"
    result = render_report(Path(report.report_html), shot)
    assert result.problems() == []
    assert len(result.figures) == report.figures
    assert result.external_requests == []
    assert shot.stat().st_size > 50_000


def test_a_stage_of_many_shards_is_drawn_as_a_histogram(report):
    from pipelines.stats.sections import MAX_SHARD_BARS, render_report

    stats = json.loads(Path(report.stats_json).read_text())
    many = [
        {"name": f"stage2-{i:06d}.tar", "samples": 100 + i % 7, "hours": 0.1, "bytes": 10**6}
        for i in range(MAX_SHARD_BARS * 5)
    ]
    stats["shards"]["stage2"]["per_shard"] = many
    page = render_report([("big", stats)], "many shards")
    figures = dict(FIGURE.findall(page))
    body = figures["fig-sh-stage2-samples"]
    assert "stage2-000599" not in body  # no bar (or tick) per shard
    assert len(body) < 150_000


def test_a_stage_past_max_shard_rows_renders_and_compares_with_a_listed_one(report, tmp_path):
    """The same build summarised without a row per shard: its report draws the per-shard
    distributions and lists the worst shards; compared with the listed shape, nothing changed."""
    from pipelines.stats.sections import render_report

    listed = json.loads(Path(report.stats_json).read_text())
    root = Path(listed["inputs"]["root"])
    summary = run_stats(
        [str(root)], StatsConfig(out=str(tmp_path / "s"), max_shard_rows=1), progress=False
    )
    summarised = json.loads(Path(summary.stats_json).read_text())
    assert summarised["shards"]["stage2"]["per_shard"] is None
    page = Path(summary.report_html).read_text()
    figures = dict(FIGURE.findall(page))
    for metric in ("samples", "hours", "bytes"):
        assert "n = 2" in figures[f"fig-sh-stage2-{metric}"]
    assert "fewest samples" in page and shard_name("stage2", 1) in page
    both = render_report([("A", listed), ("B", summarised)], "listed against summarised")
    assert "fig-sh-stage2-bytes" in both and "fig-mix-stage2" in both
    result = compare_stats(listed, summarised)
    shard_rows = [r for r in result["deltas"] if r["metric"].startswith("shards.stage2.")]
    assert len(shard_rows) > 10 and result["changed"] == 0


def test_the_report_shows_what_each_filter_removed_and_the_splits(tmp_path):
    from tests.stats.test_stats_shards import write_split_stage

    root = tmp_path / "build"
    write_build(root)
    write_split_stage(root)
    result = run_stats([str(root)], StatsConfig(), progress=False)
    page = Path(result.report_html).read_text()
    figures = dict(FIGURE.findall(page))
    body = figures["fig-filtered-stage2"]
    assert "tts: min_snr_db" in body and "removed audio (h)" in body
    assert "5 samples, 0.0100 h" in body  # the caption's total
    assert "held-out splits" in page and ">valid<" in page
    validate_stats(json.loads(Path(result.stats_json).read_text()))
