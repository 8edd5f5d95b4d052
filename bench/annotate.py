"""Benchmark: SenseVoiceSmall pseudo-labelling speed, in audio-hours per core-hour (and per
GPU-hour when a GPU is used): what sizing `minmo annotate` for a corpus needs (`minmo plan`
has no annotate row yet; bench/rates.json is where one would go).

    .venv/bin/python bench/annotate.py                        # tiny random-init model, CPU
    .venv/bin/python bench/annotate.py --model DIR            # a real SenseVoiceSmall directory
    .venv/bin/python bench/annotate.py --device cuda --batch-size 64 --minutes 30
    .venv/bin/python bench/annotate.py --step                 # also the whole step on Ray

The labeller (`minmo.annotate.sensevoice.SenseVoiceLabeler`, the code the step's actors run) is
loaded once (load time printed, not counted), then labels `--minutes` of real speech from
../shared/data (the SenseVoice multilingual clips and JFK, cut into `--clip-s` pieces as ingest's
segments are) in batches of `--batch-size`. CPU: `--threads` torch threads, core-hours = wall x
threads. GPU: one device, GPU-hours = wall. `--step` also ingests those clips into a temporary
build and runs `minmo annotate` on it end to end (decode tasks + actor pool + commits), whose
summary gives the step's own rate per core of the local Ray instance. Without `--model` the
tiny random-init model times the plumbing, not the real network: its numbers are not the
real model's.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_DATA = REPO.parent / "shared" / "data"

from minmo.annotate.sensevoice import SenseVoiceLabeler  # noqa: E402
from pipelines.audio_source import load_audio_16k  # noqa: E402
from schemas.units import SAMPLE_RATE_HZ  # noqa: E402

SOURCES = (
    *(f"asr_sensevoice_multilang/{n}.wav" for n in ("zh", "yue", "ja", "ko")),
    "asr_whisper_jfk/jfk.flac",
)


def clips(clip_s: float) -> list[np.ndarray]:
    """The benchmark's speech, cut into pieces of at most `clip_s` seconds."""
    out = []
    step = int(clip_s * SAMPLE_RATE_HZ)
    for name in SOURCES:
        audio = load_audio_16k(str(SHARED_DATA / name), 1, {})[0]
        out += [audio[i : i + step] for i in range(0, audio.size, step) if audio.size - i > 8000]
    return out


def bench_labeler(args: argparse.Namespace, model_dir: str) -> None:
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    labeler = SenseVoiceLabeler(model_dir, args.device, threads=args.threads)
    load_s = time.perf_counter() - started
    pool = clips(args.clip_s)
    target = args.minutes * 60 * SAMPLE_RATE_HZ
    work, total = [], 0
    while total < target:
        clip = pool[len(work) % len(pool)]
        work.append(clip)
        total += clip.size
    labeler.label(work[: args.batch_size])  # warm-up: kernels, allocator
    if labeler.device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    for i in range(0, len(work), args.batch_size):
        labeler.label(work[i : i + args.batch_size])
    if labeler.device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    hours = total / SAMPLE_RATE_HZ / 3600
    print(
        f"labeller: {len(work)} clips, {hours * 60:.1f} audio-min in {wall:.1f} s "
        f"(load {load_s:.1f} s, not counted); batch {args.batch_size}, device {labeler.device}"
    )
    if labeler.device.startswith("cuda"):
        print(f"  {hours / (wall / 3600):,.0f} audio-hours per GPU-hour")
    else:
        core_h = wall * args.threads / 3600
        print(f"  {hours / core_h:,.1f} audio-hours per core-hour ({args.threads} thread(s))")


def bench_step(args: argparse.Namespace, model_dir: str, work: Path) -> None:
    import soundfile as sf

    from pipelines.annotate import AnnotateConfig, run_annotate
    from pipelines.ingest.config import IngestConfig
    from pipelines.ingest.run import run_ingest

    src = work / "src"
    src.mkdir()
    for i, clip in enumerate(clips(args.clip_s)):
        sf.write(src / f"clip{i:03d}.wav", clip, SAMPLE_RATE_HZ)
    build = str(work / "build")
    run_ingest(str(src), build, IngestConfig(), progress=False)
    config = AnnotateConfig(model=model_dir, batch_size=args.batch_size, device=args.device)
    summary = run_annotate(build, config, progress=False)
    print("step (wall includes Ray start-up and each actor's model load):")
    print(summary.render())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="SenseVoiceSmall directory (default: the tiny model)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument("--minutes", type=float, default=2.0, help="audio minutes to label")
    parser.add_argument("--clip-s", type=float, default=10.0, help="clip (segment) length")
    parser.add_argument("--step", action="store_true", help="also run the step end to end")
    args = parser.parse_args()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(
        f"bench/annotate.py {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
        f"{platform.processor() or platform.machine()}, GPU {gpu}; torch {torch.__version__}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from minmo.demo.annotator import build_tiny_sensevoice_dir

            model_dir = str(build_tiny_sensevoice_dir(Path(tmp) / "SenseVoiceSmall-tiny"))
            print("model: tiny random-init SenseVoiceSmall (plumbing speed, not the real net)")
        else:
            print(f"model: {model_dir}")
        bench_labeler(args, model_dir)
        if args.step:
            bench_step(args, model_dir, Path(tmp))


if __name__ == "__main__":
    main()
