"""Benchmark: diarization accuracy (DER, JER) and speed (real-time factor) per backend and data set.

    .venv/bin/python bench/diarize.py [--pyannote-model DIR] [--threads 1]

Data sets:

* demo stereo: the three stereo demo conversations (espeak-ng voices, exact RTTMs);
* demo mono: the three mono demo conversations, plus the stereo ones downmixed to mono;
* pyannote sample: ../shared/data/diar_pyannote_sample (a real 30 s two-speaker telephone call,
  mono, pyannote's own reference);
* aws call: ../shared/data/stereo_aws_lca_autorepairs40 (a real 245 s stereo 8 kHz call; its RTTM
  is a weak per-channel energy VAD, not a human reference).

Backends run in this process on `--threads` torch threads, as the diarize step's actors do, with
the model load excluded; real-time factor = compute seconds / audio seconds. DER uses a 0.25 s
collar (pyannote.metrics). Two-party data sets are diarized with num_speakers = 2. Without
`--pyannote-model` the pyannote row times a tiny random-init pipeline (plumbing cost only; its
DER is meaningless and is not printed).

Also printed: agreement of the duplex labels derived from diarized turns with those derived from
the reference turns (F1 at K = 5 frames of 120 ms, per event type).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_DATA = REPO.parent / "shared" / "data"
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

from minmo.audio.decode import decode_audio  # noqa: E402
from minmo.audio.resample import resample  # noqa: E402
from minmo.diarization.metrics import DiarizationScore, read_rttm, score  # noqa: E402
from minmo.diarization.types import SpeakerHints, SpeakerSegment  # noqa: E402
from minmo.duplex.evaluate import label_agreement  # noqa: E402
from minmo.duplex.labels import DuplexLabelConfig, Span  # noqa: E402
from schemas import EventType  # noqa: E402
from schemas.units import SAMPLE_RATE_HZ  # noqa: E402

Item = tuple[str, np.ndarray, list[tuple[str, float, float]]]


def load(path: Path) -> np.ndarray:
    audio = decode_audio(path.read_bytes(), path.suffix.lstrip("."))
    return resample(audio.samples, audio.sample_rate_hz)


def demo_sets(work: Path) -> tuple[list[Item], list[Item]]:
    from minmo.demo import build_demo_corpus

    build_demo_corpus(work, seed=0, progress=False)
    stereo, mono = [], []
    for wav in sorted((work / "conversations").glob("*.wav")):
        (ref,) = read_rttm(wav.with_suffix(".rttm")).values()
        if len({speaker for speaker, _, _ in ref}) > 2:
            continue  # the demo meetings: not a two-party set (diarized with num_speakers = 2)
        audio = load(wav)
        if audio.shape[0] == 2:
            stereo.append((wav.stem, audio, ref))
            mono.append((f"{wav.stem} (downmix)", audio.mean(axis=0, keepdims=True), ref))
        else:
            mono.append((wav.stem, audio, ref))
    return stereo, mono


def shared_item(stem: str, rttm_suffix: str = ".rttm") -> Item:
    path = SHARED_DATA / f"{stem}.wav"
    (ref,) = read_rttm(SHARED_DATA / f"{stem}{rttm_suffix}").values()
    return (path.stem, load(path), ref)


def run(
    name: str,
    backend: Callable[[np.ndarray, SpeakerHints], list[SpeakerSegment]],
    items: list[Item],
    show_der: bool = True,
) -> None:
    hints = SpeakerHints(num_speakers=2)
    scores: list[DiarizationScore] = []
    compute = audio_s = 0.0
    conversations = []
    for stem, audio, ref in items:
        started = time.perf_counter()
        try:
            segments = backend(audio, hints)
        except ValueError as exc:  # DiarizationRejected
            print(f"    {stem:<28} rejected: {exc}")
            continue
        elapsed = time.perf_counter() - started
        compute += elapsed
        duration = audio.shape[1] / SAMPLE_RATE_HZ
        audio_s += duration
        s = score(ref, segments)
        scores.append(s)
        conversations.append(
            (
                stem,
                duration,
                [Span(x.speaker, x.start_s, x.end_s) for x in segments],
                [Span(*r) for r in ref],
            )
        )
        der = f"DER {100 * s.der:5.1f}%  JER {100 * s.jer:5.1f}%" if show_der else "DER   n/a"
        print(f"    {stem:<28} {der}  RTF {elapsed / duration:.4f}")
    if not scores:
        return
    pooled = DiarizationScore.combine(scores)
    line = f"  {name}: pooled "
    if show_der:
        agreement = label_agreement(conversations, DuplexLabelConfig())
        f1 = ", ".join(f"{e.value} {agreement.f1(e, 5):.2f}" for e in EventType)
        line += f"DER {100 * pooled.der:.1f}%  JER {100 * pooled.jer:.1f}%  "
        line += f"RTF {compute / audio_s:.4f}  labels F1@5: {f1}"
    else:
        line += f"RTF {compute / audio_s:.4f}"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pyannote-model", default=None, help="local pyannote pipeline dir")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch threads {args.threads}, cuda {torch.cuda.is_available()}"
    )

    from minmo.diarization.channels import ChannelDiarizer
    from minmo.diarization.offline import OfflineDiarizer
    from minmo.diarization.pyannote_backend import PyannoteDiarizer

    with tempfile.TemporaryDirectory() as tmp:
        stereo, mono = demo_sets(Path(tmp) / "demo")
        sample = [shared_item("diar_pyannote_sample/sample")]
        aws = [
            shared_item(
                "stereo_aws_lca_autorepairs40/Auto_Repairs_40_UTC_stereo", ".energyvad.rttm"
            )
        ]
        channels, offline = ChannelDiarizer(), OfflineDiarizer()
        print("channels")
        run("demo stereo", channels, stereo)
        run("aws call (weak ref)", channels, aws)
        print("offline")
        run("demo mono", offline, mono)
        run("pyannote sample", offline, sample)
        print("pyannote")
        if args.pyannote_model:
            pyannote = PyannoteDiarizer(args.pyannote_model)
            run("demo mono", pyannote, mono)
            run("pyannote sample", pyannote, sample)
        else:
            from minmo.testing.pyannote_tiny import build_tiny_pyannote_pipeline

            model = build_tiny_pyannote_pipeline(Path(tmp) / "tiny-pipeline")
            run("pyannote sample (tiny random-init)", PyannoteDiarizer(str(model)), sample, False)


if __name__ == "__main__":
    main()
