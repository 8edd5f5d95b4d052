"""Benchmark: diarization accuracy (DER, JER) and speed (real-time factor) per backend and data set.

    .venv/bin/python bench/diarize.py [--pyannote-model DIR] [--threads 1]

Data sets:

* demo stereo: the three stereo demo conversations (espeak-ng voices, exact RTTMs);
* demo mono: the three mono demo conversations, plus the stereo ones downmixed to mono;
* demo far-field: the same six made far-field (`minmo.audio.farfield`: each speaker through a
  synthetic room of their own where the channels keep them apart, -40 to -25 dBFS, pink noise
  10-20 dB below), plus the demo's own far-field call;
* demo meetings: the two mono meetings (3 and 4 speakers), count estimated between 2 and 4;
  and the same made far-field;
* pyannote sample: ../shared/data/diar_pyannote_sample (a real 30 s two-speaker telephone call,
  mono, pyannote's own reference);
* pyannote sample far-field: that call made far-field as above (one room: it is a mono mix);
* aws call: ../shared/data/stereo_aws_lca_autorepairs40 (a real 245 s stereo 8 kHz call; its RTTM
  is a weak per-channel energy VAD, not a human reference).

Backends run in this process on `--threads` torch threads, as the diarize step's actors do, with
the model load excluded; real-time factor = compute seconds / audio seconds. DER uses a 0.25 s
collar (pyannote.metrics). Two-party data sets are diarized with num_speakers = 2, meetings
with 2 <= speakers <= 4. Without
`--pyannote-model` the pyannote row times a tiny random-init pipeline (plumbing cost only; its
DER is meaningless and is not printed).

Also printed: agreement of the duplex labels derived from diarized turns with those derived from
the reference turns (positive F1 at K = 1, 5 and 10 frames of 120 ms, per event type; in a
meeting each speaker plays the user once, as the label-turns step does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_DATA = REPO.parent / "shared" / "data"
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

from minmo.audio.decode import decode_audio  # noqa: E402
from minmo.audio.farfield import FarFieldSpec, far_field_mix  # noqa: E402
from minmo.audio.resample import resample  # noqa: E402
from minmo.diarization.metrics import DiarizationScore, read_rttm, score  # noqa: E402
from minmo.diarization.types import SpeakerHints, SpeakerSegment  # noqa: E402
from minmo.duplex.evaluate import label_agreement  # noqa: E402
from minmo.duplex.labels import DuplexLabelConfig, Span  # noqa: E402
from schemas import EventType  # noqa: E402
from schemas.units import SAMPLE_RATE_HZ  # noqa: E402

Item = tuple[str, np.ndarray, list[tuple[str, float, float]]]
TWO = SpeakerHints(num_speakers=2)
MEETING = SpeakerHints(min_speakers=2, max_speakers=4)


def load(path: Path) -> np.ndarray:
    audio = decode_audio(path.read_bytes(), path.suffix.lstrip("."))
    return resample(audio.samples, audio.sample_rate_hz)


@dataclass
class DemoSets:
    stereo: list[Item]
    mono: list[Item]
    far_field: list[Item]
    meetings: list[Item]
    far_meetings: list[Item]


def far_field(item: Item, seed: int) -> Item:
    """The item heard from across a room: one room per channel (a channel is one speaker in the
    stereo calls), levels and noise drawn within the far-field ranges."""
    stem, audio, ref = item
    rng = np.random.default_rng(seed)
    tracks = {str(c): channel for c, channel in enumerate(audio)}
    return (f"{stem} (far-field)", far_field_mix(tracks, FarFieldSpec.draw(rng), rng)[None], ref)


def demo_sets(work: Path) -> DemoSets:
    from minmo.demo import build_demo_corpus

    build_demo_corpus(work, seed=0, progress=False)
    sets = DemoSets([], [], [], [], [])
    for index, wav in enumerate(sorted((work / "conversations").glob("*.wav"))):
        (ref,) = read_rttm(wav.with_suffix(".rttm")).values()
        audio = load(wav)
        item = (wav.stem, audio, ref)
        if json.loads(wav.with_suffix(".turns.json").read_text()).get("far_field"):
            sets.far_field.append(item)  # the demo's own far-field call
        elif len({speaker for speaker, _, _ in ref}) > 2:
            sets.meetings.append(item)
            sets.far_meetings.append(far_field(item, 100 + index))
        else:
            if audio.shape[0] == 2:
                sets.stereo.append(item)
                sets.mono.append((f"{wav.stem} (downmix)", audio.mean(axis=0, keepdims=True), ref))
            else:
                sets.mono.append(item)
            sets.far_field.append(far_field(item, 100 + index))
    return sets


def shared_item(stem: str, rttm_suffix: str = ".rttm") -> Item:
    path = SHARED_DATA / f"{stem}.wav"
    (ref,) = read_rttm(SHARED_DATA / f"{stem}{rttm_suffix}").values()
    return (path.stem, load(path), ref)


def run(
    name: str,
    backend: Callable[[np.ndarray, SpeakerHints], list[SpeakerSegment]],
    items: list[Item],
    show_der: bool = True,
    hints: SpeakerHints = TWO,
) -> None:
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
        line += f"DER {100 * pooled.der:.1f}%  JER {100 * pooled.jer:.1f}%  "
        line += f"RTF {compute / audio_s:.4f}"
    else:
        line += f"RTF {compute / audio_s:.4f}"
    print(line)
    if show_der:
        agreement = label_agreement(conversations, DuplexLabelConfig())
        for event in EventType:
            f1 = " / ".join(f"{agreement.f1(event, k):.2f}" for k in (1, 5, 10))
            print(f"      labels F1@1/5/10 {event.value:<22} {f1}")


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
        demo = demo_sets(Path(tmp) / "demo")
        sample = [shared_item("diar_pyannote_sample/sample")]
        far_sample = [far_field(sample[0], 7)]
        aws = [
            shared_item(
                "stereo_aws_lca_autorepairs40/Auto_Repairs_40_UTC_stereo", ".energyvad.rttm"
            )
        ]
        channels, offline = ChannelDiarizer(), OfflineDiarizer()
        print("channels")
        run("demo stereo", channels, demo.stereo)
        run("aws call (weak ref)", channels, aws)
        for name, backend in [("offline", offline)] + (
            [("pyannote", PyannoteDiarizer(args.pyannote_model))] if args.pyannote_model else []
        ):
            print(name)
            run("demo mono", backend, demo.mono)
            run("demo far-field", backend, demo.far_field)
            run("demo meetings", backend, demo.meetings, hints=MEETING)
            run("demo meetings far-field", backend, demo.far_meetings, hints=MEETING)
            run("pyannote sample", backend, sample)
            run("pyannote sample far-field", backend, far_sample)
        if not args.pyannote_model:
            print("pyannote")
            from minmo.testing.pyannote_tiny import build_tiny_pyannote_pipeline

            model = build_tiny_pyannote_pipeline(Path(tmp) / "tiny-pipeline")
            run("pyannote sample (tiny random-init)", PyannoteDiarizer(str(model)), sample, False)


if __name__ == "__main__":
    main()
