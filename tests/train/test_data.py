"""Trainer data: .idx reads vs webdataset, rank slices, worker order, exact resume, O(1) resume
cost, dynamic batching budgets; the same on moto S3; webdataset and Ray Data reading the stage
directory as it is. Tiny synthetic shards; CPU only."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pytest
import soundfile as sf
import webdataset as wds
from torch.utils.data import DataLoader

from minmo.audio.encode import flac_bytes
from minmo.model.batch import Batch
from minmo.train.data import (
    Batcher,
    Budget,
    EpochOrder,
    RankStream,
    ShardIndex,
    StageLoader,
    padded_cost,
    sample_cost,
    webdataset_urls,
)
from pipelines.shards.writer import write_stage_shards
from schemas.shards import (
    INDEX_VERSION,
    OFFSETS_DTYPE,
    index_path,
    offsets_path,
    shard_name,
    temp_name,
)
from tests.objectstore import upload_tree

SIZES = (7, 3, 11)  # uneven, and fewer shards than 3 ranks x 2 workers


def make_samples(n: int, prefix: str, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        frames = int(rng.integers(400, 8000))  # 25 ms .. 0.5 s
        channels = 2 if i % 5 == 4 else 1  # some two-channel (stage-4 like) samples
        audio = (rng.standard_normal((channels, frames)) * 0.1).astype(np.float32)
        sample = {
            "__key__": f"{prefix}_{i:03d}",
            "json": {"task": "asr", "duration_s": frames / 16000, "target_start": 1, "i": i},
            "flac": flac_bytes(audio),
            "text_tokens.npy": rng.integers(0, 1000, size=int(rng.integers(3, 40)), dtype=np.int64),
            "labels.npy": rng.integers(0, 4, size=6, dtype=np.int8),
            "assistant_activity.npy": rng.integers(0, 2, size=6, dtype=np.int8),
        }
        if i % 3:
            sample["speech_tokens.npy"] = rng.integers(
                0, 6561, size=int(rng.integers(1, 30)), dtype=np.int32
            )
        out.append(sample)
    return out


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One stage directory with shards of SIZES samples, each cut by write_stage_shards."""
    root = tmp_path_factory.mktemp("stage")
    out = root / "s1"
    Path(index_path(str(out))).parent.mkdir(parents=True)
    shards = []
    for i, n in enumerate(SIZES):
        part = root / f"part{i}"
        index = write_stage_shards(make_samples(n, f"p{i}", seed=i), part, "s1", max_samples=n)
        assert len(index["shards"]) == 1
        name = shard_name("s1", i)
        shutil.move(part / shard_name("s1", 0), out / name)
        shutil.move(offsets_path(str(part), shard_name("s1", 0)), offsets_path(str(out), name))
        shards.append({**index["shards"][0], "name": name})
    Path(index_path(str(out))).write_text(
        json.dumps({"version": INDEX_VERSION, "stage": "s1", "shards": shards})
    )
    return out


def keys(items: Any) -> list[str]:
    return [s["key"] for s in items]


def epoch_sequence(index: ShardIndex, seed: int, epoch: int) -> list[str]:
    """The epoch's global sequence by the definition: permuted shards, each in file order."""
    order = index.epoch_order(seed, epoch)
    return [index.read_members(int(s), k)[0] for s in order.shards for k in range(index.counts[s])]


# 1 --------------------------------------------------------------------------------------------


def test_idx_reads_equal_webdataset(stage_dir: Path) -> None:
    index = ShardIndex.load(stage_dir)
    assert list(index.counts) == list(SIZES)
    for s, name in enumerate(index.names):
        expected = list(wds.WebDataset(str(stage_dir / name), shardshuffle=False))
        assert len(expected) == index.counts[s]
        for k in reversed(range(len(expected))):  # out of order: every read is a fresh seek
            ref = expected[k]
            key, members = index.read_members(s, k)
            assert key == ref["__key__"]
            assert members == {m: v for m, v in ref.items() if not m.startswith("__")}
            sample = index.read(s, k)
            assert sample["json"] == json.loads(ref["json"])
            audio, rate = sf.read(io.BytesIO(ref["flac"]), dtype="float32", always_2d=True)
            assert rate == 16000 and sample["audio"].dtype == np.float32
            np.testing.assert_array_equal(sample["audio"], audio.T)
            assert sample["audio_s"] == pytest.approx(audio.shape[0] / 16000)
            for m in ("text_tokens", "speech_tokens", "labels", "assistant_activity"):
                if f"{m}.npy" in ref:
                    np.testing.assert_array_equal(sample[m], np.load(io.BytesIO(ref[f"{m}.npy"])))
                else:
                    assert sample[m] is None


def test_idx_mismatch_is_an_error(stage_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "s1"
    shutil.copytree(stage_dir, copy)
    idx = offsets_path(str(copy), shard_name("s1", 0))
    offsets = np.fromfile(idx, dtype=OFFSETS_DTYPE)
    offsets[:-1].tofile(idx)
    with pytest.raises(ValueError, match="different builds"):
        ShardIndex.load(copy).read(0, 0)


# 2 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3])
def test_rank_slices(stage_dir: Path, world: int) -> None:
    index = ShardIndex.load(stage_dir)
    total = sum(SIZES)
    orders = []
    for epoch in range(4):
        sequence = epoch_sequence(index, seed=5, epoch=epoch)
        assert sorted(sequence) == sorted(epoch_sequence(index, seed=5, epoch=0))
        per_rank = [keys(RankStream(index, r, world, 5, epoch)) for r in range(world)]
        assert {len(p) for p in per_rank} == {total // world}  # nobody starves
        union = [k for p in per_rank for k in p]
        assert len(set(union)) == len(union)  # disjoint
        assert union == sequence[: len(union)]  # contiguous slices, in sequence order
        assert total - len(union) < world
        assert per_rank == [keys(RankStream(index, r, world, 5, epoch)) for r in range(world)]
        orders.append(union)
    assert len({tuple(o) for o in orders}) > 1  # epochs reshuffle the shard order


def test_rank_stream_start_and_positions(stage_dir: Path) -> None:
    full = list(RankStream(stage_dir, 1, 2, seed=3, epoch=2))
    assert [s["position"] for s in full] == list(range(len(full)))
    assert keys(RankStream(stage_dir, 1, 2, seed=3, epoch=2, start=4)) == keys(full[4:])


def test_epoch_order_locate_matches_scan() -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, size=40)  # includes empty shards
    index = ShardIndex(Path("."), [f"x{i}" for i in range(40)], counts, [])
    order = index.epoch_order(seed=1, epoch=3)
    scan = [(int(s), k) for s in order.shards for k in range(counts[s])]
    assert [order.locate(g) for g in range(order.total)] == scan
    with pytest.raises(IndexError):
        order.locate(order.total)


# 3 --------------------------------------------------------------------------------------------


def test_workers_keep_sequence_order(stage_dir: Path) -> None:
    # 3 ranks x 2 workers over 3 shards; rank 2, resumed mid-slice.
    stream = RankStream(stage_dir, 2, 3, seed=0, epoch=1, start=1)
    loader = DataLoader(stream, batch_size=None, num_workers=2, collate_fn=lambda x: x)
    got = list(loader)
    assert keys(got) == keys(stream) and [s["position"] for s in got] == list(range(1, 7))

    def batches(workers: int) -> list[tuple[list[str], int]]:
        loader = StageLoader(
            stage_dir, 1, 2, seed=0, num_workers=workers, max_samples=3, collate=False
        )
        out = []
        for _, batch in zip(range(8), loader, strict=False):  # crosses an epoch boundary
            out.append((keys(batch), loader.state_dict()["position"]))
        return out

    assert batches(2) == batches(0)


# 4 --------------------------------------------------------------------------------------------


def _loader(stage_dir: Path, **kw: Any) -> StageLoader:
    args: dict[str, Any] = {"rank": 0, "world": 2, "seed": 7, "max_samples": 3, "max_tokens": 60}
    return StageLoader(stage_dir, **{**args, "collate": False, **kw})


def test_exact_resume(stage_dir: Path) -> None:
    reference = _loader(stage_dir)
    run: list[tuple[list[str], dict[str, int]]] = []
    for _, batch in zip(range(20), reference, strict=False):
        run.append((keys(batch), reference.state_dict()))
    epochs = [state["epoch"] for _, state in run]
    assert epochs[0] == 0 and epochs[-1] >= 2  # several epoch boundaries in the run
    per_rank = reference.samples_per_epoch
    # A cut at every batch, including right after an epoch's last batch (position == per_rank).
    assert any(state["position"] == per_rank for _, state in run)
    for cut in range(len(run) - 1):
        resumed = _loader(stage_dir)
        resumed.load_state_dict(run[cut][1])
        rest = [
            (keys(batch), resumed.state_dict())
            for _, batch in zip(range(len(run) - cut - 1), resumed, strict=False)
        ]
        assert rest == run[cut + 1 :], f"resume after batch {cut}"


def test_resume_with_workers_and_collate(stage_dir: Path) -> None:
    reference = _loader(stage_dir, collate=True)
    batches = [b for _, b in zip(range(6), reference, strict=False)]
    first = _loader(stage_dir, collate=True)
    for _ in range(3):
        first.next_batch()
    resumed = _loader(stage_dir, collate=True, num_workers=2)
    resumed.load_state_dict(first.state_dict())
    for expected in batches[3:]:
        got = resumed.next_batch()
        assert isinstance(got, Batch)
        assert got.waves is not None and got.wave_lengths is not None
        for name in (
            "input_ids",
            "input_lengths",
            "waves",
            "wave_lengths",
            "labels",
            "assistant_activity",
        ):
            assert bool((getattr(got, name) == getattr(expected, name)).all()), name


def test_lockstep_contract(stage_dir: Path) -> None:
    """Ranks with different batch counts move to the next epoch together (as loop.py does)."""
    ranks = [_loader(stage_dir, rank=r, max_tokens=None, max_audio_s=0.6) for r in range(2)]
    seen: list[list[str]] = [[], []]
    steps = 0
    while all(r.epoch == 0 for r in ranks):
        batches = [r.next_batch() for r in ranks]
        if all(b is not None for b in batches):
            steps += 1
            for s, b in zip(seen, batches, strict=True):
                s.extend(keys(b))
            continue
        for r, b in zip(ranks, batches, strict=True):
            # epoch_done turns True with the last batch handed out; None only comes after it.
            assert b is not None or r.epoch_done
            if b is None:
                assert r.next_batch() is None  # stays None until next_epoch
            r.next_epoch()
    counts = []
    for r in range(2):
        alone = _loader(stage_dir, rank=r, max_tokens=None, max_audio_s=0.6)
        counts.append(sum(1 for _ in iter(alone.next_batch, None)))
    assert counts[0] != counts[1] and steps == min(counts)  # the budget splits ranks unevenly
    assert all(r.state_dict()["position"] == 0 for r in ranks)
    assert not set(seen[0]) & set(seen[1])


def test_refuses_other_world_seed_rank(stage_dir: Path) -> None:
    state = _loader(stage_dir).state_dict()
    with pytest.raises(ValueError, match="world size 2, this run has 3"):
        _loader(stage_dir, world=3).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        _loader(stage_dir, seed=8).load_state_dict(state)
    with pytest.raises(ValueError, match="rank 0 loaded on rank 1"):
        _loader(stage_dir, rank=1).load_state_dict(state)
    moved = _loader(stage_dir, world=3)
    moved.load_state_dict({**state, "world": 3, "epoch": 1, "position": 0})
    assert moved.state_dict()["epoch"] == 1


def test_steps_per_epoch_estimate(stage_dir: Path) -> None:
    loader = _loader(stage_dir, max_tokens=None)
    actual = 0
    while loader.next_batch() is not None:
        actual += 1
    assert loader.steps_per_epoch_estimate() == actual == -(-loader.samples_per_epoch // 3)
    assert loader.dropped_per_epoch == sum(SIZES) % 2


# 5 --------------------------------------------------------------------------------------------


def test_resume_cost_does_not_depend_on_corpus_size(tmp_path: Path) -> None:
    shards, per_shard, world = 100_000, 2_000, 8
    index = {
        "version": INDEX_VERSION,
        "shards": [{"name": shard_name("s", i), "samples": per_shard} for i in range(shards)],
    }
    Path(index_path(str(tmp_path))).parent.mkdir()
    Path(index_path(str(tmp_path))).write_text(json.dumps(index))
    big = ShardIndex.load(tmp_path)  # no tars: nothing but index.json is read here
    t0 = time.perf_counter()
    stream = RankStream(big, rank=world - 1, world=world, seed=0, epoch=3, start=0)
    position = stream.length - 1  # the last sample of the last rank, deep in the epoch
    shard, k = stream.locate(position)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0  # ~ a few ms: one permutation + one binary search
    g = (world - 1) * stream.length + position
    assert (shard, k) == (int(stream.order.shards[g // per_shard]), g % per_shard)
    assert isinstance(stream.order, EpochOrder)


# 6 --------------------------------------------------------------------------------------------


def _fake(i: int, audio_s: float, text: int, speech: int) -> dict[str, Any]:
    return {
        "key": f"k{i}",
        "position": i,
        "audio_s": audio_s,
        "text_tokens": np.zeros(text, dtype=np.int64),
        "speech_tokens": np.zeros(speech, dtype=np.int64) if speech else None,
    }


def test_dynamic_batching_budgets() -> None:
    rng = np.random.default_rng(0)
    samples = [
        _fake(i, float(rng.uniform(0.5, 8)), int(rng.integers(5, 60)), int(rng.integers(0, 80)))
        for i in range(300)
    ]
    samples[17] = _fake(17, 50.0, 10, 0)  # over the audio budget on its own
    samples[90] = _fake(90, 1.0, 500, 10)  # over the token budget on its own
    budget = Budget(max_samples=6, max_audio_s=20.0, max_tokens=400)
    batches = list(Batcher(iter(samples), budget))
    flat = [s for b, _ in batches for s in b]
    assert keys(flat) == keys(samples)  # nothing dropped, order kept
    position = 0
    for batch, after in batches:
        position += len(batch)
        assert after == position
        audio_s, tokens = padded_cost([sample_cost(s) for s in batch])
        if len(batch) > 1:
            assert len(batch) <= 6 and audio_s <= 20.0 and tokens <= 400
        if after < len(samples):  # greedy: the next sample would have broken the budget
            grown = padded_cost([sample_cost(s) for s in [*batch, samples[after]]])
            assert len(batch) == 6 or grown[0] > 20.0 or grown[1] > 400
    assert (["k17"], 18) in [(keys(b), a) for b, a in batches]
    assert (["k90"], 91) in [(keys(b), a) for b, a in batches]


def test_packed_budget_counts_the_tokens_summed() -> None:
    """`packed`: max_tokens bounds the batch's tokens end to end (the LLM rows hold them so),
    so a stream of mixed lengths makes fuller, fewer batches than padded counting does."""
    rng = np.random.default_rng(1)
    samples = [
        _fake(i, 1.0, int(rng.integers(5, 120)), int(rng.integers(0, 40))) for i in range(200)
    ]
    samples[50] = _fake(50, 1.0, 500, 0)  # over the budget on its own: a batch of its own
    padded = list(Batcher(iter(samples), Budget(max_samples=64, max_tokens=400)))
    packed = list(Batcher(iter(samples), Budget(max_samples=64, max_tokens=400, packed=True)))
    assert keys([s for b, _ in packed for s in b]) == keys(samples)
    for batch, after in packed:
        _, tokens = padded_cost([sample_cost(s) for s in batch], packed=True)
        assert tokens == sum(sum(sample_cost(s)[1:]) for s in batch)
        assert tokens <= 400 or len(batch) == 1
        if after < len(samples):  # greedy: the next sample would have gone over
            assert tokens + sum(sample_cost(samples[after])[1:]) > 400
    assert (["k50"], 51) in [(keys(b), a) for b, a in packed]
    assert len(packed) < 0.7 * len(padded)  # 50 vs 81 here


def test_batcher_starts_mid_stream_and_checks_order() -> None:
    samples = [_fake(i, 1.0, 5, 0) for i in range(10)]
    got = list(Batcher(iter(samples[4:]), Budget(max_samples=4), start=4))
    assert [(keys(b), a) for b, a in got] == [(["k4", "k5", "k6", "k7"], 8), (["k8", "k9"], 10)]
    with pytest.raises(RuntimeError, match="belongs at 5"):
        list(Batcher(iter([samples[0], samples[5]]), Budget(max_samples=4)))


# 7 --------------------------------------------------------------------------------------------
# Object storage: the same stage uploaded to moto's S3 server reads exactly as on local disk.


def _all_members(index: ShardIndex) -> list[tuple[str, dict[str, bytes]]]:
    return [
        index.read_members(s, k) for s in range(len(index.names)) for k in range(index.counts[s])
    ]


@pytest.mark.slow
def test_s3_reads_equal_local(stage_dir: Path, moto_s3_options: dict) -> None:
    uri = upload_tree(stage_dir, moto_s3_options, prefix="build/shards/s1")
    local, remote = ShardIndex.load(stage_dir), ShardIndex.load(uri, moto_s3_options)
    assert remote.names == local.names and list(remote.counts) == list(local.counts)
    assert _all_members(remote) == _all_members(local)
    assert remote.urls() == [f"{uri}/{name}" for name in local.names]
    # A copy for a worker process opens its own client and handles, then reads the same.
    clone = pickle.loads(pickle.dumps(remote))
    assert clone._fs is None and clone._file is None
    assert clone.read_members(2, 5) == local.read_members(2, 5)


@pytest.mark.slow
def test_s3_resume_with_workers(stage_dir: Path, moto_s3_options: dict) -> None:
    uri = upload_tree(stage_dir, moto_s3_options, prefix="build/shards/s1")
    reference = _loader(stage_dir)
    run = [(keys(b), reference.state_dict()) for _, b in zip(range(8), reference, strict=False)]
    first = _loader(uri, storage_options=moto_s3_options)
    for _ in range(3):
        first.next_batch()
    assert first.state_dict() == run[2][1]
    # forked DataLoader workers read the bucket through their own clients
    resumed = _loader(uri, storage_options=moto_s3_options, num_workers=2)
    resumed.load_state_dict(first.state_dict())
    rest = [(keys(b), resumed.state_dict()) for _, b in zip(range(5), resumed, strict=False)]
    assert rest == run[3:]


def test_missing_and_old_layout_index_are_named(stage_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="_index/index.json not found"):
        ShardIndex.load(tmp_path)
    old = tmp_path / "old"
    shutil.copytree(stage_dir, old)
    shutil.move(index_path(str(old)), old / "index.json")
    with pytest.raises(FileNotFoundError, match="version-1 layout"):
        ShardIndex.load(old)


# 8 --------------------------------------------------------------------------------------------
# Other readers of the same directory, with no arguments beyond where it is.


def _webdataset_samples(urls: list[str]) -> list[tuple[str, dict[str, bytes]]]:
    return [
        (s["__key__"], {m: v for m, v in s.items() if not m.startswith("__")})
        for s in wds.WebDataset(urls, shardshuffle=False)
    ]


def test_webdataset_urls_local(stage_dir: Path) -> None:
    urls = webdataset_urls(stage_dir)
    assert urls == [str(stage_dir / name) for name in ShardIndex.load(stage_dir).names]
    assert _webdataset_samples(urls) == _all_members(ShardIndex.load(stage_dir))


@pytest.mark.slow
def test_webdataset_urls_s3(
    stage_dir: Path, moto_s3_options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = upload_tree(stage_dir, moto_s3_options, prefix="build/shards/s1")
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY"):
        webdataset_urls(uri, moto_s3_options)
    # As a user would run it: the endpoint and credentials in the environment, no options.
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3_options["endpoint_override"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3_options["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3_options["secret_key"])
    urls = webdataset_urls(uri)
    assert all(
        u.startswith("pipe:") and u.endswith(f"/{n}")
        for u, n in zip(urls, ShardIndex.load(stage_dir).names, strict=True)
    )
    assert _webdataset_samples(urls) == _all_members(ShardIndex.load(stage_dir))


def _ray_rows(ray: Any, where: str, **kw: Any) -> list[tuple[str, bytes]]:
    rows = ray.data.read_webdataset(where, decoder=None, **kw).take_all()
    return sorted((r["__key__"], r["text_tokens.npy"]) for r in rows)


@pytest.mark.slow
def test_ray_read_webdataset_reads_every_sample(
    stage_dir: Path,
    tmp_path: Path,
    moto_s3_options: dict,
    ray_local: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = sorted(
        (key, m["text_tokens.npy"]) for key, m in _all_members(ShardIndex.load(stage_dir))
    )
    copy = tmp_path / "s1"
    shutil.copytree(stage_dir, copy)
    (copy / temp_name(shard_name("s1", 3), pid=77)).write_bytes(b"a writer still at work")
    assert _ray_rows(ray_local, str(copy)) == expected
    uri = upload_tree(copy, moto_s3_options, prefix="build/shards/s1")
    s3 = pafs.S3FileSystem(**moto_s3_options)
    assert _ray_rows(ray_local, uri.removeprefix("s3://"), filesystem=s3) == expected
    # or just the URI, the endpoint and credentials in the standard variables
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3_options["endpoint_override"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3_options["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3_options["secret_key"])
    monkeypatch.setenv("AWS_REGION", moto_s3_options["region"])
    assert _ray_rows(ray_local, uri) == expected
