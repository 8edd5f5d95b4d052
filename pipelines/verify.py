"""Shard verification: check stage directories written by the shards step, on any
filesystem pyarrow reaches (a local path, `file://`, `s3://`, `gs://`).

Owns reading shards back and reporting problems as strings ("<shard>: <key>: <what>"); an empty
list means the stage is sound. Checks, per shard listed in `_index/index.json`: file exists, size
and sha256 match, sample count matches, every sample has a `json` member and only known members,
each sample's members are contiguous and its key valid, FLAC decodes, speech tokens lie in
[0, SPEECH_VOCAB), text tokens are >= 0, labels are 1-D integers in 0..MAX_LABEL, an assistant
activity track is 1-D 0/1 with one value per label (stage 4 needs both), and the `.idx` offsets
(`_index/<tar>.idx`) point at each sample's first member header with a final sentinel equal to
the tar size. A tar in the stage directory that index.json does not list is reported; writers'
temp files are not tars: one whose writer is gone (minmo/io/atomic.py `is_stale`) is reported as
a stray leftover, one whose writer still runs is not. A split stage
(`<stage>/{train,valid,test}/`, pipelines/shards/splits.py) is one stage directory per split. The format is `schemas/shards.py`;
the files (index.json and its version, the listing, the `.idx` files, the tar members) are read
through the one shard reader, `minmo/io/shards.py`.

Each tar is read once, as a stream (one GET on an object store): the sha256, the size, the
members and every header's offset come from that pass, so the `.idx` check needs no second read.
Must not: modify anything, or read shards through anything but pyarrow.fs.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tarfile
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import soundfile as sf

from minmo.io.atomic import stale_temp_files
from minmo.io.fs import open_filesystem
from minmo.io.shards import HashingReader, iter_members, list_shards, read_index, read_offsets
from schemas.shards import (
    ALL_MEMBERS,
    INDEX_RELPATH,
    MAX_ACTIVITY,
    MAX_LABEL,
    META_DIR,
    SPEECH_VOCAB,
    SPLITS,
    offsets_relpath,
    validate_key,
)
from schemas.shards import index_path as stage_index_path

Sample = tuple[str, int, dict[str, bytes]]  # key, offset of its first header, {ext: bytes}


def _check_member(ext: str, data: bytes) -> str | None:
    try:
        if ext == "json":
            if not isinstance(json.loads(data), dict):
                return "json member is not an object"
        elif ext == "flac":
            audio, _ = sf.read(io.BytesIO(data), dtype="float32")
            if audio.size == 0:
                return "flac decodes to no samples"
        elif ext.endswith(".npy"):
            arr = np.load(io.BytesIO(data), allow_pickle=False)
            if arr.dtype.kind not in "iu":
                return f"{ext} has non-integer dtype {arr.dtype}"
            if (
                ext == "speech_tokens.npy"
                and arr.size
                and (arr.min() < 0 or arr.max() >= SPEECH_VOCAB)
            ):
                return f"speech tokens outside [0, {SPEECH_VOCAB}): {arr.min()}..{arr.max()}"
            if ext == "text_tokens.npy" and arr.size and arr.min() < 0:
                return f"negative text token {arr.min()}"
            if ext == "labels.npy":
                if arr.ndim != 1:
                    return f"labels must be 1-D, got shape {arr.shape}"
                if arr.size and (arr.min() < 0 or arr.max() > MAX_LABEL):
                    return f"labels outside 0..{MAX_LABEL}: {arr.min()}..{arr.max()}"
            if ext == "assistant_activity.npy":
                if arr.ndim != 1:
                    return f"assistant_activity must be 1-D, got shape {arr.shape}"
                if arr.size and (arr.min() < 0 or arr.max() > MAX_ACTIVITY):
                    return f"assistant_activity outside 0..{MAX_ACTIVITY}: {arr.min()}..{arr.max()}"
    except Exception as exc:  # noqa: BLE001 - any decode failure is a problem to report
        return f"{ext} does not decode: {type(exc).__name__}: {exc}"
    return None


def _read_samples(
    reader: HashingReader, name: str
) -> tuple[list[Sample], dict[int, str], list[str]]:
    """[(key, first header offset, {ext: bytes})] in tar order, {header offset: key} of every
    member, and problems; `reader` is consumed sequentially (tarfile's stream mode)."""
    problems: list[str] = []
    samples: list[Sample] = []
    headers: dict[int, str] = {}
    finished: set[str] = set()
    try:
        for member in iter_members(reader, stream=True):
            # A name without an extension is kept whole: an unknown member "" is reported.
            key, ext = member.key, member.ext or ""
            headers[member.offset] = key
            if not member.is_file:
                problems.append(f"{name}: {key}: member {member.name!r} is not a regular file")
                continue
            if samples and samples[-1][0] == key:
                members = samples[-1][2]
            else:
                if samples:
                    finished.add(samples[-1][0])
                if key in finished:
                    problems.append(f"{name}: {key}: members not contiguous ({member.name!r})")
                if (why := validate_key(key)) is not None:
                    problems.append(f"{name}: {key}: {why}")
                samples.append((key, member.offset, {}))
                members = samples[-1][2]
            if ext in members:
                problems.append(f"{name}: {key}: duplicate member {ext!r}")
            members[ext] = member.data or b""
            if len(members[ext]) != member.size:
                problems.append(f"{name}: {key}: member {ext!r} truncated")
    except (tarfile.TarError, OSError, EOFError) as exc:
        last = samples[-1][0] if samples else "-"
        problems.append(f"{name}: {last}: unreadable tar: {type(exc).__name__}: {exc}")
    return samples, headers, problems


def _check_idx(
    fs: pafs.FileSystem,
    stage_dir: str,
    name: str,
    size: int,
    samples: list[Sample],
    headers: dict[int, str],
) -> list[str]:
    try:
        offsets = read_offsets(fs, stage_dir, name).tolist()
    except FileNotFoundError:
        return [f"{name}: -: missing {offsets_relpath(name)}"]
    except ValueError as exc:
        return [f"{name}: -: {exc}"]
    idx_name = offsets_relpath(name)
    problems: list[str] = []
    if len(offsets) != len(samples) + 1:
        problems.append(
            f"{name}: -: {idx_name} has {len(offsets) - 1} offsets for {len(samples)} samples"
        )
    if not offsets or offsets[-1] != size:
        problems.append(f"{name}: -: {idx_name} sentinel {offsets[-1:]} != tar size {size}")
    for (key, first, _), off in zip(samples, offsets[:-1], strict=False):
        if off != first:
            at = headers.get(off)
            if at is None:
                got = "no member header"
            elif at == key:
                got = f"a later member of {key!r}"
            else:
                got = repr(at)
            problems.append(f"{name}: {key}: .idx offset {off} points at {got}")
    return problems


# Members each stage's samples must carry (stage names as written by the shard step).
STAGE_MEMBERS = {
    "stage1": {"json", "flac", "text_tokens.npy"},
    "stage2": {"json", "text_tokens.npy", "speech_tokens.npy"},
    "stage3": {"json", "flac", "text_tokens.npy", "speech_tokens.npy"},
    "stage4": {"json", "flac", "text_tokens.npy", "labels.npy", "assistant_activity.npy"},
}


def _array_len(data: bytes | None) -> int | None:
    if data is None:
        return None
    try:
        return int(np.load(io.BytesIO(data), allow_pickle=False).size)
    except Exception:  # noqa: BLE001 - reported by _check_member
        return None


def _check_consistency(index: dict[str, Any], members: dict[str, bytes]) -> list[str]:
    """The json's counts against the arrays, the stage's member set, the text vocabulary."""
    problems: list[str] = []
    required = STAGE_MEMBERS.get(str(index.get("stage")))
    if required and (missing := sorted(required - set(members))):
        problems.append(f"missing members {missing} required in {index.get('stage')}")
    try:
        meta = json.loads(members["json"])
    except (KeyError, ValueError):
        return problems
    for field, member in (
        ("n_speech_tokens", "speech_tokens.npy"),
        ("n_text_tokens", "text_tokens.npy"),
        ("n_labels", "labels.npy"),
    ):
        got = _array_len(members.get(member))
        if field in meta and got is not None and got != meta[field]:
            problems.append(f"{member} has {got} entries, json says {field}={meta[field]}")
    n_labels = _array_len(members.get("labels.npy"))
    n_activity = _array_len(members.get("assistant_activity.npy"))
    if n_activity is not None and n_activity != n_labels:
        problems.append(f"assistant_activity.npy has {n_activity} entries, labels.npy {n_labels}")
    vocab = (index.get("tokenizers") or {}).get("text_vocab_size")
    if vocab and "text_tokens.npy" in members:
        arr = np.load(io.BytesIO(members["text_tokens.npy"]), allow_pickle=False)
        if arr.size and arr.max() >= vocab:
            problems.append(f"text token {arr.max()} outside the tokenizer's {vocab} ids")
    return problems


def _check_shard(
    fs: pafs.FileSystem,
    stage_dir: str,
    entry: dict[str, Any],
    listing: dict[str, pafs.FileInfo],
    index: dict[str, Any] | None = None,
) -> list[str]:
    name = str(entry.get("name"))
    info = listing.get(name)
    if info is None:
        return [f"{name}: -: shard listed in index.json is missing"]
    problems: list[str] = []
    if info.size != entry.get("bytes"):
        problems.append(f"{name}: -: size {info.size} != index bytes {entry.get('bytes')}")
    with fs.open_input_stream(info.path) as raw:
        reader = HashingReader(raw)
        samples, headers, read_problems = _read_samples(reader, name)
        reader.drain()
    problems += read_problems
    if reader.sha256.hexdigest() != entry.get("sha256"):
        problems.append(f"{name}: -: sha256 does not match index.json")
    if len(samples) != entry.get("samples"):
        problems.append(
            f"{name}: -: {len(samples)} samples != index samples {entry.get('samples')}"
        )
    for key, _, members in samples:
        if "json" not in members:
            problems.append(f"{name}: {key}: missing required member 'json'")
        unknown = sorted(set(members) - set(ALL_MEMBERS))
        if unknown:
            problems.append(f"{name}: {key}: unknown members {unknown}")
        for ext, data in members.items():
            if ext in ALL_MEMBERS and (why := _check_member(ext, data)) is not None:
                problems.append(f"{name}: {key}: {why}")
        for why in _check_consistency(index or {}, members):
            problems.append(f"{name}: {key}: {why}")
    if not read_problems:
        problems += _check_idx(fs, stage_dir, name, reader.bytes, samples, headers)
    # Put per-sample problems (they name a key) before shard-level ones so the first message
    # points at a sample whenever one is identifiable.
    return sorted(problems, key=lambda p: p.split(": ", 2)[1] == "-")


def _verify(fs: pafs.FileSystem, stage_dir: str) -> list[str]:
    name = posixpath.basename(stage_dir.rstrip("/"))
    try:
        index = read_index(fs, stage_dir)
    except FileNotFoundError as exc:
        return [f"{name}: -: missing {INDEX_RELPATH}: {exc}"]
    except ValueError as exc:  # names the file already
        return [f"{name}: -: {exc}"]
    shards = index.get("shards")
    if not isinstance(shards, list):
        return [f'{name}: -: bad {INDEX_RELPATH}: no "shards" list']
    listing = list_shards(fs, stage_dir)
    problems: list[str] = []
    listed = set()
    for entry in shards:
        listed.add(entry.get("name"))
        problems += _check_shard(fs, stage_dir, entry, listing, index)
    for extra in sorted(set(listing) - listed):
        problems.append(f"{extra}: -: tar not listed in {INDEX_RELPATH}")
    for where in (stage_dir, f"{stage_dir.rstrip('/')}/{META_DIR}"):
        for path in stale_temp_files(fs, where):
            stray = posixpath.relpath(path, stage_dir)
            problems.append(
                f"{stray}: -: stray temp file of a writer that is gone; the next "
                "`minmo shards` removes it"
            )
    return problems


def verify_stage(
    stage_dir: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Problems found in one stage directory, a path or URI (empty = ok)."""
    fs, path = open_filesystem(os.fspath(stage_dir), **(storage_options or {}))
    return _verify(fs, path)


def _indexed_subdirs(fs: pafs.FileSystem, path: str) -> list[str]:
    """The directories directly under `path` that hold `_index/index.json`, sorted."""
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    dirs = sorted(
        e.path
        for e in fs.get_file_info(pafs.FileSelector(path, recursive=False))
        if e.type == pafs.FileType.Directory
    )
    infos = fs.get_file_info([stage_index_path(d) for d in dirs])
    return [d for d, info in zip(dirs, infos, strict=True) if info.type == pafs.FileType.File]


def _split_dirs(fs: pafs.FileSystem, path: str) -> list[str]:
    """A split stage's `train`/`valid`/`test` directories (pipelines/shards/splits.py), each a
    stage directory of its own; empty for an unsplit stage."""
    return [d for d in _indexed_subdirs(fs, path) if posixpath.basename(d) in SPLITS]


def verify_shards(
    root: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> dict[str, list[str]]:
    """`verify_stage` for every stage directory under `root` (a path or URI):
    {name: problems}. A stage directory holds `_index/index.json`; a split stage holds one per
    split (`<stage>/train`, `<stage>/valid`, `<stage>/test`), each verified and named so.
    `root` may be one stage directory, split or not. An empty result means no stage directory
    was found."""
    fs, path = open_filesystem(os.fspath(root), **(storage_options or {}))
    name = posixpath.basename(path.rstrip("/"))
    if fs.get_file_info(stage_index_path(path)).type == pafs.FileType.File:
        return {name: _verify(fs, path)}
    if splits := _split_dirs(fs, path):
        return {f"{name}/{posixpath.basename(d)}": _verify(fs, d) for d in splits}
    out: dict[str, list[str]] = {}
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return out
    for d in sorted(
        e.path
        for e in fs.get_file_info(pafs.FileSelector(path, recursive=False))
        if e.type == pafs.FileType.Directory
    ):
        stage = posixpath.basename(d)
        if fs.get_file_info(stage_index_path(d)).type == pafs.FileType.File:
            out[stage] = _verify(fs, d)
        else:
            for split in _split_dirs(fs, d):
                out[f"{stage}/{posixpath.basename(split)}"] = _verify(fs, split)
    return out
