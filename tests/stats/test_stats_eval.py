"""Eval results in `minmo stats`: the build's DIR/eval/**/eval.json and `--eval FILE`s become
stats.json's `eval` section and the report's Evaluation tables, a curve per metric against the
training step when several steps were evaluated, and deltas for two checkpoints or two builds.
Hand-written eval.json files (valid under schemas/eval.py) on a tables-only build: no model."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pipelines.stats.compute import StatsConfig
from pipelines.stats.evals import headline
from pipelines.stats.run import run_stats
from schemas.eval import EVAL_VERSION, validate_eval
from schemas.stats import validate_stats
from tests.stats.tables import QUARANTINE_ROWS, write_build


def _rate(edits: int, units: int) -> dict[str, Any]:
    return {
        "rate": edits / units,
        "substitutions": edits,
        "insertions": 0,
        "deletions": 0,
        "reference_units": units,
    }


def _f1(f1: float) -> dict[str, Any]:
    return {"f1": f1, "precision": f1, "recall": f1, "matched": 1, "predicted": 2, "reference": 2}


def eval_doc(build: Path, stage: str, step: int | None, wer_edits: int) -> dict[str, Any]:
    """An eval.json as `minmo eval` writes it: stage 1b (asr, language_id) or 4 (duplex)."""
    if stage == "4":
        shards, tasks = (
            "stage4",
            {
                "duplex": {
                    "samples": 3,
                    "f1": {"assistant_turn_taking": {"1": _f1(0.0), "5": _f1(0.5)}},
                    "frame_accuracy": 0.25,
                    "frames": 40,
                    "hop_s": 0.12,
                }
            },
        )
    else:
        shards, tasks = (
            "stage1",
            {
                "asr": {"samples": 4, "wer": _rate(wer_edits, 20)},
                "language_id": {
                    "samples": 2,
                    "accuracy": 0.5,
                    "confusion": {"labels": ["en", "zh"], "counts": [[1, 0], [1, 0]]},
                },
            },
        )
    return validate_eval(
        {
            "version": EVAL_VERSION,
            "checkpoint": f"{build}/checkpoints/{stage}/final",
            "stage": stage,
            "step": step,
            "modules": ["input_projector"],
            "shards": f"{build}/shards/{shards}/test",
            "fingerprint": f"{stage}-{step}-{wer_edits}",
            "samples": sum(t["samples"] for t in tasks.values()),
            "wall_s": 1.5,
            "device": "cpu",
            "tasks": tasks,
        }
    )


def _write(path: Path, doc: dict[str, Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return str(path)


def _tables(root: Path) -> Path:
    """The smallest build stats accepts: one table (few plots to draw, so the test is fast)."""
    return write_build(root, {"quarantine": QUARANTINE_ROWS})


def _evaluated_build(root: Path) -> Path:
    _tables(root)
    _write(root / "eval" / "1b" / "eval.json", eval_doc(root, "1b", 12, 10))
    _write(root / "eval" / "4" / "eval.json", eval_doc(root, "4", 12, 0))
    return root


def test_headline_flattens_each_kind() -> None:
    doc = eval_doc(Path("/b"), "1b", 12, 5)
    assert headline(doc["tasks"]["asr"]) == {"wer": 0.25}
    assert headline(doc["tasks"]["language_id"]) == {"accuracy": 0.5}
    duplex = eval_doc(Path("/b"), "4", 12, 0)["tasks"]["duplex"]
    assert headline(duplex) == {
        "frame_accuracy": 0.25,
        "f1.assistant_turn_taking@1": 0.0,
        "f1.assistant_turn_taking@5": 0.5,
    }


def test_a_builds_eval_files_land_in_stats_and_report_and_reruns_are_identical(
    tmp_path: Path,
) -> None:
    build = _evaluated_build(tmp_path / "build")
    first = run_stats([str(build)], StatsConfig(), progress=False)
    stats = validate_stats(json.loads(Path(first.stats_json).read_text()))
    entries = stats["eval"]
    assert [(e["stage"], e["step"], sorted(e["tasks"])) for e in entries] == [
        ("1b", 12, ["asr", "language_id"]),
        ("4", 12, ["duplex"]),
    ]
    assert entries[0]["source"] == str(build / "eval" / "1b" / "eval.json")
    assert entries[0]["tasks"]["asr"] == {"samples": 4, "metrics": {"wer": 0.5}}
    page = Path(first.report_html).read_text()
    assert '<h2 id="eval">Evaluation</h2>' in page
    assert "asr on shards/stage1/test" in page and "duplex on shards/stage4/test" in page
    assert "wer (lower is better)" in page and "f1.assistant_turn_taking@5" in page
    assert 'id="fig-eval-' not in page  # one step per task: a table, no curve
    stats_bytes, page_bytes = Path(first.stats_json).read_bytes(), page.encode()
    again = run_stats([str(build)], StatsConfig(), progress=False)
    assert Path(again.stats_json).read_bytes() == stats_bytes
    assert Path(again.report_html).read_bytes() == page_bytes


def test_several_steps_draw_a_curve_and_two_checkpoints_give_deltas(tmp_path: Path) -> None:
    build = _evaluated_build(tmp_path / "build")
    early = _write(tmp_path / "more" / "early.json", eval_doc(build, "1b", 6, 16))
    late = _write(tmp_path / "more" / "late.json", eval_doc(build, "1b", 24, 4))
    out = tmp_path / "report"
    # the build's own step 12, plus steps 6 and 24 given (`minmo stats DIR --eval FILE...`)
    run_stats([str(build)], StatsConfig(out=str(out), eval=[early, late]), progress=False)
    stats = validate_stats(json.loads((out / "stats.json").read_text()))
    steps = [(e["stage"], e["step"]) for e in stats["eval"]]
    assert steps == [("1b", 6), ("1b", 12), ("1b", 24), ("4", 12)]
    page = (out / "report.html").read_text()
    figure = re.search(
        r'<figure class="plot" id="fig-eval-shards-stage1-test-asr-wer">(.*?)</figure>', page, re.S
    )
    assert figure, "no WER curve"
    caption = figure.group(1)
    assert "step 6: 0.8, step 12: 0.5, step 24: 0.2" in caption and "lower is better" in caption
    assert 'id="fig-eval-shards-stage4' not in page  # stage 4: one step only

    two = run_stats(
        [str(tmp_path / "build")],
        StatsConfig(out=str(tmp_path / "two"), eval=[late]),
        progress=False,
    )
    page = Path(two.report_html).read_text()
    # 1b at step 12 (WER 0.5) then at step 24 (WER 0.2): the second minus the first
    assert "<th>1b @ step 12</th><th>1b @ step 24</th><th>delta</th>" in page
    assert "-0.3 (-60.0%)" in page


def test_two_builds_compare_their_eval_figures(tmp_path: Path) -> None:
    a = _evaluated_build(tmp_path / "a")
    b = _tables(tmp_path / "b")
    _write(b / "eval" / "1b" / "eval.json", eval_doc(b, "1b", 12, 6))
    summary = run_stats([str(a), str(b)], StatsConfig(out=str(tmp_path / "cmp")), progress=False)
    deltas = {r["metric"]: r for r in json.loads(Path(summary.compare_json).read_text())["deltas"]}
    wer = deltas["eval[shards/stage1/test|1b].asr.wer"]
    assert (wer["a"], wer["b"]) == (0.5, 0.3) and wer["delta"] == pytest.approx(-0.2)
    assert deltas["eval[shards/stage4/test|4].duplex.frame_accuracy"]["b"] is None
    page = Path(summary.report_html).read_text()
    assert "<th>A: 1b @ step 12</th><th>B: 1b @ step 12</th><th>delta</th>" in page


def test_a_broken_eval_json_is_reported_not_fatal(tmp_path: Path) -> None:
    build = _evaluated_build(tmp_path / "build")
    bad = eval_doc(build, "1b", 3, 1)
    bad["tasks"]["asr"]["wer"]["rate"] = -1.0
    _write(build / "eval" / "old" / "eval.json", bad)
    stats = run_stats([str(build)], StatsConfig(), progress=False).stats[0]
    assert [e["stage"] for e in stats["eval"]] == ["1b", "4"]
    (error,) = stats["errors"]
    assert error["section"] == "eval" and error["source"].endswith("old/eval.json")
    assert "tasks/asr/wer/rate" in error["error"]
