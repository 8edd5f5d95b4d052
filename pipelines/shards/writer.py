"""Stage shards, the step's cutting logic: samples -> shuffled, size-capped shards + index.json.

The format (names, `.idx`, index.json, the on-disk layout) is `schemas/shards.py`; the bytes
(member encoding, the tar writer, the readers) are `minmo/io/shards.py`. What stays here is the
step's own logic: the seeded global order, cutting shards at `max_samples` / `max_bytes`, and the
per-shard, per-task and stage totals written to `_index/index.json`. Must not: do I/O beyond
`out_dir`, decode audio, or drop samples silently (an invalid sample raises `ValueError` naming
its key).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from minmo.io.atomic import write_bytes_atomic
from minmo.io.shards import ShardTarWriter, encode_sample
from schemas.shards import INDEX_VERSION, index_path, offsets_path, shard_name, validate_key


def _shuffle_rank(seed: int, key: str) -> bytes:
    # A per-key hash makes the order independent of input order and of Python's hash seed.
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()


def _tar_bytes_estimate(encoded: dict[str, bytes | str]) -> int:
    # Header block + payload rounded up to 512-byte blocks, per member.
    return sum(512 + -(-len(v) // 512) * 512 for k, v in encoded.items() if k != "__key__")


def _stats(sample: dict[str, Any]) -> dict[str, Any]:
    meta = sample["json"]
    return {
        "task": str(meta.get("task", "unknown")),
        "audio_s": float(meta.get("duration_s", 0.0) or 0.0),
        "text_tokens": int(np.size(sample["text_tokens.npy"]))
        if "text_tokens.npy" in sample
        else 0,
        "speech_tokens": int(np.size(sample["speech_tokens.npy"]))
        if "speech_tokens.npy" in sample
        else 0,
    }


def _write_one_tar(
    out_dir: Path, name: str, encoded_samples: list[dict[str, bytes | str]]
) -> tuple[int, str]:
    writer = ShardTarWriter(out_dir, name)
    try:
        for enc in encoded_samples:
            writer.add(enc)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def _chunks(
    encoded: list[tuple[dict[str, bytes | str], dict[str, Any]]], max_samples: int, max_bytes: int
) -> Iterator[list[tuple[dict[str, bytes | str], dict[str, Any]]]]:
    chunk: list[tuple[dict[str, bytes | str], dict[str, Any]]] = []
    chunk_bytes = 0
    for enc, st in encoded:
        size = _tar_bytes_estimate(enc)
        # A single oversize sample still gets its own shard rather than being dropped.
        if chunk and (len(chunk) >= max_samples or chunk_bytes + size > max_bytes):
            yield chunk
            chunk, chunk_bytes = [], 0
        chunk.append((enc, st))
        chunk_bytes += size
    if chunk:
        yield chunk


def _add(totals: dict[str, Any], st: dict[str, Any]) -> None:
    totals["samples"] += 1
    totals["audio_s"] = round(totals["audio_s"] + st["audio_s"], 6)
    totals["text_tokens"] += st["text_tokens"]
    totals["speech_tokens"] += st["speech_tokens"]


def _zero() -> dict[str, Any]:
    return {"samples": 0, "audio_s": 0.0, "text_tokens": 0, "speech_tokens": 0}


def write_stage_shards(
    samples: Iterable[dict[str, Any]],
    out_dir: Path,
    stage: str,
    max_samples: int = 2000,
    max_bytes: int = 500_000_000,
    seed: int = 0,
    shuffle: bool = True,
) -> dict[str, Any]:
    """Write one stage's samples as shards + `.idx` files + `index.json`; return the index.

    All samples are held in memory (encoded) for the global shuffle. With `shuffle`, order is by
    sha256(f"{seed}:{key}"), so it does not depend on input order; without it, input order is kept.
    A shard closes at `max_samples` samples or when the next sample would pass `max_bytes`.
    """
    if validate_key(stage) is not None:
        raise ValueError(f"stage {stage!r} must be a valid key-like name: {validate_key(stage)}")
    if max_samples < 1 or max_bytes < 1:
        raise ValueError("max_samples and max_bytes must be >= 1")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    encoded: list[tuple[dict[str, bytes | str], dict[str, Any]]] = []
    seen: set[str] = set()
    for sample in samples:
        enc = encode_sample(sample)
        key = str(enc["__key__"])
        if key in seen:
            raise ValueError(f"duplicate sample key {key!r}")
        seen.add(key)
        encoded.append((enc, _stats(sample)))
    if shuffle:
        encoded.sort(key=lambda pair: _shuffle_rank(seed, str(pair[0]["__key__"])))

    shards: list[dict[str, Any]] = []
    tasks: dict[str, dict[str, Any]] = {}
    stage_totals = {**_zero(), "shards": 0, "bytes": 0}
    for i, chunk in enumerate(_chunks(encoded, max_samples, max_bytes)):
        name = shard_name(stage, i)
        size, digest = _write_one_tar(out_dir, name, [enc for enc, _ in chunk])
        shard = {"name": name, "generation": 0, **_zero()}
        for _, st in chunk:
            _add(shard, st)
            _add(tasks.setdefault(st["task"], _zero()), st)
            _add(stage_totals, st)
        shard["bytes"] = size
        shard["sha256"] = digest
        stage_totals["shards"] += 1
        stage_totals["bytes"] += shard["bytes"]
        shards.append(shard)

    # Shards left over from an earlier, larger run would otherwise look like part of this stage.
    keep = {s["name"] for s in shards}
    for old in out_dir.glob(f"{stage}-*.tar"):
        if old.name not in keep:
            old.unlink()
            Path(offsets_path(str(out_dir), old.name)).unlink(missing_ok=True)

    index = {
        "version": INDEX_VERSION,
        "stage": stage,
        "seed": seed,
        "shuffle": shuffle,
        "generations": [{"generation": 0, "shards": len(shards)}],
        "shards": shards,
        "tasks": dict(sorted(tasks.items())),
        "totals": stage_totals,
    }
    write_bytes_atomic(
        pafs.LocalFileSystem(),
        index_path(str(out_dir.resolve())),
        (json.dumps(index, indent=2, sort_keys=True) + "\n").encode(),
    )
    return index
