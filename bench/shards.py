"""Benchmark: stage-shard write and read throughput, and speech-tokenizer real-time factor.

    .venv/bin/python bench/shards.py [--samples 600] [--max-samples-per-shard 200]
                                     [--tokenize-seconds 60] [--tokenize-repeats 3]
                                     [--skip-tokenize] [--keep]

Samples have the shape of a real stage sample: a 16 kHz mono speech clip of 2-12 s (real speech
from ../shared/data, resampled to 16 kHz and concatenated/cut to a seeded length with a per-sample
gain; seeded noise under a syllable-rate envelope if that folder is missing) as 16-bit FLAC, a json
dict, int32 text tokens (~4 per second) and int32 speech tokens (25 per second).

1. Write: FLAC encoding (`pipelines.shards.tokenize.flac_bytes`) and `pipelines.shards.write_stage_shards`
   (member encoding, shuffle, tar writing, sha256, .idx and index.json) are timed separately, in
   CPU seconds of this one process (both are single-threaded) and wall seconds. Writes land in the
   page cache; the `os.sync()` after is timed apart.
2. Read: plain `webdataset.WebDataset(urls, shardshuffle=False)` over the written tars, once
   without and once with decoding (soundfile for the FLAC, numpy.load for .npy, json.loads),
   against the disk limit: the same files read in 1 MiB blocks from Python and by `cat` (best of 3),
   all after a warm-up pass so every figure is from the page cache.
3. Speech tokenization: `SpeechTokenizer` on each device (cpu, plus cuda when available), with the
   full-size S3TokenizerV2 (random init: same compute as real weights) and the tiny test
   checkpoint, on one batch of clips totalling `--tokenize-seconds` of audio, after one warm-up
   call on the same batch; the best of `--tokenize-repeats` timed calls is kept (the worst is
   shown: shared machines vary a lot from call to call). RTF = compute (wall) seconds / audio
   seconds (lower is better); the batch is padded to its longest clip, so the compute covers
   "padded" seconds of audio.

MB are 10**6 bytes. Audio-hours per core-hour = audio seconds / CPU seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from schemas.units import SAMPLE_RATE_HZ

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from machine import cpu_model  # noqa: E402

from minmo.audio.encode import flac_bytes  # noqa: E402
from minmo.audio.resample import resample  # noqa: E402
from minmo.tokens.speech import n_speech_tokens  # noqa: E402
from pipelines.shards.writer import write_stage_shards  # noqa: E402

DATA = REPO.parent / "shared" / "data"
# Real, mostly mono speech; the long telephone/stereo calls are left out (not utterance-shaped).
SOURCE_DIRS = (
    "asr_speechbrain_en",
    "asr_wenet_zh_en",
    "asr_sensevoice_multilang",
    "asr_lhotse_libri_lj",
    "asr_whisper_jfk",
    "vad_speechbrain",
    "asr_diar_lhotse_ami_ES2011a",
)
MIN_S, MAX_S = 2.0, 12.0
TEXT_TOKENS_PER_S = 4
TEXT_VOCAB = 151_646  # Qwen2-sized text vocabulary
SPEECH_VOCAB = 6561
MB = 1e6


def load_sources() -> tuple[list[np.ndarray], str]:
    """Real speech clips as float32 mono 16 kHz, or an empty list when ../shared/data is absent."""
    clips = []
    for name in SOURCE_DIRS:
        folder = DATA / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix not in (".wav", ".flac"):
                continue
            data, rate = sf.read(path, dtype="float32", always_2d=True)
            mono = resample(np.ascontiguousarray(data.T), rate).mean(axis=0)  # dual mono -> mono
            clips.append(np.ascontiguousarray(mono, dtype=np.float32))
    if clips:
        total = sum(c.shape[0] for c in clips) / SAMPLE_RATE_HZ
        return clips, f"{len(clips)} real clips from {DATA} ({total:.0f} s)"
    return [], "synthetic noise under a speech-like envelope (no ../shared/data)"


def synthetic_clip(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE_HZ
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6.3)), 0, None) ** 2
    envelope *= 0.5 + 0.5 * np.sin(2 * np.pi * 0.3 * t)  # phrase-level rise and fall
    return (0.3 * envelope * rng.standard_normal(n)).astype(np.float32)


def make_clip(sources: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    n = int(rng.uniform(MIN_S, MAX_S) * SAMPLE_RATE_HZ)
    if not sources:
        return synthetic_clip(rng, n)
    parts, have = [], 0
    i = int(rng.integers(len(sources)))
    offset = int(rng.integers(sources[i].shape[0] // 2))
    while have < n:
        part = sources[i % len(sources)][offset:]
        parts.append(part)
        have += part.shape[0]
        i, offset = i + 1, 0
    gain = rng.uniform(0.5, 1.0)
    return np.clip(np.concatenate(parts)[:n] * gain, -1.0, 1.0).astype(np.float32)


def build_samples(
    n: int, sources: list[np.ndarray], seed: int
) -> tuple[list[dict], float, float, float]:
    """n samples; returns them with audio seconds and FLAC-encode CPU and wall seconds."""
    rng = np.random.default_rng(seed)
    samples, audio_s, enc_cpu, enc_wall = [], 0.0, 0.0, 0.0
    for i in range(n):
        clip = make_clip(sources, rng)
        c0, w0 = time.process_time(), time.perf_counter()
        flac = flac_bytes(clip[None, :])
        enc_cpu += time.process_time() - c0
        enc_wall += time.perf_counter() - w0
        dur = clip.shape[0] / SAMPLE_RATE_HZ
        audio_s += dur
        n_text = max(1, int(dur * TEXT_TOKENS_PER_S))
        samples.append(
            {
                "__key__": f"bench-{i:07d}",
                "json": {
                    "task": ("asr", "s2tt", "s2st", "dialogue")[i % 4],
                    "duration_s": round(dur, 3),
                    "language": ("en", "zh")[i % 2],
                    "source": f"bench/source-{i % 37:03d}.flac",
                    "text": "a benchmark transcript of about the right length " * int(1 + dur),
                    "speaker": f"spk{i % 50}",
                },
                "flac": flac,
                "text_tokens.npy": rng.integers(0, TEXT_VOCAB, n_text, dtype=np.int32),
                "speech_tokens.npy": rng.integers(
                    0, SPEECH_VOCAB, n_speech_tokens(clip.shape[0]), dtype=np.int32
                ),
            }
        )
    return samples, audio_s, enc_cpu, enc_wall


def read_webdataset(urls: list[str], decode: bool) -> tuple[int, float, float, float]:
    """One pass of WebDataset over urls; returns samples, audio seconds, CPU and wall seconds."""
    import webdataset as wds

    c0, w0 = time.process_time(), time.perf_counter()
    count, audio_s = 0, 0.0
    for sample in wds.WebDataset(urls, shardshuffle=False):
        if decode:
            audio, rate = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
            meta = json.loads(sample["json"])
            speech = np.load(io.BytesIO(sample["speech_tokens.npy"]))
            text = np.load(io.BytesIO(sample["text_tokens.npy"]))
            assert speech.dtype == np.int32 and text.dtype == np.int32 and meta["task"]
            audio_s += audio.shape[0] / rate
        count += 1
    return count, audio_s, time.process_time() - c0, time.perf_counter() - w0


def read_blocks(files: list[Path]) -> float:
    w0 = time.perf_counter()
    for path in files:
        with path.open("rb", buffering=0) as f:
            while f.read(1 << 20):
                pass
    return time.perf_counter() - w0


def read_cat(files: list[Path]) -> float:
    w0 = time.perf_counter()
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - w0


def tokenize_rows(
    work: Path, sources: list[np.ndarray], seconds: float, seed: int, repeats: int
) -> list[dict]:
    import torch

    from minmo.testing.tiny_models import build_tiny_checkpoint
    from minmo.tokens.speech import SpeechTokenizer

    rng = np.random.default_rng(seed + 1)
    batch: list[np.ndarray] = []
    while sum(c.shape[0] for c in batch) < seconds * SAMPLE_RATE_HZ:
        batch.append(make_clip(sources, rng))
    audio_s = sum(c.shape[0] for c in batch) / SAMPLE_RATE_HZ
    tiny = build_tiny_checkpoint(work / "tiny" / "speech_tokenizer_tiny.pt")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for label, checkpoint in (("full 124M, random init", None), ("tiny (test size)", tiny)):
            tokenizer = SpeechTokenizer(checkpoint=checkpoint, device=device)
            params = sum(p.numel() for p in tokenizer.model.parameters())
            tokenizer.tokenize(batch)  # warm-up: allocator, oneDNN/cuDNN kernel choice
            if device == "cuda":
                torch.cuda.synchronize()
            timings = []
            for _ in range(repeats):
                c0, w0 = time.process_time(), time.perf_counter()
                codes = tokenizer.tokenize(batch)  # returns numpy: the device work is done
                timings.append((time.perf_counter() - w0, time.process_time() - c0))
            wall, cpu = min(timings)
            worst = max(t[0] for t in timings)
            assert [c.shape[0] for c in codes] == [n_speech_tokens(c.shape[0]) for c in batch]
            rows.append(
                {
                    "device": device,
                    "model": label,
                    "params": params,
                    "clips": len(batch),
                    "audio_s": audio_s,
                    "padded_s": len(batch) * max(c.shape[0] for c in batch) / SAMPLE_RATE_HZ,
                    "wall": wall,
                    "cpu": cpu,
                    "worst": worst,
                    "threads": torch.get_num_threads(),
                }
            )
            del tokenizer
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--max-samples-per-shard", type=int, default=200)
    parser.add_argument("--tokenize-seconds", type=float, default=60.0)
    parser.add_argument("--tokenize-repeats", type=int, default=3, help="timed calls; best kept")
    parser.add_argument("--skip-tokenize", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with the shards")
    args = parser.parse_args()

    import torch
    import webdataset

    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs; {platform.platform()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"webdataset {webdataset.__version__}, soundfile {sf.__version__} "
        f"(libsndfile {sf.__libsndfile_version__})"
    )
    sources, source_line = load_sources()
    print(f"audio: {source_line}")
    work = Path(tempfile.mkdtemp(prefix="minmo-bench-shards-"))
    try:
        # 1. write
        samples, audio_s, enc_cpu, enc_wall = build_samples(args.samples, sources, args.seed)
        flac_mb = sum(len(s["flac"]) for s in samples) / MB
        out = work / "shards"
        c0, w0 = time.process_time(), time.perf_counter()
        index = write_stage_shards(
            samples, out, "bench", max_samples=args.max_samples_per_shard, seed=args.seed
        )
        write_cpu, write_wall = time.process_time() - c0, time.perf_counter() - w0
        w0 = time.perf_counter()
        os.sync()
        sync_wall = time.perf_counter() - w0
        del samples
        totals = index["totals"]
        tar_mb = totals["bytes"] / MB
        n = totals["samples"]
        print(
            f"samples: {n} ({audio_s / 3600:.2f} audio-h, mean {audio_s / n:.1f} s), "
            f"{totals['shards']} shards of <= {args.max_samples_per_shard}, "
            f"{tar_mb:.1f} MB of tar ({flac_mb:.1f} MB FLAC, "
            f"{flac_mb * MB * 8 / audio_s / 1000:.0f} kbit/s)"
        )
        print("\n## write (one process, single-threaded)")
        print("| step | samples/s | MB/s | audio-h per core-h | CPU s | wall s |")
        print("|---|---|---|---|---|---|")
        print(
            f"| FLAC encode (flac_bytes) | {n / enc_wall:,.0f} | {flac_mb / enc_wall:,.1f} "
            f"(FLAC out) | {audio_s / enc_cpu:,.0f} | {enc_cpu:.2f} | {enc_wall:.2f} |"
        )
        print(
            f"| write_stage_shards | {n / write_wall:,.0f} | {tar_mb / write_wall:,.1f} (tar) "
            f"| {audio_s / write_cpu:,.0f} | {write_cpu:.2f} | {write_wall:.2f} |"
        )
        both_cpu, both_wall = enc_cpu + write_cpu, enc_wall + write_wall
        print(
            f"| both | {n / both_wall:,.0f} | {tar_mb / both_wall:,.1f} (tar) "
            f"| {audio_s / both_cpu:,.0f} | {both_cpu:.2f} | {both_wall:.2f} |"
        )
        print(f"then os.sync(): {sync_wall:.2f} s wall (not in the figures above)")

        # 2. read
        files = sorted(out.glob("bench-*.tar"))
        urls = [str(f) for f in files]
        read_blocks(files)  # warm-up: everything in the page cache
        block_wall = min(read_blocks(files) for _ in range(3))  # best of 3: these take ms
        cat_wall = min(read_cat(files) for _ in range(3))
        raw = read_webdataset(urls, decode=False)
        dec = read_webdataset(urls, decode=True)
        assert raw[0] == n and dec[0] == n, (raw[0], dec[0], n)
        assert abs(dec[1] - audio_s) < 1e-3 * n, (dec[1], audio_s)
        print("\n## read (page cache warm, one process)")
        print("| reader | samples/s | MB/s | audio-h per core-h | vs 1 MiB blocks | wall s |")
        print("|---|---|---|---|---|---|")
        block_mbs = tar_mb / block_wall
        print(
            f"| Python 1 MiB blocks (disk limit) | - | {block_mbs:,.0f} | - | 1.00 "
            f"| {block_wall:.3f} |"
        )
        print(
            f"| `cat` subprocess | - | {tar_mb / cat_wall:,.0f} | - "
            f"| {tar_mb / cat_wall / block_mbs:.2f} | {cat_wall:.3f} |"
        )
        for label, (count, _, cpu, wall) in (
            ("WebDataset, raw bytes", raw),
            ("WebDataset + decode (sf, np.load, json)", dec),
        ):
            print(
                f"| {label} | {count / wall:,.0f} | {tar_mb / wall:,.1f} | {audio_s / cpu:,.0f} "
                f"| {tar_mb / wall / block_mbs:.3f} | {wall:.3f} |"
            )

        # 3. tokenize
        if not args.skip_tokenize:
            rows = tokenize_rows(
                work, sources, args.tokenize_seconds, args.seed, args.tokenize_repeats
            )
            print(
                "\n## speech tokenization (S3TokenizerV2; random weights cost the same compute "
                "as real ones)"
            )
            print(
                "| device | model | params | clips | audio s (padded to) | compute s wall, best "
                "(worst) | RTF | audio-s per s | torch threads | process CPU s |"
            )
            print("|---|---|---|---|---|---|---|---|---|---|")
            for r in rows:
                print(
                    f"| {r['device']} | {r['model']} | {r['params'] / 1e6:.1f} M | {r['clips']} "
                    f"| {r['audio_s']:.1f} ({r['padded_s']:.1f}) | {r['wall']:.2f} ({r['worst']:.2f}) "
                    f"| {r['wall'] / r['audio_s']:.4f} | {r['audio_s'] / r['wall']:,.1f} "
                    f"| {r['threads']} | {r['cpu']:.2f} |"
                )
            if not torch.cuda.is_available():
                print("(no CUDA device here: cpu rows only)")
    finally:
        if args.keep:
            print(f"\nkept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
