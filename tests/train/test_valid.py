"""Validation during training: a spec names a held-out shard directory (a split stage's
`valid/`), and the trainer logs its loss every `valid_every` steps, in eval mode and without
gradients, so the training itself is the run it would have been without it. A spec naming a
split stage trains on its `train/` split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minmo.cli import main
from minmo.train.config import TrainConfig
from minmo.train.data import training_dir
from minmo.train.metrics import read_metrics
from pipelines.shards.writer import write_stage_shards
from tests.train.test_train import _job, _run, _stage1_samples


@pytest.fixture(scope="module")
def split_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stage written with held-out splits: shards/stage1/{train,valid}/, no stage index."""
    build = tmp_path_factory.mktemp("valid") / "build"
    samples = _stage1_samples(18)
    stage = build / "shards" / "stage1"
    write_stage_shards(samples[:12], stage / "train", "stage1", max_samples=5)
    write_stage_shards(samples[12:], stage / "valid", "stage1", max_samples=5)
    return build


def test_a_split_stage_trains_on_its_train_split(split_build: Path) -> None:
    stage = split_build / "shards" / "stage1"
    assert training_dir(stage) == str(stage / "train")
    assert training_dir(stage / "valid") == str(stage / "valid")  # a stage dir as named
    assert training_dir(stage / "nowhere") == str(stage / "nowhere")  # ShardIndex says why


def test_valid_loss_every_n_steps_leaves_training_unchanged(
    split_build: Path, tmp_path: Path
) -> None:
    plain, checked = tmp_path / "plain", tmp_path / "checked"
    base = {"steps": 5, "save_every": 100, "num_workers": 0}
    job = _job(tmp_path, out=str(plain), **base)
    assert main(["-q", "train", str(job), "--build", str(split_build)]) == 0
    valid = "{build}/shards/stage1/valid"
    job = _job(tmp_path, out=str(checked), valid=valid, valid_every=2, valid_batches=2, **base)
    assert main(["-q", "train", str(job), "--build", str(split_build)]) == 0
    without, with_valid = read_metrics(plain), read_metrics(checked)
    # no grad, eval mode restored, no data or RNG consumed: the same training losses
    assert [m["loss"] for m in with_valid] == [m["loss"] for m in without]
    logged = {m["step"]: m for m in with_valid if "valid_loss" in m}
    assert sorted(logged) == [2, 4, 5]  # every 2 steps, and at the last step
    for m in logged.values():
        assert m["valid_loss"] == m["valid_loss"] and m["valid_loss"] > 0  # finite, positive
        assert m["valid_batches"] == 2
    assert all("valid_loss" not in m for m in without)
    # the same batches each time: the loss moves only because the weights did
    assert len({round(m["valid_loss"], 6) for m in logged.values()}) >= 2


def test_an_empty_valid_split_is_said_not_fatal(
    split_build: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = split_build / "shards" / "stage1" / "test"
    write_stage_shards([], empty, "stage1", max_samples=5)
    index = json.loads((empty / "_index" / "index.json").read_text())
    assert index["shards"] == []
    out = tmp_path / "ckpt"
    job = _job(tmp_path, out=str(out), steps=2, save_every=100, num_workers=0, valid=str(empty))
    assert main(["-q", "train", str(job), "--build", str(split_build)]) == 0
    assert "no validation loss" in capsys.readouterr().err
    assert all("valid_loss" not in m for m in read_metrics(out))


def test_valid_fields_are_checked() -> None:
    from minmo.config import ConfigError

    with pytest.raises(ConfigError, match="valid_every"):
        TrainConfig(stage="1a", valid_every=0)
    with pytest.raises(ValueError, match="cannot serve ftp://"):
        TrainConfig(stage="1a", valid="ftp://host/valid").locations("/b")


def test_two_ranks_validate_in_lockstep(split_build: Path, tmp_path: Path) -> None:
    """Under DDP every rank runs the same validation batches count (3 valid samples each, so
    the second batch of one is short) and the logged loss is their mean."""
    out = tmp_path / "ddp"
    valid = "{build}/shards/stage1/valid"
    job = _job(
        tmp_path,
        out=str(out),
        parallel="ddp",
        steps=2,
        save_every=100,
        valid=valid,
        valid_every=1,
        valid_batches=3,
    )
    _run(job, split_build, nproc=2)
    logged = [m for m in read_metrics(out) if "valid_loss" in m]
    assert [m["step"] for m in logged] == [1, 2]
    assert all(m["valid_loss"] > 0 and m["valid_batches"] == 2 for m in logged)
