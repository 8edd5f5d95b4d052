"""Job specs: a YAML file naming steps to run, in order, on one build directory.

Owns: parsing and checking a spec (unknown keys are an error naming the nearest valid key) and
running its steps. Each step's section maps one to one onto that step's config dataclass.

    steps: [demo-data, ingest, diarize, label-turns]
    demo-data: {out: "{build}/demo-src", seed: 0}
    ingest: {src: "{build}/demo-src/manifest.jsonl", max_segment_s: 30}
    diarize: {backend: auto, num_speakers: 2}

`{build}` in any string value is replaced by the build directory, `{job_dir}` by the directory
holding the spec (for data files shipped beside it).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class JobSpecError(ValueError):
    """The job spec is wrong; the message says where and how to fix it."""


def nearest(key: str, valid: Iterable[str]) -> str:
    """' (did you mean "x"?)' for the closest valid key, or '' when nothing is close."""
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f' (did you mean "{match[0]}"?)' if match else ""


def check_keys(where: str, given: Iterable[str], valid: Iterable[str]) -> None:
    valid = sorted(valid)
    for key in given:
        if key not in valid:
            raise JobSpecError(
                f'{where}: unknown key "{key}"{nearest(key, valid)}; valid keys: {", ".join(valid)}'
            )


@dataclass
class Step:
    """A runnable step: the keys its section accepts and the function that runs it."""

    name: str
    keys: tuple[str, ...]
    run: Callable[[str, dict[str, Any], bool], Any]


def _run_demo_data(build: str, section: dict[str, Any], progress: bool) -> Any:
    from minmo.demo import build_demo_corpus

    out = section.get("out", f"{build}/demo-src")
    summary = build_demo_corpus(out, seed=int(section.get("seed", 0)), progress=progress)
    if not progress:  # with progress on, the builder prints its own closing line
        print(summary.describe())
    return summary


def _run_ingest(build: str, section: dict[str, Any], progress: bool) -> Any:
    from pipelines.ingest.config import IngestConfig
    from pipelines.ingest.run import run_ingest

    options = dict(section)
    if "src" not in options:
        raise JobSpecError('ingest: "src" is required (a directory, glob or manifest)')
    src = options.pop("src")
    summary = run_ingest(src, build, IngestConfig(**options), progress=progress)
    print(summary.render())
    return summary


def _ingest_keys() -> tuple[str, ...]:
    from pipelines.ingest.config import IngestConfig

    return ("src", *(f.name for f in dataclasses.fields(IngestConfig)))


def _run_diarize(build: str, section: dict[str, Any], progress: bool) -> Any:
    from pipelines.diarize import DiarizeConfig, run_diarize

    summary = run_diarize(build, DiarizeConfig(**section), progress=progress)
    print(summary.render())
    return summary


def _run_label_turns(build: str, section: dict[str, Any], progress: bool) -> Any:
    from pipelines.turns import LabelTurnsConfig, run_label_turns

    summary = run_label_turns(build, LabelTurnsConfig(**section), progress=progress)
    print(summary.render())
    return summary


def _run_synthesize(build: str, section: dict[str, Any], progress: bool) -> Any:
    from pipelines.synthesize import SynthesizeConfig, run_synthesize

    summary = run_synthesize(build, SynthesizeConfig(**section), progress=progress)
    print(summary.render())
    return summary


def _run_shards(build: str, section: dict[str, Any], progress: bool) -> Any:
    from pipelines.shard_step import ShardsConfig, run_shards

    summary = run_shards(build, ShardsConfig(**section), progress=progress)
    print(summary.render())
    return summary


def _run_verify(build: str, section: dict[str, Any], progress: bool) -> Any:
    from pathlib import Path

    from pipelines.verify import verify_shards

    root = Path(section.get("dir", f"{build}/shards"))
    results = verify_shards(root)
    for stage, problems in results.items():
        print(f"verify {stage}: " + ("ok" if not problems else f"FAILED: {problems[0]}"))
    failed = {s: p for s, p in results.items() if p}
    if not results or failed:
        raise RuntimeError(
            f"verify: {len(failed)} bad stage(s) under {root}"
            if results
            else f"verify: no shards under {root}"
        )
    return results


def _run_train(build: str, section: dict[str, Any], progress: bool) -> Any:
    from minmo.train.entry import run_train

    results = []
    for job in section.get("stages", []):
        result = run_train(job, build, progress=progress, steps=section.get("steps"))
        print(result.render())
        results.append(result)
    return results


def _run_stats(build: str, section: dict[str, Any], progress: bool) -> Any:
    from pipelines.stats.compute import StatsConfig
    from pipelines.stats.run import run_stats

    options = dict(section)
    inputs = options.pop("inputs", None) or [build]
    summary = run_stats(list(inputs), StatsConfig(**options), progress=progress)
    print(summary.render())
    return summary


def _config_keys(module: str, name: str) -> tuple[str, ...]:
    import importlib

    return tuple(f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name)))


STEPS: dict[str, Callable[[], Step]] = {
    "demo-data": lambda: Step("demo-data", ("out", "seed"), _run_demo_data),
    "ingest": lambda: Step("ingest", _ingest_keys(), _run_ingest),
    "diarize": lambda: Step(
        "diarize", _config_keys("pipelines.diarize", "DiarizeConfig"), _run_diarize
    ),
    "synthesize": lambda: Step(
        "synthesize", _config_keys("pipelines.synthesize", "SynthesizeConfig"), _run_synthesize
    ),
    "label-turns": lambda: Step(
        "label-turns", _config_keys("pipelines.turns", "LabelTurnsConfig"), _run_label_turns
    ),
    "shards": lambda: Step(
        "shards", _config_keys("pipelines.shard_step", "ShardsConfig"), _run_shards
    ),
    "verify": lambda: Step("verify", ("dir",), _run_verify),
    "train": lambda: Step("train", ("stages", "steps"), _run_train),
    "stats": lambda: Step(
        "stats", ("inputs", *_config_keys("pipelines.stats.compute", "StatsConfig")), _run_stats
    ),
}


def _expand(value: Any, build: str, job_dir: str = ".") -> Any:
    if isinstance(value, str):
        return value.replace("{build}", build).replace("{job_dir}", job_dir)
    if isinstance(value, list):
        return [_expand(v, build, job_dir) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, build, job_dir) for k, v in value.items()}
    return value


def load_job(path: str | Path, build: str) -> list[tuple[Step, dict[str, Any]]]:
    """Parse and check a spec without running anything; errors name the file and key."""
    spec = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(spec, dict):
        raise JobSpecError(f"{path}: a job spec is a mapping with a 'steps' list")
    check_keys(str(path), spec, ["name", "description", "steps", *STEPS])
    names = spec.get("steps")
    if not isinstance(names, list) or not names:
        raise JobSpecError(f"{path}: 'steps' must be a non-empty list of: {', '.join(STEPS)}")
    plan = []
    for name in names:
        if name not in STEPS:
            raise JobSpecError(f'{path}: unknown step "{name}"{nearest(name, STEPS)}')
        step = STEPS[name]()
        section = spec.get(name) or {}
        if not isinstance(section, dict):
            raise JobSpecError(f"{path}: section '{name}' must be a mapping")
        check_keys(f"{path}: {name}", section, step.keys)
        plan.append((step, _expand(section, build, str(Path(path).resolve().parent))))
    return plan


def run_job(path: str | Path, build: str, progress: bool = True) -> dict[str, Any]:
    results = {}
    for step, section in load_job(path, build):
        print(f"== {step.name}")
        results[step.name] = step.run(build, section, progress)
    return results
