"""Run functions of the steps that import torch (shards, train, eval, chat, duplex-sim,
model-info); see minmo/cli/entries.py for the contract. A separate module so that the light
steps do not pay torch's import."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from minmo.cli.steps import (
    EvalInputs,
    ModelInfoConfig,
    NoInputs,
    ShardsInputs,
    StepFailed,
    TrainInputs,
)
from minmo.eval.chat import ChatConfig, run_chat
from minmo.eval.duplex_sim import DuplexSimConfig, run_duplex_sim
from minmo.eval.run import EvalConfig, build_runs, run_eval
from minmo.model.info import render
from minmo.train.entry import render_ray, run_train, run_train_ray
from pipelines.shards.step import ShardsConfig, run_shards


def shards(build: str, inputs: ShardsInputs, config: ShardsConfig, progress: bool) -> Any:
    summary = run_shards(build, config, progress=progress, rebuild=inputs.rebuild)
    print(summary.render())
    return summary


def train(build: str, inputs: TrainInputs, overrides: dict[str, Any], progress: bool) -> Any:
    """Each training spec in turn, its fields overridden by `overrides` (the section's, then
    the command line's): the spec holds the required ones, so the config is built per spec."""
    if not inputs.stages:
        raise StepFailed(2, "give a training spec, e.g. jobs/train/1a.yaml")
    results = []
    for job in inputs.stages:
        if inputs.ray:
            result = run_train_ray(job, build, inputs.workers, inputs.gpu, **overrides)
            print(render_ray(result, inputs.workers))
            results.append(result)
            continue
        result = run_train(job, build, progress=progress, **overrides)
        print(result.render())
        results.append(result)
    return results


def model_info(build: str | None, _: NoInputs, config: ModelInfoConfig, progress: bool) -> Any:
    print(render(config.size))
    return config.size


def evaluate(build: str | None, inputs: EvalInputs, config: EvalConfig, progress: bool) -> Any:
    """One export (CHECKPOINT --shards DIR), or in a job each of `stages`' exports of the build
    on its held-out split (minmo.eval.run.build_runs); returns the EvalResult(s)."""
    if not inputs.stages:
        result = run_eval(config, progress=progress)
        print(result.render())
        return result
    if build is None:
        raise StepFailed(2, "eval: `stages` name a build's exports: use it in a job (minmo run)")
    if config.checkpoint or config.shards or config.out:
        raise StepFailed(2, "eval: give `stages` or CHECKPOINT/--shards/--out, not both")
    results = []
    for checkpoint, shards, out in build_runs(build, inputs.stages, inputs.split):
        run = replace(config, checkpoint=checkpoint, shards=shards, out=out)
        result = run_eval(run, progress=progress)
        print(result.render())
        results.append(result)
    return results


def chat(build: str | None, _: NoInputs, config: ChatConfig, progress: bool) -> Any:
    result = run_chat(config)
    print(result.render())
    return result


def duplex_sim(build: str | None, _: NoInputs, config: DuplexSimConfig, progress: bool) -> Any:
    result = run_duplex_sim(config)
    print(result.render())
    return result
