"""Benchmark: the trainer's own step (`minmo.train.loop.train`) on synthetic shards.

    .venv/bin/python bench/train.py [--stage 1b] [--batch 8 64] [--steps 10] [--size tiny|full]
                                    [--clock wall|cpu] [--json rows.json]

Writes stage-1 shards of synthetic utterances (2-10 s, a tone over noise, an ASR chat from the
built-in tokenizer) with the shard step's writer, then for each batch size runs `train()` on
them exactly as `minmo train` would (loader with `--workers` workers, the stage's recipe, AdamW,
a checkpoint at the end) and prints, over the `--steps` steps after `--warmup`:

- the step time, from one root forward to the next (so loading and collating the batch, the
  optimizer, logging and checkpoint checks are in it), and the trainer's own `step_s`;
- samples/s, tokens/s and MFU: the trainer's own counts per step (from its metrics.jsonl) over
  that step time; MFU against `--peak-tflops` (default: on CUDA 800, the bf16 matmul rate
  measured on a lent H100; on CPU, the fp32 matmul rate this machine reaches, measured first);
- the padding fraction of the LLM's positions (its attention mask) and of the audio samples;
- the share of the step spent outside the top-level modules' forward and backward, and per
  module the share inside it (minmo.train.profile.StepProfile: hooks, measured, not estimated).

`--clock cpu` (CPU only) runs one torch thread and times the main thread's CPU time: on a shared
machine the wall clock moves with the other processes' load, CPU time barely does; waiting for
the loader's worker is then not counted. The shards hold `batch x (warmup + steps + 1)` samples
of the largest batch, so the measured steps never cross an epoch (a new epoch starts new loader
workers).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from minmo.audio.encode import flac_bytes  # noqa: E402
from minmo.tokens.text import SPEECH_PLACEHOLDER, encode_chat, load_text_tokenizer  # noqa: E402
from minmo.train.config import ModelSpec, TrainConfig  # noqa: E402
from minmo.train.loop import train  # noqa: E402
from minmo.train.metrics import read_metrics  # noqa: E402
from minmo.train.profile import StepProfile  # noqa: E402
from pipelines.shards.writer import write_stage_shards  # noqa: E402
from schemas.units import SAMPLE_RATE_HZ  # noqa: E402

H100_BF16_TFLOPS = 800.0  # measured on a lent H100 (FACTS.md)


def make_shards(out: Path, n: int, seconds: tuple[float, float] = (2.0, 10.0)) -> float:
    """n synthetic ASR samples as stage-1 shards in `out`; returns their audio seconds."""
    tokenizer = load_text_tokenizer(None)
    rng = np.random.default_rng(0)
    samples, audio_s = [], 0.0
    for i in range(n):
        duration = float(rng.uniform(*seconds))
        t = np.arange(int(SAMPLE_RATE_HZ * duration)) / SAMPLE_RATE_HZ
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 800) * t)
        wave += 0.02 * rng.standard_normal(t.size)
        words = " ".join(f"word{int(w)}" for w in rng.integers(0, 50, size=rng.integers(3, 12)))
        messages = [
            {"role": "user", "content": f"Transcribe the speech.\n{SPEECH_PLACEHOLDER}"},
            {"role": "assistant", "content": words},
        ]
        ids = encode_chat(tokenizer, messages)
        start = len(encode_chat(tokenizer, messages[:-1], add_generation_prompt=True))
        meta = {"task": "asr", "duration_s": duration, "target_start": start}
        samples.append(
            {
                "__key__": f"asr-{i:06d}",
                "json": {**meta, "messages": messages},
                "flac": flac_bytes(wave[None, :].astype(np.float32)),
                "text_tokens.npy": ids,
            }
        )
        audio_s += duration
    write_stage_shards(samples, out, "stage1", max_samples=256)
    return audio_s


def matmul_tflops(clock: Callable[[], float], seconds: float = 1.0) -> float:
    """The fp32 matmul rate this CPU reaches on `clock`, TFLOP/s (the CPU's MFU peak)."""
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    runs, t0 = 0, clock()
    while clock() - t0 < seconds:
        a @ b
        runs += 1
    return 2 * n**3 * runs / (clock() - t0) / 1e12


def run(
    shards: Path,
    out: Path,
    args: argparse.Namespace,
    batch: int,
    peak_tflops: float,
    clock: Callable[[], float],
) -> dict[str, float]:
    steps = args.warmup + args.steps + 1  # +1: the last measured step ends at the next root
    config = TrainConfig(
        stage=args.stage,
        model=ModelSpec(size=args.size),
        shards=str(shards),
        out=str(out),
        steps=steps,
        max_samples=batch,
        max_audio_s=1e9,
        max_tokens=10**9,
        num_workers=args.workers,
        warmup_steps=1,
        lr=1e-4,
        save_every=10**9,
        tensorboard=False,
        peak_flops=peak_tflops * 1e12,
        bf16=True,
    )
    profile = StepProfile(clock=clock).start()
    try:
        train(config, str(out.parent), progress=False)
    finally:
        profile.stop()
    first, last = args.warmup, args.warmup + args.steps
    start, end = profile.window(first, last)
    step_s = (end - start) / args.steps
    # The trainer's own counts per step (its rates x its step time), over the measured step.
    records = read_metrics(out)[first:last]
    samples = statistics.mean(r["samples_per_s"] * r["step_s"] for r in records)
    tokens = statistics.mean(r["tokens_per_s"] * r["step_s"] for r in records)
    flops = statistics.mean(r["mfu"] * r["step_s"] * peak_tflops * 1e12 for r in records)
    row = {
        "batch": batch,
        "step_s": step_s,
        "trainer_step_s": statistics.median(r["step_s"] for r in records),
        "samples_per_s": samples / step_s,
        "tokens_per_s": tokens / step_s,
        "mfu": flops / step_s / (peak_tflops * 1e12),
        "llm_padding": profile.llm_padding.fraction,
        "audio_padding": profile.audio_padding.fraction,
        "outside": profile.outside_share(first, last),
    }
    inside = profile.by_module(start, end)
    row.update({f"in_{k}": v / (end - start) for k, v in sorted(inside.items())})
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stage", default="1b", choices=["1a", "1b", "1c"])
    p.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    p.add_argument("--steps", type=int, default=10, help="measured steps per batch size")
    p.add_argument("--warmup", type=int, default=2, help="steps not measured")
    p.add_argument("--size", choices=["tiny", "full"], default="tiny")
    p.add_argument("--workers", type=int, default=1, help="loader workers")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: one torch thread, time = the main thread's CPU time (CPU only; steady on a "
        "shared machine, but blind to waiting for the loader)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    clock: Callable[[], float] = time.perf_counter
    if args.clock == "cpu":
        if device.type == "cuda":
            p.error("--clock cpu is for CPU runs")
        torch.set_num_threads(1)
        clock = time.thread_time
    peak = args.peak_tflops
    if peak is None:
        peak = H100_BF16_TFLOPS if device.type == "cuda" else matmul_tflops(clock)
    print(
        f"{time.strftime('%Y-%m-%d')} {platform.platform()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {name}, {args.clock} clock; "
        f"peak {peak:.3g} TFLOP/s"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        n = max(args.batch) * (args.warmup + args.steps + 1)
        t0 = time.perf_counter()
        audio_s = make_shards(Path(tmp) / "shards", n)
        print(
            f"shards: {n} samples, {audio_s / 3600:.2f} audio-h ({time.perf_counter() - t0:.0f} s)"
        )
        for batch in args.batch:
            out = Path(tmp) / f"ckpt-{batch}"
            row = run(Path(tmp) / "shards", out, args, batch, peak, clock)
            rows.append(row)
            modules = ", ".join(
                f"{k[3:]} {v:.0%}" for k, v in row.items() if k.startswith("in_") and v >= 0.005
            )
            print(
                f"stage {args.stage} {args.size} batch {batch}: step {row['step_s'] * 1e3:,.0f} ms "
                f"(trainer's wall step_s {row['trainer_step_s'] * 1e3:,.0f} ms), "
                f"{row['samples_per_s']:,.1f} samples/s, {row['tokens_per_s']:,.0f} tokens/s, "
                f"MFU {row['mfu']:.2%}, padding LLM {row['llm_padding']:.1%} / audio "
                f"{row['audio_padding']:.1%}, outside modules {row['outside']:.1%} "
                f"(inside: {modules})"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
