"""Benchmark: the trainer's loader alone vs whole training steps, and MFU on a GPU.

    .venv/bin/python bench/train.py [--samples 192] [--steps 20] [--size tiny|small]

Writes stage-1 shards of `--samples` synthetic utterances (2-10 s, tones over noise, text
tokens from the built-in tokenizer) to a temp dir, then:
1. the loader alone (`StageLoader`: .idx reads, FLAC decode, dynamic batching, collation),
   samples/s and audio-seconds/s;
2. training steps of stage 1b (encoder + input projector train, LLM frozen) on the same
   batches, steps/s and samples/s, one process;
3. with `--size small` on a GPU: a ~0.5 B-parameter MinMo (Qwen2.5-0.5B-sized LLM, a 12-block
   encoder) in bf16 autocast, and its MFU against `--peak-tflops` (default 989, an H100/H200's
   dense bf16 peak; say which card you ran on).
The loader must never be the bottleneck: its rate must exceed the step rate.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from minmo.audio.encode import flac_bytes  # noqa: E402
from minmo.model.minmo import MinMo, MinMoConfig, SpecialIds  # noqa: E402
from minmo.tokens.text import SPEECH_PLACEHOLDER, encode_chat, load_text_tokenizer  # noqa: E402
from minmo.train.data import StageLoader  # noqa: E402
from minmo.train.flops import FlopCounter  # noqa: E402
from pipelines.shards.writer import write_stage_shards  # noqa: E402
from schemas.units import SAMPLE_RATE_HZ  # noqa: E402


def make_shards(out: Path, n: int, tokenizer) -> float:
    rng = np.random.default_rng(0)
    samples, audio_s = [], 0.0
    for i in range(n):
        seconds = float(rng.uniform(2, 10))
        t = np.arange(int(SAMPLE_RATE_HZ * seconds)) / SAMPLE_RATE_HZ
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 800) * t) + 0.02 * rng.standard_normal(
            t.size
        )
        messages = [
            {"role": "user", "content": f"Transcribe the speech.\n{SPEECH_PLACEHOLDER}"},
            {"role": "assistant", "content": f"utterance number {i} of the benchmark"},
        ]
        ids = encode_chat(tokenizer, messages)
        start = len(encode_chat(tokenizer, messages[:-1], add_generation_prompt=True))
        meta = {"task": "asr", "duration_s": seconds, "target_start": start, "messages": messages}
        samples.append(
            {
                "__key__": f"asr-{i:06d}",
                "json": meta,
                "flac": flac_bytes(wave[None, :].astype(np.float32)),
                "text_tokens.npy": ids,
            }
        )
        audio_s += seconds
    write_stage_shards(samples, out, "stage1", max_samples=64)
    return audio_s


def small_config(vocab: int) -> MinMoConfig:
    """~0.5 B: Qwen2.5-0.5B dimensions for the LLM, a 12-block 512-wide encoder."""
    c = MinMoConfig.tiny(vocab)
    llm = replace(
        c.llm,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        initializer_range=0.02,
    )
    enc = replace(
        c.voice_encoder,
        output_size=512,
        attention_heads=4,
        linear_units=2048,
        num_blocks=10,
        tp_blocks=2,
    )
    return replace(
        c,
        llm=llm,
        voice_encoder=enc,
        input_projector=replace(
            c.input_projector, encoder_size=512, llm_size=896, heads=14, ffn_size=1792
        ),
        output_projector=replace(c.output_projector, llm_size=896),
        duplex=replace(c.duplex, llm_size=896),
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=192)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", choices=["tiny", "small"], default="tiny")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(f"machine: {platform.platform()}, {torch.get_num_threads()} torch threads, device {name}")
    tokenizer = load_text_tokenizer(None)
    with tempfile.TemporaryDirectory() as tmp:
        audio_s = make_shards(Path(tmp) / "stage1", args.samples, tokenizer)
        print(f"shards: {args.samples} samples, {audio_s / 3600:.3f} audio-h")

        loader = StageLoader(
            Path(tmp) / "stage1",
            num_workers=args.workers,
            max_samples=args.batch,
            max_audio_s=1e9,
            max_tokens=10**9,
        )
        t0, n, secs, batches = time.perf_counter(), 0, 0.0, []
        while n < args.samples:
            b = loader.next_batch()
            if b is None:
                loader.next_epoch()
                continue
            n += b.size
            secs += float(b.wave_lengths.sum()) / SAMPLE_RATE_HZ
            batches.append(b)
        dt = time.perf_counter() - t0
        loader.close()
        print(
            f"loader alone ({args.workers} worker): {n / dt:,.1f} samples/s, {secs / dt:,.0f} audio-s/s"
        )

        torch.manual_seed(0)
        vocab = len(tokenizer)
        config = MinMoConfig.tiny(vocab) if args.size == "tiny" else small_config(vocab)
        model = MinMo(config, SpecialIds.from_tokenizer(tokenizer), vocab).to(device)
        model.apply_recipe("1b")
        model.train()
        params = [q for q in model.parameters() if q.requires_grad]
        total = sum(q.numel() for q in model.parameters())
        trainable = sum(q.numel() for q in params)
        opt = torch.optim.AdamW(params, lr=1e-4)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )

        counter = FlopCounter(model)

        def step(b):
            with autocast, counter.watch():
                out = model(b.to(device))
            flops = counter.count(out)
            out["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(out["llm_positions"]), flops

        step(batches[0])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, n, positions, model_flops = time.perf_counter(), 0, 0.0, 0.0
        for i in range(args.steps):
            b = batches[i % len(batches)]
            ran, flops = step(b)
            positions += ran
            model_flops += flops
            n += b.size
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(
            f"model {args.size}: {total / 1e6:.1f} M params, {trainable / 1e6:.1f} M trainable (stage 1b)"
        )
        print(
            f"training steps: {args.steps / dt:.2f} steps/s, {n / dt:,.1f} samples/s, {positions / dt:,.0f} LLM positions/s"
        )
        if device.type == "cuda":
            flops = model_flops / dt
            print(
                f"MFU: {flops / 1e12:.1f} TFLOP/s achieved / {args.peak_tflops:.0f} peak = {flops / (args.peak_tflops * 1e12):.3f}"
            )


if __name__ == "__main__":
    main()
