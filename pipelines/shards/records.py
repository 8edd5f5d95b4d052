"""The shards step's state in DIR/_state/shards/: names and records, light enough for readers
that must not import the step (its tokenizers pull in transformers): `minmo doctor`.

Owns: a shard's unit name (its done marker is DIR/_state/shards/done/<unit>.json), the path of
a generation's record, and reopening a generation so that the next run writes the shards whose
markers were cleared. Must not: plan or write shards (pipelines/shards/step.py does).
"""

from __future__ import annotations

import re

from pipelines.build import BuildDir

STEP = "shards"

# `<stage>-g<generation>-<index>[-<part>].tar` (schemas.shards.shard_name): the unit is the
# name without the part, so every part of one planned shard shares one marker.
_TAR_RE = re.compile(
    r"^(?P<unit>(?P<stage>[A-Za-z0-9_]+)-g(?P<generation>\d{4,})-\d{6,})(-\d+)?\.tar$"
)


def shard_unit(stage: str, generation: int, index: int) -> str:
    """The unit (and done marker) name of planned shard `index` of a generation."""
    return f"{stage}-g{generation:04d}-{index:06d}"


def unit_of_tar(name: str) -> tuple[str, str, int] | None:
    """(unit, stage, generation) of a shard tar's file name; None for any other name."""
    match = _TAR_RE.match(name)
    if match is None:
        return None
    return match["unit"], match["stage"], int(match["generation"])


def state_dir(build: BuildDir, stage: str) -> str:
    return build.path("_state", STEP, stage)


def record_path(build: BuildDir, stage: str, generation: int) -> str:
    """A generation's record: its units, layout and, once complete, its shards."""
    return f"{state_dir(build, stage)}/g{generation:04d}.json"


def reopen_generation(build: BuildDir, stage: str, generation: int) -> bool:
    """Mark a generation incomplete, so that the next `minmo shards` writes every shard of it
    that has no marker (and rewrites the stage's index). False when it has no record."""
    path = record_path(build, stage, generation)
    if not build.exists(path):
        return False
    record = build.read_json(path)
    if record.get("complete"):
        record["complete"] = False
        build.write_json_atomic(path, record)
    return True
