"""Benchmark: silero-vad speech timestamps in audio-hours per core-hour, stock vs batched.

    .venv/bin/python bench/vad.py [--minutes 15] [--repeats 3]

The corpus is the real 16 kHz speech in ../shared/data (vad_speechbrain, asr_speechbrain_en,
asr_wenet_zh_en, diar_pyannote_sample: clips of 2-30 s) repeated with a per-copy gain until it
holds `--minutes` of audio. Everything runs on one thread (torch.set_num_threads(1)), so
audio-hours per core-hour = audio seconds / CPU seconds of this process (wall-clock figures are
printed beside them; they match on an idle machine). Timed:

* stock: `silero_vad.get_speech_timestamps(wav, model, return_seconds=True)` per clip;
* batched: `BatchedSileroVad.speech_probs(all clips)` + `speech_timestamps` per clip;
* batched, one stream: the whole corpus as one stream (the worst case: nothing to batch the LSTM
  over).

Model loading is excluded from both. The batched timestamps are checked against stock.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata as md
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SOURCES = (
    "vad_speechbrain/*.wav",
    "asr_speechbrain_en/*.wav",
    "asr_wenet_zh_en/*.wav",
    "diar_pyannote_sample/sample.wav",
)
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from machine import cpu_model  # noqa: E402

from schemas.units import SAMPLE_RATE_HZ  # noqa: E402


def load_corpus(minutes: float) -> list[np.ndarray]:
    """The shared clips repeated with a per-copy gain (distinct content) to `minutes` of audio."""
    clips = []
    for pattern in SOURCES:
        for path in sorted(SHARED_DATA.glob(pattern)):
            audio, rate = sf.read(path, dtype="float32")
            if rate != SAMPLE_RATE_HZ or audio.ndim != 1:
                raise SystemExit(
                    f"{path}: expected 16 kHz mono, got {rate} Hz, shape {audio.shape}"
                )
            clips.append(audio)
    per_copy = sum(len(c) for c in clips) / SAMPLE_RATE_HZ
    copies = max(1, int(np.ceil(minutes * 60 / per_copy)))
    return [clip * (0.5 + 0.5 * (k + 1) / copies) for k in range(copies) for clip in clips]


def best_of(repeats: int, fn) -> tuple[float, float, object]:
    """Fastest (CPU seconds, wall seconds) of `repeats` calls, and the last result.

    CPU time of this process is the core time actually spent (one torch thread), and unlike wall
    time it does not count time lost to other processes on a shared machine.
    """
    best_cpu, best_wall, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        result = fn()
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return best_cpu, best_wall, result


def stock_timestamps(model, clips: list[np.ndarray]) -> list[list[tuple[float, float]]]:
    from silero_vad import get_speech_timestamps

    out = []
    for clip in clips:
        regions = get_speech_timestamps(torch.from_numpy(clip), model, return_seconds=True)
        out.append([(r["start"], r["end"]) for r in regions])
    return out


def batched_timestamps(vad, clips: list[np.ndarray]) -> list[list[tuple[float, float]]]:
    from minmo.audio.vad import speech_timestamps

    probs = vad.speech_probs(clips)
    return [speech_timestamps(p, len(c)) for p, c in zip(probs, clips, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="audio in the corpus")
    parser.add_argument("--repeats", type=int, default=3, help="batched runs; the best is kept")
    args = parser.parse_args()

    import silero_vad

    from minmo.audio.vad import BatchedSileroVad, speech_timestamps

    torch.set_num_threads(1)
    clips = load_corpus(args.minutes)
    audio_s = sum(len(c) for c in clips) / SAMPLE_RATE_HZ
    print(f"date      {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(
        f"machine   {cpu_model()} ({platform.machine()}), torch threads {torch.get_num_threads()}"
    )
    print(
        f"versions  python {platform.python_version()}, torch {torch.__version__}, "
        f"silero-vad {md.version('silero-vad')}, numpy {np.__version__}"
    )
    print(
        f"corpus    {len(clips)} clips, {audio_s / 60:.1f} min (clips {audio_s / len(clips):.1f} s mean)"
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        model = silero_vad.load_silero_vad()
    vad = BatchedSileroVad(num_threads=1)

    rows = []
    stock_cpu, stock_wall, stock = best_of(1, lambda: stock_timestamps(model, clips))
    rows.append(("stock get_speech_timestamps", stock_cpu, stock_wall))
    cpu, wall, batched = best_of(args.repeats, lambda: batched_timestamps(vad, clips))
    rows.append(("BatchedSileroVad + speech_timestamps", cpu, wall))
    whole = np.concatenate(clips)
    cpu, wall, _ = best_of(
        args.repeats, lambda: speech_timestamps(vad.speech_probs([whole])[0], len(whole))
    )
    rows.append(("  same, corpus as ONE stream", cpu, wall))

    print(
        f"\n{'method':38s} {'CPU s':>7s} {'wall s':>7s} {'audio-h/core-h':>15s} {'(by wall)':>10s}"
    )
    for name, cpu, wall in rows:
        print(f"{name:38s} {cpu:7.2f} {wall:7.2f} {audio_s / cpu:15,.0f} {audio_s / wall:10,.0f}")
    same = sum(a == b for a, b in zip(stock, batched, strict=True))
    print(f"\ntimestamps identical to stock on {same}/{len(clips)} clips")


if __name__ == "__main__":
    main()
