"""Job specs: a YAML file naming steps to run, in order, on one build directory.

Owns: parsing and checking a spec (unknown keys are an error naming the nearest valid key) and
running its steps. Each step's section maps one to one onto that step's config dataclass.

    steps: [demo-data, ingest, diarize, label-turns]
    demo-data: {out: "{build}/demo-src", seed: 0}
    ingest: {src: "{build}/demo-src/manifest.jsonl", max_segment_s: 30}
    diarize: {backend: auto, num_speakers: 2}

`{build}` in any string value is replaced by the build directory, `{job_dir}` by the directory
holding the spec (for data files shipped beside it).

The build, the spec and every path in it may be object-store URIs (`s3://bucket/demo`).
`storage_options` (top level of the spec, then `minmo run --storage-options` over it) open their
filesystems and reach every step that takes them; a step's own `storage_options` key wins over
both. A step that only takes local paths says so (`Step.object_store`), and the runner refuses
a URI for it before any step runs, naming the step and the scheme, instead of letting
`Path("s3://b/x")` quietly become the local folder `s3:/b/x`.
"""

from __future__ import annotations

import dataclasses
import difflib
import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from minmo.io.fs import open_filesystem, to_uri, uri_scheme

# `s3:/bucket/key`: what `Path("s3://bucket/key")` makes of a URI; as a build it would quietly
# become the local folder ./s3:/bucket/key.
_COLLAPSED_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/(?!/)")


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
    object_store: bool = False
    """Whether the step reaches the build and every path of its section through pyarrow.fs, so
    that object-store URIs work; without it, only local paths are accepted."""


def _run_demo_data(build: str, section: dict[str, Any], progress: bool) -> Any:
    from minmo.demo import build_demo_corpus

    out = section.get("out", f"{build}/demo-src")
    summary = build_demo_corpus(
        out,
        seed=int(section.get("seed", 0)),
        progress=progress,
        storage_options=section.get("storage_options"),
    )
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
    from pipelines.label_turns import LabelTurnsConfig, run_label_turns

    summary = run_label_turns(build, LabelTurnsConfig(**section), progress=progress)
    print(summary.render())
    return summary


def _run_synthesize(build: str, section: dict[str, Any], progress: bool) -> Any:
    from pipelines.synthesize import SynthesizeConfig, run_synthesize

    summary = run_synthesize(build, SynthesizeConfig(**section), progress=progress)
    print(summary.render())
    return summary


def _run_shards(build: str, section: dict[str, Any], progress: bool) -> Any:
    from pipelines.shards.step import ShardsConfig, run_shards

    summary = run_shards(build, ShardsConfig(**section), progress=progress)
    print(summary.render())
    return summary


def _run_verify(build: str, section: dict[str, Any], progress: bool) -> Any:
    from pipelines.verify import verify_shards

    root = section.get("dir", f"{build}/shards")
    results = verify_shards(root, section.get("storage_options"))
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
        result = run_train(
            job,
            build,
            progress=progress,
            steps=section.get("steps"),
            storage_options=section.get("storage_options"),
        )
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


def _run_plan(build: str, section: dict[str, Any], progress: bool) -> Any:
    from minmo.plan import PlanConfig, render, run_plan

    plan = run_plan(PlanConfig(**section))
    print(render(plan))
    return plan


def _config_keys(module: str, name: str) -> tuple[str, ...]:
    import importlib

    return tuple(f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name)))


STEPS: dict[str, Callable[[], Step]] = {
    "demo-data": lambda: Step(
        "demo-data", ("out", "seed", "storage_options"), _run_demo_data, object_store=True
    ),
    "ingest": lambda: Step("ingest", _ingest_keys(), _run_ingest, object_store=True),
    "diarize": lambda: Step(
        "diarize",
        _config_keys("pipelines.diarize", "DiarizeConfig"),
        _run_diarize,
        object_store=True,
    ),
    "synthesize": lambda: Step(
        "synthesize",
        _config_keys("pipelines.synthesize", "SynthesizeConfig"),
        _run_synthesize,
        object_store=True,
    ),
    "label-turns": lambda: Step(
        "label-turns",
        _config_keys("pipelines.label_turns", "LabelTurnsConfig"),
        _run_label_turns,
        object_store=True,
    ),
    "shards": lambda: Step(
        "shards",
        _config_keys("pipelines.shards.step", "ShardsConfig"),
        _run_shards,
        object_store=True,
    ),
    "verify": lambda: Step("verify", ("dir", "storage_options"), _run_verify, object_store=True),
    "train": lambda: Step(
        "train", ("stages", "steps", "storage_options"), _run_train, object_store=True
    ),
    "stats": lambda: Step(
        "stats",
        ("inputs", *_config_keys("pipelines.stats.compute", "StatsConfig")),
        _run_stats,
        object_store=True,
    ),
    # Reads only its mixture and rates files (through pyarrow.fs), never the build.
    "plan": lambda: Step(
        "plan", _config_keys("minmo.plan", "PlanConfig"), _run_plan, object_store=True
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


def canonical_build(build: str) -> str:
    """The build as every step should see it: a local path made absolute (a relative one would
    name another folder on a worker started elsewhere), `file://` as its plain path, and a URI
    kept a URI, without a trailing slash (`s3://b/demo/` + `/x` would be the key `demo//x`)."""
    if _COLLAPSED_URI.match(build):
        raise JobSpecError(
            f"--build {build!r} looks like a URI whose '//' became '/' "
            f"(write {build.replace(':/', '://', 1)!r}); refusing to read it as a local path"
        )
    if uri_scheme(build) in (None, "file"):
        return open_filesystem(build)[1]
    return build.rstrip("/")


def _uris(value: Any) -> Iterable[str]:
    """Every string in a section that names a URI scheme (`s3://...`, `file://...`)."""
    if isinstance(value, str):
        if uri_scheme(value) is not None:
            yield value
    elif isinstance(value, list):
        for v in value:
            yield from _uris(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _uris(v)


def _check_local_only(where: str, step: Step, build: str, section: dict[str, Any]) -> None:
    if step.object_store:
        return
    for uri in [build, *_uris(section)]:
        scheme = uri_scheme(uri)
        if scheme is not None:
            raise JobSpecError(
                f"{where}: step {step.name!r} cannot serve {scheme}:// paths yet (it reads and "
                f"writes local paths only), got {uri!r}; run it on a local build"
            )


def _read_spec(path: str | Path, storage_options: dict[str, Any]) -> tuple[Any, str]:
    """(the parsed spec, the URI of its folder) from a local path or a URI."""
    where = str(path)
    if uri_scheme(where) in (None, "file"):
        local = Path(open_filesystem(where)[1])
        return yaml.safe_load(local.read_text()), str(local.resolve().parent)
    fs, spec_path = open_filesystem(where, **storage_options)
    with fs.open_input_stream(spec_path) as f:
        text = f.read().decode("utf-8")
    return yaml.safe_load(text), to_uri(fs, posixpath.dirname(spec_path))


def load_job(
    path: str | Path, build: str, storage_options: dict[str, Any] | None = None
) -> list[tuple[Step, dict[str, Any]]]:
    """Parse and check a spec without running anything; errors name the file and key.

    `storage_options` go over the spec's own top-level ones into every step that takes them."""
    build = canonical_build(build)
    spec, job_dir = _read_spec(path, storage_options or {})
    spec = spec or {}
    if not isinstance(spec, dict):
        raise JobSpecError(f"{path}: a job spec is a mapping with a 'steps' list")
    check_keys(str(path), spec, ["name", "description", "steps", "storage_options", *STEPS])
    names = spec.get("steps")
    if not isinstance(names, list) or not names:
        raise JobSpecError(f"{path}: 'steps' must be a non-empty list of: {', '.join(STEPS)}")
    shared = spec.get("storage_options") or {}
    if not isinstance(shared, dict):
        raise JobSpecError(f"{path}: 'storage_options' must be a mapping")
    shared = {**shared, **(storage_options or {})}
    plan = []
    for name in names:
        if name not in STEPS:
            raise JobSpecError(f'{path}: unknown step "{name}"{nearest(name, STEPS)}')
        step = STEPS[name]()
        section = spec.get(name) or {}
        if not isinstance(section, dict):
            raise JobSpecError(f"{path}: section '{name}' must be a mapping")
        check_keys(f"{path}: {name}", section, step.keys)
        section = _expand(section, build, job_dir)
        _check_local_only(str(path), step, build, section)
        if "storage_options" in step.keys and (shared or "storage_options" in section):
            section["storage_options"] = {**shared, **(section.get("storage_options") or {})}
        plan.append((step, section))
    return plan


def run_job(
    path: str | Path,
    build: str,
    progress: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run a spec's steps in order on `build` (a local path or a URI); see the module docstring."""
    plan = load_job(path, build, storage_options)  # every step is checked before any runs
    build = canonical_build(build)
    results = {}
    for step, section in plan:
        print(f"== {step.name}")
        results[step.name] = step.run(build, section, progress)
    return results
