"""Benchmark: MinMo's streaming reply (decode throughput) and the paper's latency terms.

    .venv/bin/python bench/eval.py [--size tiny|full] [--device cpu|cuda] [--repeats 3]

Builds MinMo with random weights (tiny, or `--size full` on a lent GPU: Qwen2.5-7B-sized LLM,
the SenseVoice-Large stand-in, CosyVoice 2's LM; the latency terms do not depend on the weights),
then on `--audio-s` seconds of noise as the user's speech:
1. the streaming reply (minmo.eval.stream.stream_reply, the path `minmo chat` runs): exactly
   `--text-tokens` text tokens (<|im_end|> forbidden before, so an untrained model says enough),
   15 speech tokens per 5 text tokens, up to `--speech-tokens`; decode throughput = seconds of
   speech produced (25 tokens per second) per wall second, and text tokens per second;
2. the latency terms beside the paper's: d_predictor (one 120 ms duplex step: encoder +
   projector on a 2.4 s window, one LLM position, the predictor), 5 x d_llm, 15 x d_lm;
   token2wav is n/a (CosyVoice 2 is not installable, README "Talking to a checkpoint").
On CUDA the model runs under bf16 autocast (`--no-bf16` for fp32). A warm-up reply runs first.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.machine import cpu_model  # noqa: E402
from minmo.eval.chat import chat_batch, predictor_latency  # noqa: E402
from minmo.eval.stream import LatencyBudget, stream_reply  # noqa: E402
from minmo.tokens.speech import TOKENS_PER_S  # noqa: E402
from minmo.tokens.text import load_text_tokenizer  # noqa: E402
from minmo.train.config import ModelSpec  # noqa: E402
from minmo.train.loop import build_model  # noqa: E402
from schemas.units import SAMPLE_RATE_HZ  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--audio-s", type=float, default=3.0, help="the user's speech, seconds")
    parser.add_argument("--text-tokens", type=int, default=20, help="text tokens per reply")
    parser.add_argument("--speech-tokens", type=int, default=300, help="speech tokens at most")
    parser.add_argument("--repeats", type=int, default=3, help="timed replies")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    device = torch.device(args.device)
    tokenizer = load_text_tokenizer(None)
    torch.manual_seed(0)
    started = time.perf_counter()
    with device:  # random init straight on the device (a full model is ~9 B parameters)
        model = build_model(ModelSpec(size=args.size), tokenizer)
    model.eval()
    build_s = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    wave = np.random.default_rng(0).standard_normal(round(args.audio_s * SAMPLE_RATE_HZ)) * 0.1
    wave = wave.astype(np.float32)
    batch = chat_batch(tokenizer, wave, "").to(device)
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda" and args.bf16)

    def reply():
        return stream_reply(
            model, batch, args.text_tokens, args.speech_tokens, min_new_tokens=args.text_tokens
        )

    with torch.no_grad(), autocast:
        reply()  # warm-up
        replies = [reply() for _ in range(args.repeats)]
        predictor_s = predictor_latency(model, tokenizer, wave, context_s=2.4)

    speech = [r.speech_tokens.size for r in replies]
    walls = [r.wall_s for r in replies]
    audio_per_s = sum(speech) / TOKENS_PER_S / sum(walls)
    text_per_s = sum(len(r.text_ids) for r in replies) / sum(walls)
    lm_steps = [r.lm_token_s for r in replies if r.lm_token_s is not None]
    budget = LatencyBudget(
        predictor_step_s=predictor_s,
        llm_step_s=statistics.fmean(s for r in replies for s in r.llm_steps_s),
        lm_token_s=statistics.fmean(lm_steps) if lm_steps else None,
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(
        f"bench/eval.py {time.strftime('%Y-%m-%d')} | {args.size} MinMo, {params / 1e6:.1f} M "
        f"parameters (random), built in {build_s:.1f} s | {device.type}: {name} | "
        f"torch {torch.__version__}, python {platform.python_version()}, threads "
        f"{torch.get_num_threads()}{', bf16 autocast' if device.type == 'cuda' and args.bf16 else ''}"
    )
    print(
        f"streaming reply to {args.audio_s:.1f} s of speech, {args.repeats} runs: "
        f"{statistics.fmean(speech):.0f} speech tokens "
        f"({statistics.fmean(speech) / TOKENS_PER_S:.1f} s of speech) and {args.text_tokens} "
        f"text tokens in {statistics.fmean(walls):.2f} s"
    )
    print(
        f"decode throughput: {audio_per_s:.2f} audio-s per s (speech produced), "
        f"{text_per_s:.1f} text tokens per s"
    )
    print(budget.render(name))


if __name__ == "__main__":
    main()
