"""The shard format: what a stage directory holds, how its files are named, what a sample carries.

On disk, one stage directory (written by the shards step, read by the trainer, verify and stats):

    <stage_dir>/<stage>-g0000-000000.tar          webdataset tar (generation 0, shard 0); each
                                                  sample's members are contiguous, named
                                                  <key>.json, <key>.flac, <key>.speech_tokens.npy,
                                                  <key>.text_tokens.npy, <key>.labels.npy,
                                                  <key>.assistant_activity.npy
    <stage_dir>/_index/<stage>-g0000-000000.tar.idx  little-endian uint64 (OFFSETS_DTYPE): byte
                                                  offset of each sample's first member header,
                                                  then a sentinel = the tar's size in bytes
    <stage_dir>/_index/index.json                 {"version": INDEX_VERSION, "generations": [...],
                                                  "shards": [{"name", "generation", "samples",
                                                  "audio_s", "text_tokens", "speech_tokens",
                                                  "bytes", "sha256"}, ...], "tasks", "totals"}
    <stage_dir>/.<name>.tmp-<pid>-<host>-<token>   a writer's temp file (`temp_name`): not a shard

A stage written with held-out splits (the shards config's `splits:`) has no tars of its own: its
`train/`, `valid/` and `test/` subdirectories are each a stage directory as above, with an
index.json that adds "split" (pipelines/shards/splits.py decides each sample's split).

Only tars sit directly in a stage directory: Ray Data (and Spark, Hadoop) skip names starting
with "_" or ".", so a plain `ray.data.read_webdataset(stage_dir)` or a glob of `*.tar` reads the
stage with no extra arguments, on local disk and on object stores alike.

Member values: json is a UTF-8 object; flac is 16-bit FLAC; the `.npy` members are integer
arrays: speech tokens in [0, SPEECH_VOCAB), text tokens >= 0, labels 1-D frame classes
(`schemas.duplex.FrameLabel`, 0..MAX_LABEL), assistant_activity 1-D 0/1 (0..MAX_ACTIVITY), one
per label frame (stage 4: the assistant side is talking; schemas/duplex.py).

Must not: import anything of ours outside `schemas`, or do I/O (the reader and writer are
`minmo/io/shards.py`).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import uuid
from typing import Any

import numpy as np

from schemas.duplex import FrameLabel

INDEX_NAME = "index.json"
# Version 2: index and .idx files under META_DIR, shard names carry their generation.
INDEX_VERSION = 2
# Everything in a stage directory that is not a shard lives here (see the module docstring).
META_DIR = "_index"
# index.json's path relative to a stage directory, as messages name it.
INDEX_RELPATH = f"{META_DIR}/{INDEX_NAME}"
# A `.idx` file: one offset per sample, then the tar's size.
OFFSETS_DTYPE = np.dtype("<u8")
# A writer's temp file is ".<final name>" + TEMP_MARKER + "<pid>-<host>-<token>": the leading dot
# hides it from Ray Data and `list_shards`, the marker tells every reader it is not a finished
# file, and the owner (`owner_tag`) lets a later run tell a dead writer's leftover from a live
# writer's file (minmo/io/atomic.py `sweep_temp_files`).
TEMP_MARKER = ".tmp-"
# This machine in an owner tag: 8 hex digits of the host name's sha1 (any characters a host name
# holds, in a fixed width that needs no escaping in a file name).
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_OWNER_RE = re.compile(r"^(\d+)-([0-9a-f]{8})-")

# Members a sample may carry besides "json" (required); the tar member name is "<key>.<member>".
ARRAY_MEMBERS = (
    "speech_tokens.npy",
    "text_tokens.npy",
    "labels.npy",
    "assistant_activity.npy",
)
OPTIONAL_MEMBERS = ("flac", *ARRAY_MEMBERS)
ALL_MEMBERS = ("json", *OPTIONAL_MEMBERS)
# webdataset splits "<key>.<ext>" at the first dot, so keys may not contain dots or slashes.
KEY_RE = re.compile(r"^[A-Za-z0-9_\-:+=@,]+$")
# webdataset's own split of a member name into (key, extension): the extension starts at the
# first dot of the base name; a directory part stays in the key.
MEMBER_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")

# A split stage's subdirectories (see the module docstring), train first.
SPLITS = ("train", "valid", "test")

# CosyVoice 2 speech tokenizer codebook (FSQ, 3**8 levels): speech tokens lie in [0, 6561).
SPEECH_VOCAB = 3**8
# The largest frame-label class a `labels.npy` may hold.
MAX_LABEL = int(max(FrameLabel))
# The largest value an `assistant_activity.npy` may hold (0 silent, 1 talking).
MAX_ACTIVITY = 1


def validate_key(key: Any) -> str | None:
    """Return why `key` is not a valid sample key, or None when it is."""
    if not isinstance(key, str) or not key:
        return f"key must be a non-empty str, got {key!r}"
    if not KEY_RE.match(key):
        return f"key {key!r} must be ASCII letters/digits/_-:+=@, (no dots, slashes or spaces)"
    return None


def split_member(name: str) -> tuple[str, str] | None:
    """(key, extension) of a tar member name, split as webdataset splits it; None when the
    name has no extension."""
    match = MEMBER_RE.match(name)
    return None if match is None else (match.group(1), match.group(2))


def shard_name(stage: str, index: int, generation: int = 0, part: int = 0) -> str:
    """`<stage>-g<generation>-<index>.tar`: generations are appended, never renumbered. A shard
    its writer had to cut (the seeded hash overfilled it) adds `-<part>` from its second part."""
    suffix = f"-{part}" if part else ""
    return f"{stage}-g{generation:04d}-{index:06d}{suffix}.tar"


def shard_path(stage_dir: str, name: str) -> str:
    """Where shard `name` (a tar's file name) lives: directly in the stage directory."""
    return f"{str(stage_dir).rstrip('/')}/{name}"


def split_dir(stage_dir: str, split: str) -> str:
    """Where a split's shards live: `<stage_dir>/<split>`, or the stage directory itself when
    unsplit (split "")."""
    return f"{str(stage_dir).rstrip('/')}/{split}" if split else str(stage_dir)


def index_path(stage_dir: str) -> str:
    """Where a stage directory's index.json lives (a path or URI string, joined with "/")."""
    return f"{str(stage_dir).rstrip('/')}/{INDEX_RELPATH}"


def offsets_relpath(name: str) -> str:
    """The `.idx` of shard `name`, relative to the stage directory (as messages name it)."""
    return f"{META_DIR}/{name}.idx"


def offsets_path(stage_dir: str, name: str) -> str:
    """Where the `.idx` of shard `name` (a tar's file name) lives."""
    return f"{str(stage_dir).rstrip('/')}/{offsets_relpath(name)}"


def owner_tag(pid: int | None = None, host: str = HOST_TAG) -> str:
    """`<pid>-<host tag>` of process `pid` (default this one) on this machine: what temp names
    and staging run ids start with, so that a later run can tell whether their writer lives."""
    return f"{os.getpid() if pid is None else pid}-{host}"


def parse_owner(tagged: str) -> tuple[int, str] | None:
    """(pid, host tag) of a string that starts with `owner_tag(...)` + "-" (a temp name's tail,
    a staging run id), or None (an older name without an owner)."""
    match = _OWNER_RE.match(tagged)
    return (int(match.group(1)), match.group(2)) if match else None


def temp_name(name: str, pid: int | None = None, host: str = HOST_TAG) -> str:
    """The name a writer (process `pid` on `host`, default this process) writes `name` under
    before the rename.

    A random token follows the owner: two threads of one process writing the same file never
    share a temp file."""
    return f".{name}{TEMP_MARKER}{owner_tag(pid, host)}-{uuid.uuid4().hex[:8]}"


def temp_owner(name: str) -> tuple[int, str] | None:
    """(pid, host tag) of the writer of temp file `name` (a name or path), or None when the name
    carries no owner (not a temp name, or one written before owners were recorded)."""
    base = name.rsplit("/", 1)[-1]
    if TEMP_MARKER not in base:
        return None
    return parse_owner(base.rsplit(TEMP_MARKER, 1)[1])


def final_name(name: str) -> str:
    """The file a temp file `name` (a base name) was to become: without its leading dot and
    TEMP_MARKER tail; any other name unchanged."""
    if TEMP_MARKER not in name:
        return name
    return name.rsplit(TEMP_MARKER, 1)[0].removeprefix(".")


def is_temp_name(name: str) -> bool:
    """Whether a file name (or path) is a writer's temp file, its own or one left by a killed
    writer: never a finished file, whatever its suffix."""
    return TEMP_MARKER in name.rsplit("/", 1)[-1]
