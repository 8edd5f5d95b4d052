"""Run functions of the steps that do not import torch (the table in minmo/cli/steps.py names
them), each `run(build, inputs, config, progress)`, for `minmo <step>` and `minmo run` alike.

Each prints what the user reads (a summary) and returns the step's result; a failure the user
acts on is a StepFailed carrying the exit code. A step's own pre-processing (a default under the
build, the CLI's historic spellings) is a line here, not a second dispatcher.
"""

from __future__ import annotations

from typing import Any

from minmo.cli.guard import EXIT_LOCKED
from minmo.cli.steps import (
    DemoDataConfig,
    DoctorConfig,
    IngestInputs,
    NoInputs,
    StatsInputs,
    StepFailed,
    VerifyConfig,
)
from minmo.demo import build_demo_corpus
from minmo.plan import PlanConfig, PlanError, render, run_plan
from pipelines import integrity
from pipelines.annotate import AnnotateConfig, run_annotate
from pipelines.build import BuildDir, StepLedger
from pipelines.diarize import DiarizeConfig, run_diarize
from pipelines.ingest.commit_index import CommitIndexError, reindex
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.run import STEP, TABLES, run_ingest
from pipelines.label_turns import LabelTurnsConfig, run_label_turns
from pipelines.lock import StepLocked
from pipelines.stats.compute import StatsConfig
from pipelines.stats.run import run_stats
from pipelines.synthesize import SynthesizeConfig, run_synthesize
from pipelines.verify import verify_shards

MAX_PROBLEMS_SHOWN = 20


def demo_data(build: str | None, _: NoInputs, config: DemoDataConfig, progress: bool) -> Any:
    out = config.out or f"{build}/demo-src"
    summary = build_demo_corpus(
        out, seed=config.seed, progress=progress, storage_options=config.storage_options
    )
    if not progress:  # with progress on, the builder prints its own closing line
        print(summary.describe())
    if config.annotator:
        # Deferred: the tiny-model builder imports torch and funasr, which no other light
        # command needs (this module is what `minmo <any step>` imports first).
        from minmo.demo.annotator import write_demo_annotator

        model = write_demo_annotator(out, config.storage_options)
        print(f"demo-data: tiny random-init SenseVoiceSmall for annotate -> {model}")
    return summary


def ingest(build: str | None, inputs: IngestInputs, config: IngestConfig, progress: bool) -> Any:
    assert build is not None
    try:
        if inputs.reindex:
            target = BuildDir(build, **config.storage_options)
            counts = reindex(target, StepLedger(target, STEP, TABLES))
            print(
                f"ingest: commit index rebuilt from {counts['source_parts']} committed parts: "
                f"{counts['rows']} rows in {counts['buckets']} buckets"
            )
            if not inputs.src:
                return counts
        if not inputs.src:
            raise StepFailed(2, "give the sources to ingest (src: SRC ...), or --reindex alone")
        summary = run_ingest(inputs.src, build, config, progress=progress)
    except CommitIndexError as exc:  # a damaged or missing index: the message says the fix
        raise StepFailed(2, str(exc)) from exc
    print(summary.render())
    return summary


def synthesize(build: str, _: NoInputs, config: SynthesizeConfig, progress: bool) -> Any:
    summary = run_synthesize(build, config, progress=progress)
    print(summary.render())
    return summary


def diarize(build: str, _: NoInputs, config: DiarizeConfig, progress: bool) -> Any:
    if config.num_speakers == 0:  # the command line's historic spelling of "estimate"
        config.num_speakers = None
    summary = run_diarize(build, config, progress=progress)
    print(summary.render())
    return summary


def annotate(build: str, _: NoInputs, config: AnnotateConfig, progress: bool) -> Any:
    try:
        summary = run_annotate(build, config, progress=progress)
    except FileNotFoundError as exc:  # the model directory (never a download): the message says
        raise StepFailed(2, str(exc)) from exc
    print(summary.render())
    return summary


def label_turns(build: str, _: NoInputs, config: LabelTurnsConfig, progress: bool) -> Any:
    summary = run_label_turns(build, config, progress=progress)
    print(summary.render())
    return summary


def verify(build: str | None, _: NoInputs, config: VerifyConfig, progress: bool) -> Any:
    root = config.dir or f"{build}/shards"
    results = verify_shards(root, config.storage_options)
    if not results:
        raise StepFailed(2, f"no stage directory with _index/index.json under {root}")
    for stage, problems in results.items():
        if not problems:
            print(f"verify {stage}: ok")
            continue
        print(f"verify {stage}: FAILED, {len(problems)} problem(s); first: {problems[0]}")
        for problem in problems[1:MAX_PROBLEMS_SHOWN]:
            print(f"  {problem}")
    failed = [stage for stage, problems in results.items() if problems]
    if failed:
        raise StepFailed(1, f"{len(failed)} bad stage(s) under {root}")
    return results


def stats(build: str | None, inputs: StatsInputs, config: StatsConfig, progress: bool) -> Any:
    sources = inputs.inputs or ([build] if build else [])
    if not sources:
        raise StepFailed(2, "give a build directory (or two, to compare)")
    summary = run_stats(list(sources), config, progress=progress)
    print(summary.render())
    return summary


def plan(build: str | None, _: NoInputs, config: PlanConfig, progress: bool) -> Any:
    try:
        result = run_plan(config)
    except PlanError as exc:
        raise StepFailed(2, str(exc)) from exc
    print(render(result))
    return result


def doctor(build: str, _: NoInputs, config: DoctorConfig, progress: bool) -> Any:
    """List the build's inconsistencies; with --fix, move them aside and check again. Exit 1
    while damage remains (after --fix: only when a running step kept some from being fixed)."""
    target = BuildDir(build, **config.storage_options)
    report = integrity.inspect(target)
    print(integrity.render(target, report))
    if config.fix and report.findings:
        try:
            print(integrity.render_repair(integrity.repair(target, report)))
        except StepLocked as exc:
            raise StepFailed(EXIT_LOCKED, f"cannot fix now: {exc}") from exc
        report = integrity.inspect(target)
        print(integrity.render(target, report))
    if report.damage:
        hint = "" if config.fix else f"; `minmo doctor --build {build} --fix` repairs it"
        raise StepFailed(1, f"{len(report.damage)} damaged committed file(s){hint}")
    return report
