"""Stage shards: write, index, .idx offsets, determinism, webdataset read-back (verification:
test_verify.py)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from pipelines.shards.writer import write_stage_shards
from schemas.shards import index_path, offsets_path

N = 25


def _flac(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, (rng.standard_normal(1600) * 0.1).astype("float32"), 16000, format="FLAC")
    return buf.getvalue()


def make_samples(n: int = N, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        out.append(
            {
                "__key__": f"utt_{i:04d}",
                "json": {"task": "asr" if i % 2 else "s2tt", "duration_s": 0.1, "i": i},
                "flac": _flac(rng),
                "speech_tokens.npy": rng.integers(0, 6561, size=5 + i % 3, dtype=np.int32),
                "text_tokens.npy": rng.integers(0, 1000, size=3 + i % 4, dtype=np.int64),
                "labels.npy": rng.integers(0, 4, size=6, dtype=np.int8),
            }
        )
    return out


def _digests(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def stage(tmp_path: Path) -> tuple[Path, dict]:
    d = tmp_path / "s1"
    return d, write_stage_shards(make_samples(), d, "s1", max_samples=10)


def test_index_counts(stage: tuple[Path, dict]) -> None:
    d, index = stage
    assert [s["name"] for s in index["shards"]] == [f"s1-g0000-{i:06d}.tar" for i in range(3)]
    assert [s["samples"] for s in index["shards"]] == [10, 10, 5]
    assert json.loads(Path(index_path(str(d))).read_text()) == index
    samples = make_samples()
    assert index["totals"]["samples"] == N
    assert index["totals"]["speech_tokens"] == sum(s["speech_tokens.npy"].size for s in samples)
    assert index["totals"]["text_tokens"] == sum(s["text_tokens.npy"].size for s in samples)
    assert index["totals"]["audio_s"] == pytest.approx(N * 0.1)
    assert index["tasks"]["asr"]["samples"] == 12 and index["tasks"]["s2tt"]["samples"] == 13
    for s in index["shards"]:
        p = d / s["name"]
        assert s["bytes"] == p.stat().st_size
        assert s["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()


def test_idx_offsets_point_at_first_member(stage: tuple[Path, dict]) -> None:
    d, index = stage
    for s in index["shards"]:
        tar_path = d / s["name"]
        offsets = np.fromfile(offsets_path(str(d), s["name"]), dtype="<u8")
        assert len(offsets) == s["samples"] + 1
        assert offsets[-1] == tar_path.stat().st_size
        with tarfile.open(tar_path) as tar:
            names = [m.name for m in tar.getmembers()]
        first_members = [
            n
            for i, n in enumerate(names)
            if i == 0 or n.split(".")[0] != names[i - 1].split(".")[0]
        ]
        with tar_path.open("rb") as f:
            for off, expected in zip(offsets[:-1], first_members, strict=True):
                f.seek(int(off))
                header = tarfile.TarInfo.frombuf(f.read(512), "utf-8", "strict")
                assert header.name == expected and header.mtime == 0 and header.uid == 0


def test_rerun_is_byte_identical_and_order_independent(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_stage_shards(make_samples(), a, "s1", max_samples=10)
    write_stage_shards(list(reversed(make_samples())), b, "s1", max_samples=10)
    assert _digests(a) == _digests(b)
    before = _digests(a)
    write_stage_shards(make_samples(), a, "s1", max_samples=10)
    assert _digests(a) == before


def test_reads_back_with_plain_webdataset(stage: tuple[Path, dict]) -> None:
    d, index = stage
    urls = [str(d / s["name"]) for s in index["shards"]]
    by_key = {s["__key__"]: s for s in make_samples()}
    seen = []
    for sample in wds.WebDataset(urls, shardshuffle=False).decode():
        key = sample["__key__"]
        seen.append(key)
        assert sample["json"]["i"] == by_key[key]["json"]["i"]
        for name in ("speech_tokens.npy", "text_tokens.npy", "labels.npy"):
            np.testing.assert_array_equal(sample[name], by_key[key][name])
        audio, sr = sf.read(io.BytesIO(sample["flac"]))
        assert sr == 16000 and audio.shape == (1600,)
    assert sorted(seen) == sorted(by_key)


def test_invalid_key_rejected(tmp_path: Path) -> None:
    bad = make_samples(1)
    bad[0]["__key__"] = "a.b"
    with pytest.raises(ValueError, match="no dots"):
        write_stage_shards(bad, tmp_path, "s1")
