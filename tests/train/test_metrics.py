"""Training metrics across a resume: each step once in metrics.jsonl and in one TensorBoard
event file, and a finished stage's rerun says it was finished instead of "loss nan -> nan"."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from minmo.train.loop import TrainResult
from minmo.train.metrics import MetricsLog, read_metrics


def _run(out: Path, start: int, end: int, scale: float) -> None:
    log = MetricsLog(out, True, end, start, tensorboard=True, progress=False)
    for step in range(start + 1, end + 1):
        log.log(step, {"loss": scale / step})
    log.close()


def test_a_resumed_run_logs_each_step_once_in_one_event_file(tmp_path: Path) -> None:
    _run(tmp_path, 0, 6, 1.0)  # killed after step 6; its last checkpoint was step 4
    [events] = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    events.write_bytes(events.read_bytes() + b"\x10\x00\x00")  # a record the kill cut short
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 7, "lo')  # a line the kill cut short
    _run(tmp_path, 4, 6, 2.0)  # resumed from step 4: steps 5 and 6 are redone
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [
        (1, 1.0),
        (2, 0.5),
        (3, 1 / 3),
        (4, 0.25),
        (5, 2 / 5),
        (6, 2 / 6),
    ]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*")) == [events]
    board = EventAccumulator(str(tmp_path / "tensorboard"))
    board.Reload()
    got = [(s.step, round(s.value, 6)) for s in board.Scalars("loss")]
    assert got == [(1, 1.0), (2, 0.5), (3, 0.333333), (4, 0.25), (5, 0.4), (6, 0.333333)]


def test_a_fresh_run_over_a_killed_one_starts_its_logs_over(tmp_path: Path) -> None:
    _run(tmp_path, 0, 3, 1.0)  # killed before its first checkpoint
    _run(tmp_path, 0, 2, 3.0)
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(1, 3.0), (2, 1.5)]
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_a_finished_stage_says_so() -> None:
    again = TrainResult("stage1", 0, 40, steps=40, resumed_from="out/step-00000040")
    text = again.render()
    assert "already finished (40 steps)" in text and "nan" not in text
    trained = TrainResult("stage1", 2, 40, losses=[2.0, 1.5], steps=40)
    assert "loss 2.0000 -> 1.5000" in trained.render()
