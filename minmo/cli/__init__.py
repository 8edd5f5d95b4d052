"""The `minmo` command line: one sub-command per step of the step table (minmo/cli/steps.py),
plus `run` for job specs. The only part of `minmo/` that imports `pipelines`.

A step's flags are generated from its dataclasses (minmo/cli/flags.py), so every config field is
reachable here, documented once in its docstring; `--config YAML` gives the step's section from
a file, and the precedence is command line > YAML > defaults. Only the chosen step's modules are
imported, so `minmo --help` does not load torch or Ray.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from minmo.cli.flags import add_config_flags, nest, parse_json_fields
from minmo.cli.guard import run_guarded
from minmo.cli.jobs import expand, read_spec, run_job, split_section
from minmo.cli.steps import STEPS, StepFailed, StepSpec, resolve
from minmo.config import ConfigError, merge
from minmo.io.fs import STORE_SCHEMES, check_scheme
from pipelines.audio_source import SourceRoots
from pipelines.build import BuildDir
from pipelines.ray_runtime import set_verbose

# Every path argument of every command, and the URI schemes the command serves there. `main`
# checks them all before the command runs, so a scheme a command cannot serve is an error naming
# the command and the scheme, and a URI never becomes a local directory named after it.
PATH_ARGS: dict[str, dict[str, tuple[str, ...]]] = {
    **{name: spec.paths for name, spec in STEPS.items() if spec.paths},
    "run": {"job": STORE_SCHEMES, "build": STORE_SCHEMES},
}

# Namespace entries that are the command line's own, not a step's section.
COMMON = ("command", "quiet", "verbose", "build", "source_root", "config", "json_dests", "aliases")


def check_paths(args: argparse.Namespace) -> None:
    """ValueError for the first path argument whose scheme the command cannot serve."""
    for dest, schemes in PATH_ARGS.get(args.command, {}).items():
        value = getattr(args, dest, None)
        for uri in value if isinstance(value, list) else [value]:
            if uri is not None:
                check_scheme(f"minmo {args.command}", uri, schemes)


def record_source_roots(build: str, roots: list[str], storage_options: dict[str, Any]) -> None:
    """`--source-root OLD=NEW`: record the sources' move in the build once, so that every later
    step, on any node, reads moved audio from NEW (pipelines/audio_source.py SourceRoots)."""
    if roots:
        SourceRoots.parse(roots).record(BuildDir(build, **storage_options))


def _add_common(p: argparse.ArgumentParser, *, build: bool, source_root: bool) -> None:
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="also show Ray's own INFO logs and progress bars",
    )
    if build:
        p.add_argument("--build", required=True, help="build directory (local path or s3://)")
    if source_root:
        p.add_argument(
            "--source-root",
            action="append",
            default=[],
            metavar="OLD=NEW",
            help="the sources once under OLD are now under NEW (a re-mounted corpus, or one "
            "copied to an object store); recorded in the build, so later steps read audio from "
            "NEW. Ids and shards do not change. Repeatable",
        )


def _add_step(p: argparse.ArgumentParser, spec: StepSpec) -> None:
    """The step's flags, generated from its inputs and config dataclasses."""
    _add_common(p, build=spec.build, source_root=spec.source_root)
    p.add_argument(
        "--config",
        default=None,
        metavar="YAML",
        help="the step's section from a YAML file (the file itself, or a job spec holding the "
        "section); flags given here go over it",
    )
    choices = {name: tuple(resolve(where)) for name, where in spec.choices.items()}
    json_dests = []
    for cls in (spec.inputs, spec.config_class()):
        json_dests += add_config_flags(
            p,
            cls,
            positional=spec.positional,
            choices=choices,
            flag_aliases=spec.flag_aliases,
        )
    for i, alias in enumerate(spec.aliases):
        p.add_argument(
            alias.flag,
            dest=f"alias{i}",
            default=argparse.SUPPRESS,
            metavar=None if alias.choices else alias.flag[2:].upper().replace("-", "_"),
            choices=alias.choices,
            help=alias.help,
        )
    p.set_defaults(json_dests=json_dests, aliases=spec.aliases)


def _add_run(sub: Any) -> None:
    run = sub.add_parser("run", help="run a job spec's steps in order")
    run.add_argument("job", help="YAML job spec, e.g. jobs/demo.yaml (local path or s3://)")
    _add_common(run, build=True, source_root=True)
    run.add_argument(
        "--storage-options",
        default=None,
        metavar="JSON",
        help="for the build's filesystem, given to every step (over the spec's own top-level "
        "storage_options)",
    )


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, the other steps' sub-commands are listed but not built (building
    one imports its config module, and some import torch)."""
    parser = argparse.ArgumentParser(prog="minmo", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also show Ray's own INFO logs and bars"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, spec in STEPS.items():
        p = sub.add_parser(name, help=spec.help, description=spec.help)
        if only is None or only == name:
            _add_step(p, spec)
    _add_run(sub)
    return parser


def _yaml_section(
    path: str | None, name: str, build: str | None, storage_options: dict[str, Any]
) -> dict[str, Any]:
    """`--config`'s mapping: the step's section of a job spec, or the whole file, read like a
    job spec (a local path or an object-store URI); `{build}` and `{job_dir}` expand as in a job."""
    if path is None:
        return {}
    spec, job_dir = read_spec(path, storage_options)
    data = expand(spec or {}, build or "", job_dir)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a step's config is a mapping")
    section = data.get(name, {}) if "steps" in data else data
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: section '{name}' must be a mapping")
    return section


def section_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The step's section: `--config`'s YAML, under the flags given (CLI > YAML > defaults)."""
    values = {k: v for k, v in vars(args).items() if k not in COMMON}
    for i, alias in enumerate(args.aliases):
        if f"alias{i}" in values:
            values[alias.dest] = alias.convert(values.pop(f"alias{i}"))
    parse_json_fields(values, args.json_dests)
    yaml_section = _yaml_section(
        args.config, args.command, getattr(args, "build", None), values.get("storage_options") or {}
    )
    return merge(yaml_section, nest(values))


def _run_step(args: argparse.Namespace) -> int:
    spec = STEPS[args.command]
    section = section_from_args(args)
    inputs, config = split_section(args.config or args.command, spec, section)
    build = getattr(args, "build", None)
    if spec.source_root:
        record_source_roots(build, args.source_root, section.get("storage_options") or {})
    run_guarded(args.command, spec, build, inputs, config, not args.quiet)
    return 0


def _run_job(args: argparse.Namespace) -> int:
    values = {"storage_options": args.storage_options}
    parse_json_fields(values, ["storage_options"])
    options = values["storage_options"] or {}
    record_source_roots(args.build, args.source_root, options)
    run_job(args.job, args.build, progress=not args.quiet, storage_options=options)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(only=command).parse_args(argv)
    set_verbose(args.verbose)
    try:
        check_paths(args)
        return _run_job(args) if args.command == "run" else _run_step(args)
    except StepFailed as exc:
        print(f"minmo {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ValueError, FileNotFoundError) as exc:
        # Configuration and input errors are the user's to fix: say what, not a traceback.
        if isinstance(exc, ConfigError) or type(exc) in (ValueError, FileNotFoundError):
            print(f"minmo {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise
