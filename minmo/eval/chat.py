"""`minmo chat CHECKPOINT AUDIO.wav`: a spoken reply from an export, streamed, with its latency.

Loads the export as `minmo eval` does (minmo.eval.model), asks the model the user's audio with
the chat layout of a stage-3 sample (an optional instruction, then the speech), streams the reply
(minmo.eval.stream.stream_reply: text token by token, 15 speech tokens per 5 text tokens),
prints the text, writes the speech tokens and chat.json, and prints the measured latency terms
beside the paper's. Refused before the model is built: an export without the output projector
(the speech tokens need it), and `--cosyvoice2` (its token2wav cannot be installed: see README
"Talking to a checkpoint").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch

from minmo.eval.model import (
    DUPLEX_MODULES,
    SPEECH_MODULES,
    load_checkpoint,
    read_export,
    require_modules,
)
from minmo.eval.stream import DuplexStreamer, LatencyBudget, Reply, read_audio, stream_reply
from minmo.io.atomic import write_text_atomic
from minmo.model.batch import Batch
from minmo.model.minmo import MinMo
from minmo.tokens.speech import TOKENS_PER_S
from minmo.tokens.text import encode_chat, user_with_audio
from minmo.train.config import ModelSpec
from schemas.units import LLM_HOP_S, SAMPLE_RATE_HZ

COSYVOICE2_GAP = (
    "--cosyvoice2: CosyVoice 2's token2wav (flow matching + HiFT vocoder) is not installable "
    "from PyPI (the official FunAudioLLM/CosyVoice is a git checkout with pinned requirements; "
    "PyPI's 'cosyvoice' 0.0.8 is an unofficial GPL-3.0 wrapper of CosyVoice 1 without them), so "
    "minmo cannot load it through CosyVoice's own code: write the speech tokens (.npy) and turn "
    "them into audio with a CosyVoice 2 checkout (README: Talking to a checkpoint)"
)
# The duplex system prompt of stage-4 samples (jobs/prompts/tasks.yaml, `duplex`): the
# predictor-latency term runs the predictor under the prompt it was trained with.
DUPLEX_SYSTEM = (
    "You are in a live spoken conversation. Decide at every moment whether to listen, start "
    "speaking, keep speaking or stop."
)


@dataclass
class ChatConfig:
    """What `minmo chat` answers and how."""

    checkpoint: str
    """A stage's export directory (`<out>/final/`) with the output projector (stage 2 on)."""
    audio: str
    """The user's speech: a local audio file (any rate, mixed down to mono)."""
    out: str = "chat-out"
    """Directory for speech_tokens.npy and chat.json."""
    instruction: str = ""
    """Text before the speech in the user turn (stage 3's s2s_chat has none)."""
    max_new_tokens: int = 64
    """Longest text reply, in text tokens."""
    min_new_tokens: int = 0
    """Forbid <|im_end|> before this many tokens (benchmarks of untrained models); 0: greedy."""
    max_speech_tokens: int = 1000
    """Longest speech reply, in speech tokens (25 per second)."""
    context_s: float = 2.4
    """Audio the voice encoder sees per duplex step (the predictor's latency term)."""
    cosyvoice2: str | None = None
    """A CosyVoice 2 model directory for token2wav: refused, not installable (see README)."""
    device: str | None = None
    """torch device; None: cuda when present, else cpu."""
    model: ModelSpec = field(default_factory=ModelSpec)
    """The model, for an export whose export.json does not record it (older exports)."""
    seed: int = 0
    """The training seed, for an export whose export.json does not record it."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.max_speech_tokens < 1:
            raise ValueError("max_new_tokens and max_speech_tokens must be >= 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("min_new_tokens must be in [0, max_new_tokens]")
        if self.context_s < LLM_HOP_S:
            raise ValueError(f"context_s must be >= {LLM_HOP_S} s (one LLM frame)")


def chat_batch(tokenizer: Any, wave: np.ndarray, instruction: str) -> Batch:
    """One sample's batch: the user turn (instruction, then the speech markers, as the sample
    builders lay it out) and the generation prompt, with the mono wave."""
    user = {"role": "user", "content": user_with_audio(instruction)}
    ids = encode_chat(tokenizer, [user], add_generation_prompt=True)
    return Batch(
        input_ids=torch.as_tensor(ids, dtype=torch.long)[None],
        input_lengths=torch.tensor([ids.size]),
        target_start=torch.tensor([ids.size]),
        waves=torch.as_tensor(wave, dtype=torch.float32)[None],
        wave_lengths=torch.tensor([wave.shape[-1]]),
    )


def duplex_prompt(tokenizer: Any) -> list[int]:
    """A stage-4 sample's text ids (system prompt, then the user's speech markers)."""
    messages = [
        {"role": "system", "content": DUPLEX_SYSTEM},
        {"role": "user", "content": user_with_audio("")},
    ]
    return [int(i) for i in encode_chat(tokenizer, messages)]


def predictor_latency(
    model: MinMo, tokenizer: Any, wave: np.ndarray, context_s: float
) -> float | None:
    """Mean wall time of one 120 ms duplex step over the user's audio (assistant silent)."""
    streamer = DuplexStreamer(model, duplex_prompt(tokenizer), context_s)
    hop = round(LLM_HOP_S * SAMPLE_RATE_HZ)
    for end in range(hop, wave.shape[-1] + 1, hop):
        streamer.step(wave[:end], 0)
    return streamer.step_s


@dataclass
class ChatResult:
    text: str
    reply: Reply
    latency: LatencyBudget
    out: str
    device: str
    notes: list[str]

    def render(self) -> str:
        n = len(self.reply.speech_tokens)
        lines = [
            f"reply: {self.text!r}",
            f"{len(self.reply.text_ids)} text tokens, {n} speech tokens ({n / TOKENS_PER_S:.2f} s of "
            f"speech) in {self.reply.wall_s:.2f} s -> {self.out}",
            self.latency.render(self.device),
            *self.notes,
        ]
        return "\n".join(lines)


def run_chat(config: ChatConfig) -> ChatResult:
    if config.cosyvoice2 is not None:
        raise ValueError(COSYVOICE2_GAP)
    meta = read_export(config.checkpoint)
    modules = list(meta["modules"])
    require_modules(
        config.checkpoint, str(meta["stage"]), modules, SPEECH_MODULES, "chat", config.audio
    )
    wave = read_audio(config.audio).mean(axis=0)
    ckpt = load_checkpoint(config.checkpoint, config.model, config.seed, config.device)
    batch = chat_batch(ckpt.tokenizer, wave, config.instruction).to(ckpt.device)
    reply = stream_reply(
        ckpt.model, batch, config.max_new_tokens, config.max_speech_tokens, config.min_new_tokens
    )
    text = ckpt.tokenizer.decode(reply.text_ids, skip_special_tokens=True).strip()
    latency = LatencyBudget(
        predictor_step_s=predictor_latency(ckpt.model, ckpt.tokenizer, wave, config.context_s),
        llm_step_s=reply.llm_step_s,
        lm_token_s=reply.lm_token_s,
    )
    notes = []
    if not set(DUPLEX_MODULES) & set(modules):
        notes.append(
            "note: the export has no trained duplex predictor; d_predictor timed its "
            "untrained weights (the time does not depend on them)"
        )
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "speech_tokens.npy", reply.speech_tokens)
    doc = {
        "checkpoint": ckpt.path,
        "stage": ckpt.stage,
        "audio": config.audio,
        "audio_s": wave.shape[-1] / SAMPLE_RATE_HZ,
        "text": text,
        "text_ids": reply.text_ids,
        "speech_tokens": int(reply.speech_tokens.size),
        "chunks": [
            {"tokens": len(c.tokens), "n_semantic": c.n_semantic, "reason": c.reason}
            for c in reply.chunks
        ],
        "wall_s": reply.wall_s,
        "device": str(ckpt.device),
        "latency": latency.to_dict(),
    }
    write_text_atomic(
        pafs.LocalFileSystem(),
        str(out / "chat.json"),
        json.dumps(doc, indent=2, ensure_ascii=False),
    )
    return ChatResult(text, reply, latency, str(out), str(ckpt.device), notes)
