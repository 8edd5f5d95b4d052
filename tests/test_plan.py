"""minmo/plan.py: the capacity plan's arithmetic, its inputs' checks, and `minmo plan`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from minmo.plan import (
    PLAN_STEPS,
    Cluster,
    PlanConfig,
    PlanError,
    make_plan,
    parse_mix,
    parse_rates,
    render,
    run_plan,
)

REPO = Path(__file__).resolve().parents[1]
PAPER_MIX = REPO / "jobs" / "plan" / "minmo-paper.yaml"


def rates(**overrides):
    """Distinct CPU rates per step (audio-h per core-h), 1e9 bytes per audio-hour each."""
    steps = {
        "ingest": {"per_core_hour": 200.0, "bytes_per_audio_hour": {"recordings": 4e8, "x": 6e8}},
        "synthesize": {"per_core_hour": 100.0},
        "diarize": {"per_core_hour": 50.0, "per_gpu_hour": 5000.0},
        "label-turns": {"per_core_hour": 10000.0},
        "shards:stage1": {"per_core_hour": 400.0, "bytes_per_audio_hour": {"stage1": 1e9}},
        "shards:stage2": {"per_core_hour": 20.0, "per_gpu_hour": 8000.0},
        "shards:stage4": {"per_core_hour": 300.0},
        "stats": {"per_core_hour": 1e6},
    }
    steps.update(overrides)
    return parse_rates({"steps": steps, "date": "2026-12-06"}, "test-rates")


def mix(tasks=None, train=None):
    data = {
        "name": "t",
        "pipelines": {
            "transcribed": ["ingest", "shards", "stats"],
            "conv": ["ingest", "diarize", "label-turns", "shards"],
            "tts": ["synthesize", "shards"],
        },
        "tasks": tasks
        or {
            "asr": {"hours": 1000, "mean_duration_s": 8, "pipeline": "transcribed"},
            "tts": {"hours": 500, "mean_duration_s": 5, "pipeline": "transcribed"},
            "duplex": {"hours": 100, "mean_duration_s": 600, "pipeline": "conv"},
        },
    }
    if train:
        data["train"] = train
    return parse_mix(data, "test-mix")


def test_rows_follow_the_pipelines_and_add_up():
    plan = make_plan(rates(), mix(), Cluster(nodes=2, cores_per_node=10, gpus_per_node=0))
    rows = {r.step: r for r in plan.rows}
    assert list(rows) == [
        "ingest",
        "diarize",
        "label-turns",
        "shards:stage1",
        "shards:stage2",
        "shards:stage4",
        "stats",
    ]
    assert rows["ingest"].audio_hours == 1600  # every entry goes through ingest
    assert rows["stats"].audio_hours == 1500  # the conversation pipeline skips stats
    assert rows["shards:stage2"].audio_hours == 500
    assert rows["ingest"].core_hours == pytest.approx(1600 / 200)
    assert rows["ingest"].bytes_written == pytest.approx(1600 * 1e9)
    assert rows["shards:stage1"].samples == pytest.approx(1000 * 3600 / 8)
    assert rows["shards:stage4"].samples == pytest.approx(100 * 3600 / 600)
    for r in plan.rows:  # no GPUs: everything on the 20 cores
        assert r.resource == "cpu" and r.gpu_hours == 0
        assert r.wall_hours == pytest.approx(r.core_hours / 20)
    assert plan.total("core_hours") == pytest.approx(sum(r.core_hours for r in plan.rows))
    assert plan.total("wall_hours") == pytest.approx(plan.total("core_hours") / 20)
    # shards:stage2 at 20 audio-h per core-h: 25 core-h, the largest
    assert plan.bottleneck.step == "shards:stage2"


def test_gpu_rates_are_used_only_where_the_cluster_has_gpus():
    cpu_only = {r.step: r for r in make_plan(rates(), mix(), Cluster(1, 8, 0)).rows}
    gpus = {r.step: r for r in make_plan(rates(), mix(), Cluster(1, 8, 4)).rows}
    assert gpus["diarize"].resource == "gpu" and cpu_only["diarize"].resource == "cpu"
    assert gpus["diarize"].gpu_hours == pytest.approx(100 / 5000)
    assert gpus["diarize"].core_hours == 0
    assert gpus["diarize"].wall_hours == pytest.approx(100 / 5000 / 4)
    assert gpus["ingest"].resource == "cpu"  # no GPU rate measured
    assert gpus["ingest"].wall_hours == cpu_only["ingest"].wall_hours
    assert gpus["shards:stage2"].wall_hours < cpu_only["shards:stage2"].wall_hours


def test_wall_time_scales_with_the_cluster_and_hours_rescale_the_mix():
    small = make_plan(rates(), mix(), Cluster(1, 16, 0))
    big = make_plan(rates(), mix(), Cluster(10, 16, 0))
    assert big.total("wall_hours") == pytest.approx(small.total("wall_hours") / 10)
    assert big.total("core_hours") == pytest.approx(small.total("core_hours"))
    double = make_plan(rates(), mix().scaled(3200), Cluster(1, 16, 0))
    assert double.mix.hours == pytest.approx(3200)
    assert double.total("core_hours") == pytest.approx(2 * small.total("core_hours"))
    assert double.total("bytes_written") == pytest.approx(2 * small.total("bytes_written"))


def test_training_from_six_n_t():
    train = {"parameters": 1e9, "tokens_per_audio_s": 10, "mfu": 0.5, "peak_flops_per_gpu": 1e15}
    plan = make_plan(rates(), mix(train=train), Cluster(2, 8, 4))
    row = plan.rows[-1]
    assert row.step == "train" and row.resource == "gpu"
    flops = 6 * 1e9 * 1600 * 3600 * 10
    assert row.gpu_hours == pytest.approx(flops / (0.5 * 1e15 * 3600))
    assert row.wall_hours == pytest.approx(row.gpu_hours / 8)
    with pytest.raises(PlanError, match="needs GPUs"):
        make_plan(rates(), mix(train=train), Cluster(2, 8, 0))
    with pytest.raises(PlanError, match="mfu"):
        mix(train={**train, "mfu": 1.5})


def test_a_missing_rate_names_the_step_and_the_fix():
    r = rates()
    del r.steps["label-turns"]
    with pytest.raises(PlanError, match=r"no rate for label-turns in test-rates.*bench/scale.py"):
        make_plan(r, mix(), Cluster(1, 8))
    stage3 = {"s2s": {"task": "s2s_chat", "hours": 1, "mean_duration_s": 9, "pipeline": "tts"}}
    with pytest.raises(PlanError, match="no rate for shards:stage3"):
        make_plan(rates(), mix(stage3), Cluster(1, 8))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"hours": 1, "mean_duration_s": 8, "pipeline": "transcribed", "task": "asrr"},
            'unknown task "asrr" \\(did you mean "asr"\\?\\)',
        ),
        ({"hours": -1, "mean_duration_s": 8, "pipeline": "transcribed"}, "hours must be >= 0"),
        ({"hours": 1, "mean_duration_s": 0, "pipeline": "transcribed"}, "mean_duration_s must"),
        (
            {"hours": 1, "mean_duration_s": 8, "pipeline": "transcrbed"},
            'unknown pipeline "transcrbed" \\(did you mean "transcribed"\\?\\)',
        ),
        ({"hours": 1, "mean_duration_s": 8}, "'pipeline' is required"),
        (
            {"hours": 1, "mean_duration_s": 8, "pipeline": "transcribed", "stage": "stage2"},
            "belongs to stage1, not stage2",
        ),
        (
            {"hours": 1, "mean_durtion_s": 8, "pipeline": "transcribed"},
            'unknown key "mean_durtion_s" \\(did you mean "mean_duration_s"\\?\\)',
        ),
    ],
)
def test_bad_mix_entries_are_refused_with_the_reason(entry, message):
    with pytest.raises(PlanError, match=message):
        mix({"asr": entry})


def test_bad_pipelines_rates_and_clusters_are_refused():
    with pytest.raises(PlanError, match='unknown step "shard" \\(did you mean "shards"\\?\\)'):
        parse_mix({"pipelines": {"p": ["ingest", "shard"]}, "tasks": {}}, "m")
    with pytest.raises(PlanError, match="holds no hours"):
        mix({"asr": {"hours": 0, "mean_duration_s": 8, "pipeline": "transcribed"}})
    with pytest.raises(PlanError, match="steps.ingest: per_core_hour must be > 0"):
        rates(ingest={"per_core_hour": 0})
    with pytest.raises(PlanError, match="no 'steps'"):
        parse_rates({"machine": {}}, "r.json")
    with pytest.raises(PlanError, match=">= 1 node"):
        Cluster(0, 64, 8)
    with pytest.raises(PlanError, match="--hours must be > 0"):
        mix().scaled(-5)


def test_the_paper_mix_sums_to_the_papers_hours_and_names_every_stage():
    from minmo.model.info import PAPER

    data = yaml.safe_load(PAPER_MIX.read_text())
    m = parse_mix(data, str(PAPER_MIX))
    assert m.hours == pytest.approx(1_443_100)
    by_stage: dict[str, float] = {}
    for e in m.entries:
        by_stage[e.stage] = by_stage.get(e.stage, 0) + e.hours
    assert by_stage == {
        "stage1": 1_258_000,
        "stage2": 171_000,
        "stage3": 10_100,
        "stage4": 4_000,
    }
    assert m.train is not None
    assert m.train.parameters == pytest.approx(sum(PAPER.values()), rel=1e-3)
    assert set(PLAN_STEPS) == {s for e in m.entries for s in e.pipeline}


def test_shipped_rates_plan_the_paper_mix(capsys):
    """bench/rates.json (written by bench/scale.py) covers every step the paper mix needs."""
    plan = run_plan(PlanConfig(mix=str(PAPER_MIX), rates=str(REPO / "bench" / "rates.json")))
    assert plan.mix.hours == pytest.approx(1_443_100)
    assert {r.step for r in plan.rows} >= {"ingest", "shards:stage1", "shards:stage4", "train"}
    text = render(plan)
    assert f"bottleneck: {plan.bottleneck.step}" in text
    assert "| total |" in text


def test_cli_plan(tmp_path, capsys):
    from minmo.cli import main

    r = tmp_path / "rates.json"
    r.write_text(json.dumps({"steps": {k: {"per_core_hour": 100} for k in ("ingest", "stats")}}))
    m = tmp_path / "mix.yaml"
    m.write_text(
        "pipelines: {p: [ingest, stats]}\n"
        "tasks: {asr: {hours: 10, mean_duration_s: 5, pipeline: p}}\n"
    )
    argv = ["plan", "--mix", str(m), "--rates", str(r), "--nodes", "2", "--cores-per-node", "4"]
    assert main([*argv, "--hours", "1000", "--gpus-per-node", "0"]) == 0
    out = capsys.readouterr().out
    assert "| ingest | 1,000 |" in out and "| stats | 1,000 |" in out
    assert "core-h" in out and "bottleneck: " in out
    # 1000 h / 100 per core-h = 10 core-h per step over 8 cores: 1.25 h wall each
    assert "| ingest | 1,000 | 720,000 | cpu | 10 | - | - | 1.2 h |" in out
    m.write_text(
        "pipelines: {p: [ingest, diarize]}\ntasks: {asr: {hours: 1, mean_duration_s: 5, "
        "pipeline: p}}\n"
    )
    assert main(argv) == 2
    assert "no rate for diarize" in capsys.readouterr().err
