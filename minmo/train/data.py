"""The trainer's data side: one stage's shards -> this rank's batches, with exact O(1) resume.

Owns reading samples from a stage directory; the layout is `schemas/shards.py`'s, and it is
read through the one shard reader, `minmo/io/shards.py` (`read_index`, `read_offsets`,
`iter_members`). A stage directory is a local path or any URI pyarrow.fs opens
(`s3://bucket/build/shards/stage1`):

    <stage_dir>/<stage>-g0000-000000.tar         webdataset tar (generation 0, shard 0), a
                                                 sample's members contiguous
    <stage_dir>/_index/index.json                {"version": 2, "generations": [...], "shards":
                                                 [{"name", "generation", "samples", "audio_s",
                                                 "text_tokens", "speech_tokens", "bytes",
                                                 "sha256"}, ...]} (every generation's shards)
    <stage_dir>/_index/<stage>-g0000-000000.tar.idx   little-endian uint64 offset of each
                                                 sample's first member header, then a sentinel
                                                 = the tar's size

Only tars sit in the stage directory, so other readers need nothing of this module:
`ray.data.read_webdataset(stage_dir)` reads it as it is, and `webdataset.WebDataset(
webdataset_urls(stage_dir))` too (object-store shards are streamed by `minmo.train.cat`).

Data flow, and who owns what:

    ShardIndex       index.json -> sample counts; (shard, k) -> one positional read of the
                     byte span [idx[k], idx[k+1]) through pyarrow.fs (a ranged GET on an
                     object store) -> decoded sample (json, audio, token arrays)
    EpochOrder       seeded shard permutation for (seed, epoch) + cumulative counts: the epoch's
                     global sequence; global position -> (shard, k) by binary search
    RankStream       rank r of W reads positions [start, per_rank) of its contiguous slice;
                     DataLoader worker i of n reads start+i, start+i+n, ...; PyTorch's in-order
                     round robin over workers then returns the slice in exact sequence order
    Batcher          greedy dynamic batching by budget in the main process; knows how many
                     samples its yielded batches hold, so that count is the resume position
    StageLoader      what the loop uses: epochs, batches (collated), state_dict / load_state_dict

Epoch order. Shards are permuted by `np.random.default_rng([seed, epoch])`; samples keep their
order inside a shard (the shard step already shuffled the corpus globally before cutting
shards). The epoch's global sequence is the permuted shards' samples concatenated. Rank r of W
gets the contiguous slice [r * per_rank, (r + 1) * per_rank) with per_rank = total // W, so every
rank has exactly the same number of samples whatever the shard sizes and even with fewer shards
than ranks x workers; the last `total % W` (< W) samples of each epoch's sequence are not read
that epoch (`StageLoader.dropped_per_epoch`). The shard permutation changes every epoch, so
different samples are dropped each epoch.

Resume. The state is (epoch, position): position = samples of this rank's slice that are in
batches already handed to the loop. Restarting there costs one shard permutation and one binary
search over cumulative counts, O(shards) once + O(log shards) per sample, never a scan over
samples, so resume time does not depend on corpus size. Greedy batching depends only on where
it starts, so a resumed loader forms exactly the batches an uninterrupted one would have.

Contract for the training loop (ranks in lockstep under dynamic batching). Ranks have the same
number of samples per epoch but may form different numbers of batches. Before every micro-batch:

    batch = loader.next_batch()              # None once this rank's epoch is exhausted
    if all_reduce_min(batch is not None):    # every rank has one: train on it
        ...
    else:                                    # some rank is done: all ranks move on together,
        loader.next_epoch()                  # dropping what is left of their epoch
        (and ask again)

`next_batch` keeps returning None until `next_epoch` is called; `epoch_done` says the same
without fetching. A single process can simply iterate the loader (`for batch in loader`), which
runs epochs forever. Checkpoint `state_dict()` after a step; `load_state_dict` refuses another
world size, seed, rank or corpus with an error saying how to proceed.

Must not: decode anything the collator does not need, scan samples to resume, or skip a sample
silently: a sample that fails to read or decode raises naming its shard, index and key (the
shards were verified by `minmo verify`, so a failure here means the files changed underneath).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import shlex
import sys
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import soundfile as sf
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from minmo.io.fs import is_local, open_filesystem, to_uri
from minmo.io.paths import Pathlike
from minmo.io.shards import iter_members, read_index, read_offsets
from minmo.model.batch import Batch, collate
from schemas.shards import (
    ARRAY_MEMBERS,
    SPLITS,
    index_path,
    offsets_path,
    shard_path,
    split_dir,
)
from schemas.units import SAMPLE_RATE_HZ, Seconds

# .idx arrays kept per process; a rank reads its slice shard by shard, so a few suffice.
_OFFSETS_CACHE = 64


def _as_is(item: Any) -> Any:
    """DataLoader `collate_fn` for unbatched items: keep numpy arrays as they are (the default
    would convert them to tensors before the Batcher has measured them)."""
    return item


def decode_sample(key: str, members: dict[str, bytes]) -> dict[str, Any]:
    """Raw member bytes of one sample -> the decoded sample `minmo.model.batch.collate` takes.

    Keys: key, json (dict), audio (float32 (channels, samples) at 16 kHz, or None), audio_s
    (seconds, 0.0 without audio), text_tokens / speech_tokens / labels / assistant_activity (numpy
    arrays, or None).
    """
    if "json" not in members:
        raise ValueError(f"sample {key}: no json member (members: {sorted(members)})")
    sample: dict[str, Any] = {"key": key, "json": json.loads(members["json"]), "audio": None}
    sample["audio_s"] = 0.0
    if "flac" in members:
        # sf gives (frames, channels); the collator wants (channels, samples).
        data, rate = sf.read(io.BytesIO(members["flac"]), dtype="float32", always_2d=True)
        if rate != SAMPLE_RATE_HZ:
            raise ValueError(f"sample {key}: audio at {rate} Hz, expected {SAMPLE_RATE_HZ}")
        sample["audio"] = np.ascontiguousarray(data.T)
        sample["audio_s"] = data.shape[0] / rate
    for member in ARRAY_MEMBERS:
        raw = members.get(member)
        name = member.removesuffix(".npy")
        sample[name] = None if raw is None else np.load(io.BytesIO(raw), allow_pickle=False)
    return sample


@dataclass(frozen=True)
class EpochOrder:
    """One epoch's global sample sequence: `shards` (shard ids in epoch order) and `starts`
    (len(shards) + 1 cumulative sample counts in that order; starts[-1] = total)."""

    shards: np.ndarray
    starts: np.ndarray

    @property
    def total(self) -> int:
        return int(self.starts[-1])

    def locate(self, position: int) -> tuple[int, int]:
        """Global position -> (shard id, sample index in the shard), O(log shards)."""
        if not 0 <= position < self.total:
            raise IndexError(f"position {position} outside the epoch's {self.total} samples")
        # side="right" steps over empty shards (equal consecutive starts).
        j = int(np.searchsorted(self.starts, position, side="right")) - 1
        return int(self.shards[j]), int(position - self.starts[j])


class ShardIndex:
    """A stage directory's shards: counts from index.json, samples by (shard, index).

    `stage_dir` is a local path or a URI; `storage_options` go to the filesystem (see
    `minmo.io.fs.open_filesystem`). Reads are positional (`read_at`) on a handle opened
    by the process that reads: DataLoader workers forked from a parent that already read never
    share a handle or a filesystem client (an object-store client does not survive a fork
    safely). Only index.json is read at load; each shard's .idx is read on first use and
    checked against its count.
    """

    def __init__(
        self,
        stage_dir: Pathlike,
        names: list[str],
        counts: np.ndarray,
        meta: list[dict],
        storage_options: dict[str, Any] | None = None,
    ):
        self.stage_dir = os.fspath(stage_dir)
        self.storage_options = dict(storage_options or {})
        self.names = names
        self.counts = counts
        self.meta = meta
        self._offsets: OrderedDict[int, np.ndarray] = OrderedDict()
        self._fs: tuple[int, pafs.FileSystem, str] | None = None  # (pid, filesystem, root)
        self._file: tuple[int, int, Any] | None = None  # (pid, shard, RandomAccessFile)

    @classmethod
    def load(cls, stage_dir: Pathlike, storage_options: dict[str, Any] | None = None) -> ShardIndex:
        uri = os.fspath(stage_dir)
        fs, root = open_filesystem(uri, **(storage_options or {}))
        index = read_index(fs, root)
        shards = index.get("shards")
        if not isinstance(shards, list) or not shards:
            raise ValueError(f"{index_path(uri)}: no shards listed")
        counts = np.fromiter((int(s["samples"]) for s in shards), dtype=np.int64, count=len(shards))
        out = cls(uri, [str(s["name"]) for s in shards], counts, shards, storage_options)
        out._fs = (os.getpid(), fs, root)
        return out

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """This process's filesystem and the stage directory's path on it."""
        pid = os.getpid()
        if self._fs is None or self._fs[0] != pid:
            fs, root = open_filesystem(self.stage_dir, **self.storage_options)
            if self._fs is not None and not is_local(fs):
                # open_filesystem's cache came through the fork with the parent's client; a
                # pickled copy is a new client with the same settings.
                fs = pickle.loads(pickle.dumps(fs))
            self._fs = (pid, fs, root)
        return self._fs[1], self._fs[2]

    def epoch_order(self, seed: int, epoch: int) -> EpochOrder:
        # A seed sequence, not seed + epoch: (seed=0, epoch=1) and (seed=1, epoch=0) must differ.
        perm = np.random.default_rng([seed, epoch]).permutation(len(self.names))
        starts = np.zeros(len(perm) + 1, dtype=np.int64)
        np.cumsum(self.counts[perm], out=starts[1:])
        return EpochOrder(perm, starts)

    def offsets(self, shard: int) -> np.ndarray:
        cached = self._offsets.get(shard)
        if cached is not None:
            self._offsets.move_to_end(shard)
            return cached
        fs, root = self.filesystem()
        offsets = read_offsets(fs, root, self.names[shard])
        if len(offsets) != self.counts[shard] + 1:
            raise ValueError(
                f"{offsets_path(self.stage_dir, self.names[shard])}: {len(offsets)} offsets, "
                f"index.json says {self.counts[shard]} samples (+1 sentinel); the shards and "
                "index.json are from different builds"
            )
        self._offsets[shard] = offsets
        if len(self._offsets) > _OFFSETS_CACHE:
            self._offsets.popitem(last=False)
        return offsets

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        pid = os.getpid()
        if self._file is None or self._file[:2] != (pid, shard):
            if self._file is not None and self._file[0] == pid:
                self._file[2].close()
            fs, root = self.filesystem()
            self._file = (pid, shard, fs.open_input_file(shard_path(root, self.names[shard])))
        data = self._file[2].read_at(size, offset)
        if len(data) != size:
            raise OSError(f"{self.names[shard]}: short read at byte {offset}")
        return data

    def read_members(self, shard: int, k: int) -> tuple[str, dict[str, bytes]]:
        """Sample k of a shard as (key, {extension: bytes}), webdataset's naming."""
        offsets = self.offsets(shard)
        if not 0 <= k < self.counts[shard]:
            raise IndexError(f"{self.names[shard]} has {self.counts[shard]} samples, asked {k}")
        start, end = int(offsets[k]), int(offsets[k + 1])
        # The span is exactly this sample's members (the last one also holds the end-of-archive
        # zero blocks, where tarfile stops); tarfile handles any PAX/GNU long-name headers.
        key: str | None = None
        members: dict[str, bytes] = {}
        span = io.BytesIO(self._read(shard, start, end - start))
        for member in iter_members(span, stream=False):
            if not member.is_file:
                continue
            if member.ext is None:
                raise ValueError(f"{self.names[shard]}: member {member.name!r} has no extension")
            if key is None:
                key = member.key
            elif member.key != key:
                raise ValueError(
                    f"{self.names[shard]} sample {k}: members of {key!r} and "
                    f"{member.key!r} in one .idx span; the .idx does not match the tar"
                )
            members[member.ext] = member.data or b""
        if key is None:
            raise ValueError(f"{self.names[shard]} sample {k}: no members at byte {start}")
        return key, members

    def read(self, shard: int, k: int) -> dict[str, Any]:
        """Sample k of a shard, decoded (see `decode_sample`)."""
        key, members = self.read_members(shard, k)
        try:
            return decode_sample(key, members)
        except Exception as exc:
            raise ValueError(f"{self.names[shard]} sample {k} ({key}): {exc}") from exc

    def __getstate__(self) -> dict[str, Any]:
        # Workers open their own filesystem and handles and fill their own caches.
        return {**self.__dict__, "_offsets": OrderedDict(), "_fs": None, "_file": None}

    def urls(self) -> list[str]:
        """The shards' URIs in index order (local: absolute paths)."""
        fs, root = self.filesystem()
        return [to_uri(fs, shard_path(root, name)) for name in self.names]


def training_dir(stage_dir: Pathlike, storage_options: dict[str, Any] | None = None) -> str:
    """The directory a trainer reads for `stage_dir`: the directory itself when it holds an
    index.json, else its `train/` split when the stage was written with held-out splits (so
    that a spec naming the stage trains on train only, never on its valid or test samples)."""
    uri = os.fspath(stage_dir)
    fs, root = open_filesystem(uri, **(storage_options or {}))
    if fs.get_file_info(index_path(root)).type == pafs.FileType.File:
        return uri
    train = split_dir(root, SPLITS[0])
    if fs.get_file_info(index_path(train)).type == pafs.FileType.File:
        return split_dir(uri, SPLITS[0])
    return uri  # not a stage directory: ShardIndex.load says so


def rank_slice(total: int, rank: int, world: int) -> tuple[int, int]:
    """(first global position, length) of rank's contiguous slice of an epoch of `total`."""
    per_rank = total // world
    return rank * per_rank, per_rank


class RankStream(IterableDataset):
    """Rank `rank`'s samples of one epoch, from position `start` of its slice to its end.

    Each item is a decoded sample plus `position` (its index in the rank's slice). In DataLoader
    worker i of n it yields positions start+i, start+i+n, ...: the DataLoader asks workers in
    turn and returns results in that order (`in_order=True`), so the stream arrives in exact
    sequence order whatever the number of workers.
    """

    def __init__(
        self,
        index: ShardIndex | Pathlike,
        rank: int,
        world: int,
        seed: int,
        epoch: int,
        start: int = 0,
    ) -> None:
        super().__init__()
        self.index = index if isinstance(index, ShardIndex) else ShardIndex.load(index)
        self.order = self.index.epoch_order(seed, epoch)
        self.first, self.length = rank_slice(self.order.total, rank, world)
        if not 0 <= start <= self.length:
            raise ValueError(f"start {start} outside this rank's {self.length} samples")
        self.start = start

    def locate(self, position: int) -> tuple[int, int]:
        """Position in this rank's slice -> (shard id, sample index in the shard)."""
        if not 0 <= position < self.length:
            raise IndexError(f"position {position} outside this rank's {self.length} samples")
        return self.order.locate(self.first + position)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        wid, n = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for position in range(self.start + wid, self.length, n):
            sample = self.index.read(*self.locate(position))
            sample["position"] = position
            yield sample


@dataclass(frozen=True)
class Budget:
    """Per-batch limits. Audio and tokens are counted padded, as the collator pads them: batch
    size x the longest (audio seconds; text tokens + speech tokens), which is what sets memory.
    None = no limit."""

    max_samples: int = 8
    max_audio_s: Seconds | None = None
    max_tokens: int | None = None
    packed: bool = False
    """Tokens counted as their sum, not batch size x the longest: the LLM runs the batch packed
    (minmo/model/packing.py), so padding to the longest no longer sets its memory. Audio stays
    counted padded: the voice encoder still runs one clip per row."""

    def __post_init__(self) -> None:
        if self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {self.max_samples}")
        if self.max_audio_s is not None and self.max_audio_s <= 0:
            raise ValueError(f"max_audio_s must be > 0 or None, got {self.max_audio_s}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {self.max_tokens}")


def sample_cost(sample: dict[str, Any]) -> tuple[Seconds, int, int]:
    """(audio seconds, text tokens, speech tokens) of one decoded sample."""
    audio_s = sample.get("audio_s")
    if audio_s is None:
        audio = sample.get("audio")
        audio_s = 0.0 if audio is None else np.shape(audio)[-1] / SAMPLE_RATE_HZ
    text, speech = sample.get("text_tokens"), sample.get("speech_tokens")
    return (
        float(audio_s),
        0 if text is None else int(np.size(text)),
        0 if speech is None else int(np.size(speech)),
    )


def padded_cost(costs: list[tuple[Seconds, int, int]], packed: bool = False) -> tuple[Seconds, int]:
    """(padded audio seconds, padded text + speech tokens) of a batch of sample costs; with
    `packed`, the tokens' sum (see `Budget.packed`)."""
    n = len(costs)
    if not n:
        return 0.0, 0
    if packed:
        tokens = sum(c[1] + c[2] for c in costs)
    else:
        tokens = n * max(c[1] for c in costs) + n * max(c[2] for c in costs)
    return n * max(c[0] for c in costs), tokens


class Batcher:
    """Greedy dynamic batching of an ordered sample stream; yields (samples, position_after).

    A batch grows while the next sample keeps it within `budget`; a sample over budget on its
    own becomes a batch of its own (never dropped). The sample that did not fit is held back
    for the next batch, so `position_after` = `start` + samples in the batches yielded so far:
    exactly where a resumed stream must start. The stream's last batch is yielded even if small.
    """

    def __init__(self, samples: Iterable[dict[str, Any]], budget: Budget, start: int = 0):
        self.samples = samples
        self.budget = budget
        self.start = start

    def _fits(self, costs: list[tuple[Seconds, int, int]]) -> bool:
        b = self.budget
        audio_s, tokens = padded_cost(costs, b.packed)
        return (
            len(costs) <= b.max_samples
            and (b.max_audio_s is None or audio_s <= b.max_audio_s)
            and (b.max_tokens is None or tokens <= b.max_tokens)
        )

    def __iter__(self) -> Iterator[tuple[list[dict[str, Any]], int]]:
        position = self.start
        batch: list[dict[str, Any]] = []
        costs: list[tuple[Seconds, int, int]] = []
        for sample in self.samples:
            expected = position + len(batch)
            if sample.get("position", expected) != expected:
                # Cheap guard on the one property resume depends on: sequence order.
                raise RuntimeError(
                    f"sample {sample.get('key')} arrived at position {expected}, "
                    f"it belongs at {sample['position']}"
                )
            cost = sample_cost(sample)
            if batch and not self._fits([*costs, cost]):
                position += len(batch)
                yield batch, position
                batch, costs = [], []
            batch.append(sample)
            costs.append(cost)
        if batch:
            yield batch, position + len(batch)


class StageLoader:
    """This rank's batches of one stage, epoch after epoch, resumable exactly.

    `next_batch()` -> a collated `Batch` (or the list of decoded samples with `collate=False`),
    or None once this rank's epoch is exhausted; `next_epoch()` moves on (see the module
    docstring for the loop's lockstep contract). Iterating the loader runs epochs forever.

    `stage_dir` is a local path or a URI (`s3://...`), opened with `storage_options`.
    Workers: with `num_workers` > 0 a DataLoader reads and decodes in worker processes; a fresh
    DataLoader (and workers) is started per epoch and per resume, since a running worker
    cannot be told to jump to another position. That costs a worker start-up per epoch.
    """

    def __init__(
        self,
        stage_dir: Pathlike,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        num_workers: int = 0,
        max_samples: int = 8,
        max_audio_s: Seconds | None = None,
        max_tokens: int | None = None,
        packed: bool = False,
        collate: bool = True,
        prefetch_factor: int = 2,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} of world {world}: need 0 <= rank < world")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.stage_dir = os.fspath(stage_dir)
        self.rank, self.world, self.seed = rank, world, seed
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.budget = Budget(max_samples, max_audio_s, max_tokens, packed)
        self.collate = collate
        self.index = ShardIndex.load(stage_dir, storage_options)
        total = self.index.total
        if total < world:
            raise ValueError(
                f"{self.stage_dir}: {total} samples cannot give each of {world} ranks one; "
                "use fewer ranks or more data"
            )
        self.samples_per_epoch = total // world
        self.dropped_per_epoch = total - self.samples_per_epoch * world
        self.epoch = 0
        self.position = 0
        self._batches: Iterator[tuple[list[dict[str, Any]], int]] | None = None

    # -- iteration -------------------------------------------------------------------------

    @property
    def epoch_done(self) -> bool:
        """Every sample of this rank's epoch is in a batch already handed out."""
        return self.position >= self.samples_per_epoch

    def _open(self) -> Iterator[tuple[list[dict[str, Any]], int]]:
        stream = RankStream(self.index, self.rank, self.world, self.seed, self.epoch, self.position)
        items: Iterable[dict[str, Any]] = stream
        if self.num_workers > 0:
            items = DataLoader(
                stream,
                batch_size=None,
                num_workers=self.num_workers,
                collate_fn=_as_is,
                prefetch_factor=self.prefetch_factor,
                in_order=True,  # the exact-order guarantee rests on this
            )
        return iter(Batcher(items, self.budget, start=self.position))

    def next_batch(self) -> Batch | list[dict[str, Any]] | None:
        """This rank's next batch, or None when its epoch is exhausted (until `next_epoch`)."""
        if self.epoch_done:
            self._batches = None  # lets the epoch's DataLoader workers exit
            return None
        if self._batches is None:
            self._batches = self._open()
        try:
            samples, self.position = next(self._batches)
        except StopIteration:
            raise RuntimeError(
                f"rank {self.rank}'s stream ended at position {self.position} of "
                f"{self.samples_per_epoch} (epoch {self.epoch})"
            ) from None
        return collate(samples) if self.collate else samples

    def next_epoch(self) -> None:
        """Start the next epoch at its first sample, dropping what is left of this one."""
        self._batches = None
        self.epoch += 1
        self.position = 0

    def set_num_workers(self, num_workers: int) -> None:
        """Read with `num_workers` DataLoader workers from the next batch on: the stream
        reopens at the current position, as on resume, so the batches are the same ones
        (`num_workers: auto` calls this once it has measured the step)."""
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if num_workers != self.num_workers:
            self.num_workers = num_workers
            self._batches = None

    def rewind(self) -> None:
        """Back to the first batch of epoch 0: a validation pass reads the same batches each
        time, so that its losses compare from one pass to the next."""
        self._batches = None
        self.epoch = 0
        self.position = 0

    def __iter__(self) -> Iterator[Batch | list[dict[str, Any]]]:
        while True:
            batch = self.next_batch()
            if batch is None:
                self.next_epoch()
                continue
            yield batch

    def close(self) -> None:
        self._batches = None

    # -- resume ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "world": self.world,
            "rank": self.rank,
            "total_samples": self.index.total,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue exactly after the last batch handed out when `state` was taken.

        Refuses a different world size: positions index a slice of total // world samples, which
        means nothing under another world size. To change it, start a fresh epoch:
        `load_state_dict({**state, "world": W, "epoch": state["epoch"] + 1, "position": 0})`
        (the rest of the interrupted epoch is then not seen).
        """
        if int(state["world"]) != self.world:
            raise ValueError(
                f"data state is from world size {state['world']}, this run has {self.world}: "
                "a position only means something for the world size it was taken under; to "
                'change it, resume at the next epoch: {**state, "world": '
                f'{self.world}, "epoch": {int(state["epoch"]) + 1}, "position": 0}}'
            )
        if int(state["seed"]) != self.seed:
            raise ValueError(
                f"data state is from seed {state['seed']}, this run has seed {self.seed}; "
                "the epoch order depends on it: use the seed of the run being resumed"
            )
        if "rank" in state and int(state["rank"]) != self.rank:
            raise ValueError(f"data state of rank {state['rank']} loaded on rank {self.rank}")
        if "total_samples" in state and int(state["total_samples"]) != self.index.total:
            raise ValueError(
                f"data state counts {state['total_samples']} samples, {self.stage_dir} has "
                f"{self.index.total}: the shards were rebuilt; resume from a fresh epoch "
                "(epoch + 1, position 0) or point the run at the original shards"
            )
        position = int(state["position"])
        if not 0 <= position <= self.samples_per_epoch:
            raise ValueError(f"position {position} outside 0..{self.samples_per_epoch}")
        self._batches = None
        self.epoch = int(state["epoch"])
        self.position = position

    def steps_per_epoch_estimate(self) -> int:
        """Batches per epoch on this rank from index.json means (no decoding): a progress and
        scheduling guide, not a count. Padding to the longest sample makes real batches smaller
        than the mean-based size, so the real number is usually somewhat higher."""
        shards = self.index.meta
        total = max(1, self.index.total)
        mean_audio = sum(float(s.get("audio_s", 0.0)) for s in shards) / total
        mean_tokens = (
            sum(int(s.get("text_tokens", 0)) + int(s.get("speech_tokens", 0)) for s in shards)
            / total
        )
        per_batch = float(self.budget.max_samples)
        if self.budget.max_audio_s is not None and mean_audio > 0:
            per_batch = min(per_batch, self.budget.max_audio_s / mean_audio)
        if self.budget.max_tokens is not None and mean_tokens > 0:
            per_batch = min(per_batch, self.budget.max_tokens / mean_tokens)
        return math.ceil(self.samples_per_epoch / max(1, math.floor(per_batch)))


# Storage options that are credentials: never put on a command line (`ps` shows it to every
# user of the machine); the streaming process takes them from the environment instead.
_SECRET_OPTIONS = ("access_key", "secret_key", "session_token")


def webdataset_urls(
    stage_dir: Pathlike, storage_options: dict[str, Any] | None = None
) -> list[str]:
    """The stage's shards as URLs `webdataset.WebDataset(urls)` opens as they are.

    Local shards: their absolute paths. Object-store shards (webdataset 1.0 has no s3:// or
    pyarrow handler; its gs:// one needs gsutil): `pipe:` URLs that run `python -m
    minmo.train.cat URI`, which streams the object to stdout through pyarrow.fs, so the
    endpoint comes from `storage_options` or AWS_ENDPOINT_URL as everywhere else. Credentials
    are not written into the URLs: give them through the environment (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, ...), which the streaming process inherits.
    """
    options = dict(storage_options or {})
    if secret := sorted(set(options) & set(_SECRET_OPTIONS)):
        raise ValueError(
            f"webdataset_urls: storage options {secret} would be written into a command line; "
            "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN instead"
        )
    index = ShardIndex.load(stage_dir, options)
    fs, _ = index.filesystem()
    if is_local(fs):
        return index.urls()
    command = [sys.executable, "-m", "minmo.train.cat"]
    if options:
        command += ["--storage-options", json.dumps(options, sort_keys=True)]
    return [f"pipe:{shlex.join([*command, url])}" for url in index.urls()]
