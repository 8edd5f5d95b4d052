"""Benchmark: TTS throughput in synthesised audio-hours per core-hour, per backend.

    .venv/bin/python bench/synthesize.py [--lines 300] [--piper-voice VOICE.onnx]

Lines are the bundled demo dialogues' turns (jobs/data/demo_dialogues.jsonl), cycled until
`--lines` requests, each spoken in its dialogue's language by a voice from the user pool, in one
process on one core. Figures: audio seconds produced / CPU seconds used (of this process and
its children, so espeak-ng's subprocesses count), and the same against wall-clock time. The
resample to 16 kHz and FLAC encoding the synthesize step adds are timed separately.
`--piper-voice` adds a row for a local Piper voice (no voice can be downloaded here).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minmo.audio.resample import resample  # noqa: E402
from minmo.tts.base import Style, TtsRequest, Voice  # noqa: E402
from minmo.tts.registry import make_backend  # noqa: E402
from pipelines.dialogues import read_dialogues  # noqa: E402
from pipelines.synthesize import USER_VOICES, flac_bytes  # noqa: E402


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def requests(n: int, piper_voice: str | None = None) -> list[TtsRequest]:
    lines = []
    for kind, payload in read_dialogues(str(REPO / "jobs" / "data" / "demo_dialogues.jsonl")):
        if kind == "dialogue":
            lines += [
                (r["text"], r.get("language") or "en") for r in payload if r["role"] != "system"
            ]
    out = []
    for i in range(n):
        text, language = lines[i % len(lines)]
        if piper_voice:
            voice = Voice("piper", "en", piper_voice)
        else:
            pool = USER_VOICES.get(language, USER_VOICES["en"])
            voice = Voice(f"v{i}", language, pool[i % len(pool)])
        out.append(TtsRequest(f"line{i}", text, voice, Style()))
    return out


def run(name: str, backend_name: str, batch: list[TtsRequest], **options: object) -> None:
    backend = make_backend(backend_name, **options)
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    results = backend.synthesize(batch)
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    ok = [r for r in results if hasattr(r, "samples")]
    audio_s = sum(r.duration_s for r in ok)
    cpu1 = cpu_seconds()
    for r in ok:
        flac_bytes(resample(r.samples[None, :], r.sample_rate_hz)[0])
    post = cpu_seconds() - cpu1
    print(
        f"{name:<10} {len(ok):>5}/{len(batch)} lines  {audio_s / 3600:6.3f} audio-h  "
        f"TTS {audio_s / cpu:8,.0f} audio-h per core-h ({audio_s / wall:,.0f}x real time wall)  "
        f"+ resample/FLAC: {audio_s / (cpu + post):,.0f} audio-h per core-h"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=300)
    parser.add_argument("--piper-voice", default=None, help="local Piper .onnx voice")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs (pinned to one), {args.lines} lines")
    run("espeak", "espeak", requests(args.lines))
    if args.piper_voice:
        run("piper", "piper", requests(args.lines, args.piper_voice))


if __name__ == "__main__":
    main()
