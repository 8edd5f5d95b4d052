"""Benchmark: the whole ingest (decode + resample + measure + VAD, on Ray Data) in audio-hours
per CPU-core-hour, beside its component limits and Lhotse's own ingest, all in one run.

    .venv/bin/python bench/ingest.py [--hours 2] [--work /tmp/minmo-bench] [--skip-lhotse]

The corpus is the demo corpus (real espeak-ng speech, utterances and conversations) repeated with
a per-copy gain until it holds `--hours` of audio, written twice: as 16 kHz PCM16 WAV and as
44.1 kHz FLAC. Ray's start-up (`ray.init`) is excluded; its per-run fixed costs are included.
Per-core figures divide by the cores the run used (all of them for ingest and Lhotse, one for
the single-threaded component loops).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from machine import cpu_model  # noqa: E402


def make_corpus(work: Path, hours: float) -> tuple[Path, Path, float]:
    """Write the repeated demo corpus as WAV-16k and FLAC-44.1k; return dirs and audio seconds."""
    import soxr

    from minmo.demo import build_demo_corpus

    demo = work / "demo"
    build_demo_corpus(demo, seed=0, progress=False)
    sources = sorted(p for p in demo.rglob("*") if p.suffix in (".wav", ".flac"))
    clips = []
    for path in sources:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        clips.append((path.stem, soxr.resample(data, rate, 16000) if rate != 16000 else data))
    per_copy = sum(c.shape[0] for _, c in clips) / 16000
    copies = max(1, int(np.ceil(hours * 3600 / per_copy)))
    wav_dir, flac_dir = work / "wav16k", work / "flac44k"
    for d in (wav_dir, flac_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for copy in range(copies):
        gain = 0.5 + 0.5 * (copy + 1) / copies  # distinct content per copy: no exact duplicates
        for stem, clip in clips:
            name = f"{copy:03d}_{stem}"
            sf.write(wav_dir / f"{name}.wav", clip * gain, 16000, subtype="PCM_16")
            sf.write(
                flac_dir / f"{name}.flac",
                soxr.resample(clip * gain, 16000, 44100),
                44100,
                subtype="PCM_16",
            )
    return wav_dir, flac_dir, copies * per_copy


def time_fixed_cost(src: Path, work: Path) -> float:
    """Wall seconds of an ingest of ONE file: Ray's per-execution start-up (actor pool, imports,
    model load) that a run pays however much audio it holds."""
    one = work / "one-file"
    shutil.rmtree(one, ignore_errors=True)
    one.mkdir(parents=True)
    first = sorted(src.iterdir())[0]
    shutil.copy(first, one / first.name)
    audio_s, wall = time_ingest(one, work / "build-one-file", 1)
    return wall


def time_ingest(src: Path, build: Path, cores: int) -> tuple[float, float]:
    from pipelines.ingest.config import IngestConfig
    from pipelines.ingest.run import run_ingest

    shutil.rmtree(build, ignore_errors=True)
    config = IngestConfig(files_per_unit=100_000, vad_actors=1)
    started = time.perf_counter()
    summary = run_ingest(str(src), str(build), config, progress=False)
    wall = time.perf_counter() - started
    assert sum(summary.quarantined.values()) == 0, summary.render()
    return summary.run_audio_s, wall


def time_components(src: Path, limit_files: int) -> dict[str, float]:
    """Single-core seconds per audio second for each component alone, on the same files."""
    import torch

    from minmo.audio.decode import decode_audio
    from minmo.audio.resample import resample
    from minmo.audio.vad import BatchedSileroVad

    torch.set_num_threads(1)
    files = sorted(src.iterdir())[:limit_files]
    blobs = [f.read_bytes() for f in files]
    t = time.perf_counter()
    decoded = [decode_audio(b, f.suffix[1:]) for b, f in zip(blobs, files, strict=True)]
    decode_s = time.perf_counter() - t
    audio_s = sum(d.duration_s for d in decoded)
    t = time.perf_counter()
    mono16 = [resample(d.samples, d.sample_rate_hz)[0] for d in decoded]
    resample_s = time.perf_counter() - t
    vad = BatchedSileroVad(num_threads=1)
    t = time.perf_counter()
    for i in range(0, len(mono16), 16):
        vad.speech_probs(mono16[i : i + 16])
    vad_s = time.perf_counter() - t
    return {
        "audio_s": audio_s,
        "decode": audio_s / decode_s,
        "resample": audio_s / resample_s,
        "vad": audio_s / vad_s,
    }


def time_lhotse(src: Path, out: Path, cores: int) -> tuple[float, float]:
    """Lhotse's own ingest of the same files: from_dir -> resample(16k) -> to_shar(flac)."""
    from lhotse import CutSet, RecordingSet

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    pattern = "*" + next(src.iterdir()).suffix
    recordings = RecordingSet.from_dir(src, pattern, num_jobs=cores)
    cuts = CutSet.from_manifests(recordings=recordings).resample(16000)
    cuts.to_shar(out, fields={"recording": "flac"}, shard_size=1000, num_jobs=cores)
    wall = time.perf_counter() - started
    return sum(r.duration for r in recordings), wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hours", type=float, default=4.0)
    parser.add_argument("--work", default="/tmp/minmo-bench")
    parser.add_argument("--skip-lhotse", action="store_true")
    parser.add_argument("--component-files", type=int, default=400)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    cores = os.cpu_count() or 1
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"# minmo ingest benchmark, {datetime.date.today()}")
    print(
        f"machine: {cpu_model()}, {cores} cores; Python {platform.python_version()}, "
        f"ray {ray.__version__}, torch {torch.__version__}"
    )
    wav_dir, flac_dir, corpus_s = make_corpus(work, args.hours)
    print(
        f"corpus: {corpus_s / 3600:.2f} audio hours per format "
        f"({len(list(wav_dir.iterdir()))} files)"
    )
    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False)
    rows = []
    fixed = time_fixed_cost(wav_dir, work)
    print(f"fixed cost of one ingest run (1 file): {fixed:.1f} s wall")
    for label, src in (("WAV 16 kHz", wav_dir), ("FLAC 44.1 kHz", flac_dir)):
        audio_s, wall = time_ingest(src, work / f"build-{src.name}", cores)
        ingest = audio_s / (wall * cores)
        parts = time_components(src, args.component_files)
        steady = audio_s / (max(wall - fixed, 1e-9) * cores)
        line = {"input": label, "ingest": ingest, "steady": steady, **parts}
        if not args.skip_lhotse:
            lh_audio, lh_wall = time_lhotse(src, work / f"shar-{src.name}", cores)
            line["lhotse"] = lh_audio / (lh_wall * cores)
        line["wall_s"] = wall
        rows.append(line)
    ray.shutdown()
    print("\naudio-hours per CPU-core-hour (higher is better)")
    print(
        "| input | minmo ingest, whole run | minmo ingest, start-up excluded | decode alone "
        "| resample alone | VAD alone | Lhotse ingest→Shar | minmo / Lhotse |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        lhotse = r.get("lhotse")
        lhotse_cell = f"{lhotse:,.0f}" if lhotse else "skipped"
        ratio_cell = f"{r['ingest'] / lhotse:.2f}x" if lhotse else "-"
        print(
            f"| {r['input']} | {r['ingest']:,.0f} ({r['wall_s']:.0f} s wall) | {r['steady']:,.0f} "
            f"| {r['decode']:,.0f} | {r['resample']:,.0f} | {r['vad']:,.0f} | {lhotse_cell} "
            f"| {ratio_cell} |"
        )


if __name__ == "__main__":
    main()
