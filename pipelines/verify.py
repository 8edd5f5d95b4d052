"""Shard verification: check stage directories written by `pipelines/shards.py`.

Owns reading shards back and reporting problems as strings ("<shard>: <key>: <what>"); an empty
list means the stage is sound. Checks, per shard listed in index.json: file exists, size and
sha256 match, sample count matches, every sample has a `json` member and only known members, each
sample's members are contiguous and its key valid, FLAC decodes, speech tokens lie in
[0, SPEECH_VOCAB), text tokens are >= 0, labels are 1-D integers in 0..3, and the `.idx` offsets
point at each sample's first member header with a final sentinel equal to the tar size.
Must not: modify anything on disk.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from pipelines.shards import ALL_MEMBERS, INDEX_NAME, sha256_file, validate_key

SPEECH_VOCAB = 6561  # CosyVoice-2 speech tokenizer codebook size.
MAX_LABEL = 3


def _split(name: str) -> tuple[str, str]:
    # Same rule as webdataset: key is everything before the first dot of the basename.
    key, _, ext = name.partition(".")
    return key, ext


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
    except Exception as exc:  # noqa: BLE001 - any decode failure is a problem to report
        return f"{ext} does not decode: {type(exc).__name__}: {exc}"
    return None


def _read_samples(path: Path) -> tuple[list[tuple[str, int, dict[str, bytes]]], list[str]]:
    """Return [(key, first header offset, {ext: bytes})] in tar order, plus problems."""
    name = path.name
    problems: list[str] = []
    samples: list[tuple[str, int, dict[str, bytes]]] = []
    finished: set[str] = set()
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                key, ext = _split(info.name)
                if not info.isfile():
                    problems.append(f"{name}: {key}: member {info.name!r} is not a regular file")
                    continue
                if samples and samples[-1][0] == key:
                    members = samples[-1][2]
                else:
                    if samples:
                        finished.add(samples[-1][0])
                    if key in finished:
                        problems.append(f"{name}: {key}: members not contiguous ({info.name!r})")
                    if (why := validate_key(key)) is not None:
                        problems.append(f"{name}: {key}: {why}")
                    samples.append((key, info.offset, {}))
                    members = samples[-1][2]
                if ext in members:
                    problems.append(f"{name}: {key}: duplicate member {ext!r}")
                f = tar.extractfile(info)
                members[ext] = f.read() if f is not None else b""
                if len(members[ext]) != info.size:
                    problems.append(f"{name}: {key}: member {ext!r} truncated")
    except (tarfile.TarError, OSError, EOFError) as exc:
        last = samples[-1][0] if samples else "-"
        problems.append(f"{name}: {last}: unreadable tar: {type(exc).__name__}: {exc}")
    return samples, problems


def _check_idx(path: Path, samples: list[tuple[str, int, dict[str, bytes]]]) -> list[str]:
    name = path.name
    idx_path = path.with_name(name + ".idx")
    if not idx_path.exists():
        return [f"{name}: -: missing {idx_path.name}"]
    raw = idx_path.read_bytes()
    if len(raw) % 8:
        return [f"{name}: -: {idx_path.name} size {len(raw)} is not a multiple of 8"]
    offsets = np.frombuffer(raw, dtype="<u8").tolist()
    size = path.stat().st_size
    problems: list[str] = []
    if len(offsets) != len(samples) + 1:
        problems.append(
            f"{name}: -: {idx_path.name} has {len(offsets) - 1} offsets for {len(samples)} samples"
        )
    if not offsets or offsets[-1] != size:
        problems.append(f"{name}: -: {idx_path.name} sentinel {offsets[-1:]} != tar size {size}")
    with tarfile.open(path, mode="r:") as tar:
        for (key, _, _), off in zip(samples, offsets[:-1], strict=False):
            # fromtarfile follows PAX/GNU long-name headers, as any tar reader would from here.
            tar.fileobj.seek(off)
            try:
                got = _split(tarfile.TarInfo.fromtarfile(tar).name)[0]
            except tarfile.TarError as exc:
                got = f"<bad header: {exc}>"
            if got != key:
                problems.append(f"{name}: {key}: .idx offset {off} points at {got!r}")
    return problems


# Members each stage's samples must carry (stage names as written by the shard step).
STAGE_MEMBERS = {
    "stage1": {"json", "flac", "text_tokens.npy"},
    "stage2": {"json", "text_tokens.npy", "speech_tokens.npy"},
    "stage3": {"json", "flac", "text_tokens.npy", "speech_tokens.npy"},
    "stage4": {"json", "flac", "text_tokens.npy", "labels.npy"},
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
    vocab = (index.get("tokenizers") or {}).get("text_vocab_size")
    if vocab and "text_tokens.npy" in members:
        arr = np.load(io.BytesIO(members["text_tokens.npy"]), allow_pickle=False)
        if arr.size and arr.max() >= vocab:
            problems.append(f"text token {arr.max()} outside the tokenizer's {vocab} ids")
    return problems


def _check_shard(
    stage_dir: Path, entry: dict[str, Any], index: dict[str, Any] | None = None
) -> list[str]:
    name = str(entry.get("name"))
    path = stage_dir / name
    if not path.is_file():
        return [f"{name}: -: shard listed in index.json is missing"]
    problems: list[str] = []
    size = path.stat().st_size
    if size != entry.get("bytes"):
        problems.append(f"{name}: -: size {size} != index bytes {entry.get('bytes')}")
    if sha256_file(path) != entry.get("sha256"):
        problems.append(f"{name}: -: sha256 does not match index.json")
    samples, read_problems = _read_samples(path)
    problems += read_problems
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
        problems += _check_idx(path, samples)
    # Put per-sample problems (they name a key) before shard-level ones so the first message
    # points at a sample whenever one is identifiable.
    return sorted(problems, key=lambda p: p.split(": ", 2)[1] == "-")


def verify_stage(stage_dir: Path) -> list[str]:
    """Problems found in one stage directory (empty = ok)."""
    stage_dir = Path(stage_dir)
    index_path = stage_dir / INDEX_NAME
    if not index_path.is_file():
        return [f"{stage_dir.name}: -: missing {INDEX_NAME}"]
    try:
        index = json.loads(index_path.read_text())
        shards = index["shards"]
    except (ValueError, KeyError, TypeError) as exc:
        return [f"{stage_dir.name}: -: bad {INDEX_NAME}: {exc}"]
    problems: list[str] = []
    listed = set()
    for entry in shards:
        listed.add(entry.get("name"))
        problems += _check_shard(stage_dir, entry, index)
    for extra in sorted(p.name for p in stage_dir.glob("*.tar")):
        if extra not in listed:
            problems.append(f"{extra}: -: tar not listed in {INDEX_NAME}")
    return problems


def verify_shards(root: Path) -> dict[str, list[str]]:
    """`verify_stage` for every subdirectory of `root` holding an index.json: {stage: problems}.
    `root` may also be one stage directory itself."""
    if (Path(root) / INDEX_NAME).is_file():
        return {Path(root).name: verify_stage(Path(root))}
    return {
        d.name: verify_stage(d)
        for d in sorted(Path(root).iterdir())
        if d.is_dir() and (d / INDEX_NAME).is_file()
    }
