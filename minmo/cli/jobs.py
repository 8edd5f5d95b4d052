"""Job specs: a YAML file naming steps to run, in order, on one build directory.

Owns: parsing and checking a spec (unknown keys, nested ones too, are an error naming the nearest
valid key) and running its steps. Each step's section maps one to one onto the fields of that
step's table entry (minmo/cli/steps.py: its inputs and its config dataclass), the same fields
`minmo <step>` takes as flags.

    steps: [demo-data, ingest, diarize, label-turns]
    demo-data: {out: "{build}/demo-src", seed: 0}
    ingest: {src: "{build}/demo-src/manifest.jsonl", max_segment_s: 30}
    diarize: {backend: auto, num_speakers: 2}

`{build}` in any string value is replaced by the build directory, `{job_dir}` by the directory
holding the spec (for data files shipped beside it).

The build, the spec and every path in it may be object-store URIs (`s3://bucket/demo`).
`storage_options` (top level of the spec, then `minmo run --storage-options` over it) open their
filesystems and reach every step that takes them; a step's own `storage_options` key wins over
both. A step that only takes local paths says so (`StepSpec.object_store` in minmo/cli/steps.py),
and the runner refuses a URI for it before any step runs, naming the step and the scheme, instead
of letting `Path("s3://b/x")` quietly become the local folder `s3:/b/x`.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from minmo.cli.guard import run_guarded
from minmo.cli.steps import STEPS, StepSpec
from minmo.config import ConfigError, check_keys, from_mapping, nearest
from minmo.io.fs import open_filesystem, to_uri, uri_scheme

# `s3:/bucket/key`: what `Path("s3://bucket/key")` makes of a URI; as a build it would quietly
# become the local folder ./s3:/bucket/key.
_COLLAPSED_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/(?!/)")


@dataclass(frozen=True)
class JobStep:
    """A step of a job: its table entry, run on a checked section."""

    name: str
    spec: StepSpec

    @property
    def object_store(self) -> bool:
        return self.spec.object_store

    def accepted_keys(self) -> tuple[str, ...]:
        """The keys its section accepts: its inputs' fields, then its config's."""
        return section_keys(self.spec)

    def run(self, build: str | None, section: dict[str, Any], progress: bool) -> Any:
        """Run the step on `section` (checked, `{build}` expanded); returns its result."""
        inputs, config = split_section(self.name, self.spec, section)
        return run_guarded(self.name, self.spec, build, inputs, config, progress)


def section_keys(spec: StepSpec) -> tuple[str, ...]:
    fields = [*dataclasses.fields(spec.inputs), *dataclasses.fields(spec.config_class())]
    return tuple(f.name for f in fields)


def split_section(where: str, spec: StepSpec, section: dict[str, Any]) -> tuple[Any, Any]:
    """(inputs, config) of a step built from its section: unknown keys (nested ones too) are a
    ConfigError naming the nearest valid key. A step whose config is built per run (train)
    gets its config keys as a mapping."""
    check_keys(where, section, section_keys(spec))
    names = {f.name for f in dataclasses.fields(spec.inputs)}
    inputs = from_mapping(spec.inputs, {k: v for k, v in section.items() if k in names}, where)
    rest = {k: v for k, v in section.items() if k not in names}
    config = from_mapping(spec.config_class(), rest, where) if spec.build_config else rest
    return inputs, config


def expand(value: Any, build: str, job_dir: str = ".") -> Any:
    """`{build}` and `{job_dir}` replaced in every string of a section."""
    if isinstance(value, str):
        return value.replace("{build}", build).replace("{job_dir}", job_dir)
    if isinstance(value, list):
        return [expand(v, build, job_dir) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, build, job_dir) for k, v in value.items()}
    return value


def canonical_build(build: str) -> str:
    """The build as every step should see it: a local path made absolute (a relative one would
    name another folder on a worker started elsewhere), `file://` as its plain path, and a URI
    kept a URI, without a trailing slash (`s3://b/demo/` + `/x` would be the key `demo//x`)."""
    if _COLLAPSED_URI.match(build):
        raise ConfigError(
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


def _check_local_only(where: str, step: JobStep, build: str, section: dict[str, Any]) -> None:
    if step.object_store:
        return
    for uri in [build, *_uris(section)]:
        scheme = uri_scheme(uri)
        if scheme is not None:
            raise ConfigError(
                f"{where}: step {step.name!r} cannot serve {scheme}:// paths yet (it reads and "
                f"writes local paths only), got {uri!r}; run it on a local build"
            )


def read_spec(path: str | Path, storage_options: dict[str, Any]) -> tuple[Any, str]:
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
) -> list[tuple[JobStep, dict[str, Any]]]:
    """Parse and check a spec without running anything; errors name the file and key.

    `storage_options` go over the spec's own top-level ones into every step that takes them."""
    build = canonical_build(build)
    spec, job_dir = read_spec(path, storage_options or {})
    spec = spec or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a job spec is a mapping with a 'steps' list")
    check_keys(str(path), spec, ["name", "description", "steps", "storage_options", *STEPS])
    names = spec.get("steps")
    if not isinstance(names, list) or not names:
        raise ConfigError(f"{path}: 'steps' must be a non-empty list of: {', '.join(STEPS)}")
    shared = spec.get("storage_options") or {}
    if not isinstance(shared, dict):
        raise ConfigError(f"{path}: 'storage_options' must be a mapping")
    shared = {**shared, **(storage_options or {})}
    plan = []
    for name in names:
        if name not in STEPS:
            raise ConfigError(f'{path}: unknown step "{name}"{nearest(name, STEPS)}')
        step = JobStep(name, STEPS[name])
        section = spec.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: section '{name}' must be a mapping")
        section = expand(section, build, job_dir)
        split_section(f"{path}: {name}", step.spec, section)  # every value checked up front
        _check_local_only(str(path), step, build, section)
        if "storage_options" in step.accepted_keys() and (shared or "storage_options" in section):
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
