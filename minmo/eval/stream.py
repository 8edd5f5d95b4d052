"""MinMo's streaming inference path, step by step, and the paper's latency budget.

Owns: the reply path of `minmo chat` (prompt with the user's speech -> the LLM's greedy text,
one token at a time with a KV cache -> every `text_chunk` (5) tokens the output projector's
semantic vectors go to the voice token LM, which answers with up to `speech_chunk` (15) speech
tokens), the duplex predictor stepped one 120 ms frame at a time (`DuplexStreamer`, used by
`minmo duplex-sim` and for the predictor's latency term), and the measured latency terms beside
the paper's. Must not: load checkpoints (minmo.eval.model), read shards, or score anything.

The paper's latency (MinMo §5, full duplex): predictor 250 ms + 5 text tokens 150 ms + 15 speech
tokens 70 ms + token2wav 130 ms ~= 600 ms. Here each term is the measured wall time of the same
step on this machine:

    d_predictor   one 120 ms step of the duplex path: the voice encoder and input projector on
                  the last `context_s` of audio, one LLM position with a KV cache, the predictor
    5 x d_llm     five LLM decode steps (one token each, KV cache), mean step x 5
    15 x d_lm     fifteen voice-LM steps, mean per speech token (each chunk's prefill of its 5
                  semantic vectors included, as in the paper's chunk) x 15
    token2wav     CosyVoice 2's flow matching + HiFT: not available (README: the gap)

Dimension legend: H LLM width, V voice-LM width, S samples at 16 kHz.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from minmo.audio.decode import decode_audio
from minmo.audio.resample import resample
from minmo.eval.model import prompt_embeds
from minmo.model.batch import Batch
from minmo.model.minmo import MinMo
from minmo.model.voice_lm import StreamChunk, cache_keyword, new_cache
from schemas.units import LLM_HOP_S, SAMPLE_RATE_HZ

HOP_SAMPLES = round(LLM_HOP_S * SAMPLE_RATE_HZ)  # 1920: one LLM position of speech
# The paper's figures (ms), in the order printed.
PAPER_MS = {"d_predictor": 250.0, "5 x d_llm": 150.0, "15 x d_lm": 70.0, "token2wav": 130.0}
PAPER_TOTAL_MS = 600.0


def read_audio(path: str) -> np.ndarray:
    """A local audio file as float32 (channels, samples) at 16 kHz."""
    with open(path, "rb") as f:
        decoded = decode_audio(f.read(), path.rsplit(".", 1)[-1].lower())
    return resample(decoded.samples.astype(np.float32), decoded.sample_rate_hz)


@dataclass
class LatencyBudget:
    """Measured step times (seconds); None where the step did not run or is not available."""

    predictor_step_s: float | None = None
    llm_step_s: float | None = None
    lm_token_s: float | None = None
    token2wav_s: float | None = None

    def terms_ms(self) -> dict[str, float | None]:
        def ms(value: float | None, times: int) -> float | None:
            return None if value is None else value * times * 1000.0

        return {
            "d_predictor": ms(self.predictor_step_s, 1),
            "5 x d_llm": ms(self.llm_step_s, 5),
            "15 x d_lm": ms(self.lm_token_s, 15),
            "token2wav": ms(self.token2wav_s, 1),
        }

    def to_dict(self) -> dict[str, Any]:
        terms = self.terms_ms()
        return {
            "terms_ms": terms,
            "total_ms": sum(v for v in terms.values() if v is not None),
            "paper_ms": PAPER_MS,
            "paper_total_ms": PAPER_TOTAL_MS,
        }

    def render(self, device: str) -> str:
        lines = [f"latency budget on {device} (measured)   paper"]
        for name, value in self.terms_ms().items():
            shown = "n/a (no CosyVoice 2)" if value is None and name == "token2wav" else None
            shown = shown or ("n/a" if value is None else f"{value:9.1f} ms")
            lines.append(f"  {name:<12} {shown:>22}   {PAPER_MS[name]:5.0f} ms")
        total = self.to_dict()["total_ms"]
        lines.append(f"  {'total':<12} {total:>19.1f} ms   ~{PAPER_TOTAL_MS:.0f} ms")
        return "\n".join(lines)


def _timed(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class TextStep:
    """One LLM decode step of the reply: the token fed, its semantic vector (1, V) for the voice
    LM (the output projector over [embedding ‖ last hidden] at that position, as in training's
    `MinMo._semantic`), and the step's wall time."""

    token: int
    semantic: torch.Tensor
    step_s: float


@torch.no_grad()
def stream_text(
    model: MinMo,
    embeds: torch.Tensor,
    max_new_tokens: int,
    min_new_tokens: int = 0,
) -> Iterator[TextStep]:
    """Greedy text of one sample, token by token, from its (1, W, H) prompt embeddings
    (`minmo.eval.model.prompt_embeds`), up to (not including) <|im_end|>.

    The prompt is one prefill; each yielded token is then fed back alone with the KV cache,
    which gives both its semantic vector and the next token's logits. `min_new_tokens` forbids
    <|im_end|> before that many tokens (for benchmarks of an untrained model, which may stop at
    once); 0 keeps plain greedy decoding, equal to `greedy_decode`."""
    llm = model.llm
    turn_end = model.special.turn_end
    embedding = llm.get_input_embeddings()
    cache = new_cache(llm.config)
    kw = {cache_keyword(llm.get_base_model().forward): cache}
    out = llm(inputs_embeds=embeds, use_cache=True, **kw)
    logits = out.logits[0, -1]
    for i in range(max_new_tokens):
        if i < min_new_tokens:
            logits = logits.clone()
            logits[turn_end] = float("-inf")
        token = int(logits.argmax())
        if token == turn_end:
            return
        start = _timed(embeds.device)
        token_emb = embedding(torch.tensor([[token]], device=embeds.device))
        out = llm(inputs_embeds=token_emb, use_cache=True, output_hidden_states=True, **kw)
        hidden = out.hidden_states[-1][:, -1]
        semantic = model.output_projector(token_emb[:, 0], hidden)
        step_s = _timed(embeds.device) - start
        logits = out.logits[0, -1]
        yield TextStep(token, semantic, step_s)


@dataclass
class Reply:
    """What `stream_reply` produced: text ids, speech tokens per chunk, and the step times."""

    text_ids: list[int] = field(default_factory=list)
    chunks: list[StreamChunk] = field(default_factory=list)
    llm_steps_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def speech_tokens(self) -> np.ndarray:
        return np.asarray([t for c in self.chunks for t in c.tokens], dtype=np.int32)

    @property
    def lm_token_s(self) -> float | None:
        tokens = sum(len(c.tokens) for c in self.chunks)
        return sum(c.lm_s for c in self.chunks) / tokens if tokens else None

    @property
    def llm_step_s(self) -> float | None:
        return statistics.fmean(self.llm_steps_s) if self.llm_steps_s else None


@torch.no_grad()
def stream_reply(
    model: MinMo,
    batch: Batch,
    max_new_tokens: int,
    max_speech_tokens: int,
    min_new_tokens: int = 0,
) -> Reply:
    """The spoken reply to one sample: text and speech tokens, interleaved as they stream.

    The voice LM pulls semantic vectors from the text stream; `generate_stream` buffers them
    into chunks of 5 and answers each with up to 15 speech tokens (FILL ends a chunk early), then
    after the text ends speaks the rest until END_OF_SPEECH (the paper's 5:15 interleave)."""
    if batch.size != 1:
        raise ValueError(f"stream_reply takes one sample, got a batch of {batch.size}")
    started = time.perf_counter()
    embeds, _ = prompt_embeds(model, batch)
    reply = Reply()

    def semantic() -> Iterator[torch.Tensor]:
        for step in stream_text(model, embeds, max_new_tokens, min_new_tokens):
            reply.text_ids.append(step.token)
            reply.llm_steps_s.append(step.step_s)
            yield step.semantic

    for chunk in model.voice_lm.generate_stream(semantic(), max_tokens=max_speech_tokens):
        reply.chunks.append(chunk)
    reply.wall_s = time.perf_counter() - started
    return reply


class DuplexStreamer:
    """The duplex predictor fed one 120 ms frame at a time, as a deployed system runs it.

    The prompt (a stage-4 sample's chat up to and including <|startofspeech|>) is prefilled once;
    each `step` then encodes the last `context_s` of the user's audio (the voice encoder and
    input projector look at the whole window, so a window, not the whole call, keeps a step's
    cost constant and uses no future audio), feeds the window's last projected frame to the LLM
    as one new position (KV cache), and runs the predictor (causal) over the frames so far with
    the assistant-activity track. Its decision for this frame is the argmax of the last logits.
    """

    def __init__(self, model: MinMo, prompt_ids: list[int], context_s: float) -> None:
        special = model.special
        if special.speech_start not in prompt_ids:
            raise ValueError("the duplex prompt has no <|startofspeech|>")
        self.model = model
        self.device = next(model.parameters()).device
        self.context = max(1, round(context_s / LLM_HOP_S)) * HOP_SAMPLES
        llm = model.llm
        prefix = prompt_ids[: prompt_ids.index(special.speech_start) + 1]
        self.cache = new_cache(llm.config)
        self.kw = {cache_keyword(llm.get_base_model().forward): self.cache}
        ids = torch.tensor([prefix], device=self.device)
        with torch.no_grad():
            llm(inputs_embeds=llm.get_input_embeddings()(ids), use_cache=True, **self.kw)
        self.hidden: list[torch.Tensor] = []
        self.activity: list[int] = []
        self.steps_s: list[float] = []

    @torch.no_grad()
    def step(self, received: np.ndarray, active: int) -> int:
        """The decision (a FrameLabel value) once `received` (the user's audio so far, 16 kHz
        mono) has arrived; `active`: the assistant is talking in this frame (0/1)."""
        start = _timed(self.device)
        model = self.model
        window = torch.as_tensor(received[-self.context :], device=self.device)[None]
        frames, lengths = model.voice_encoder(window, torch.tensor([window.shape[1]]))
        speech, _ = model.input_projector(frames, lengths.to(self.device))
        out = model.llm(
            inputs_embeds=speech[:, -1:], use_cache=True, output_hidden_states=True, **self.kw
        )
        self.hidden.append(out.hidden_states[-1][:, -1])
        self.activity.append(int(active))
        hidden = torch.stack(self.hidden, dim=1)
        activity = torch.tensor([self.activity], device=self.device)
        decision = int(model.duplex(hidden, activity)[0, -1].argmax())
        self.steps_s.append(_timed(self.device) - start)
        return decision

    @property
    def step_s(self) -> float | None:
        return statistics.fmean(self.steps_s) if self.steps_s else None
