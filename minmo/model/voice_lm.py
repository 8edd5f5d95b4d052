"""MinMo's voice token LM: CosyVoice 2's Qwen2 speech-token LM fed semantic vectors, 5:15.

Owns: the sequence layout (which input goes where, which token each position predicts), the
teacher-forced loss, streaming generation with a KV cache, and loading CosyVoice 2's `llm.pt`.
Must not: know about the LLM, the output projector or token2wav; it sees semantic vectors (already
at this LM's width) and speech-token ids only.

Dimension legend: B batch, N semantic vectors (one per text token the LLM says), M speech tokens
(25 Hz, CosyVoice 2 S3 tokenizer v2), L sequence positions, H hidden size, V = speech_vocab + 3.

Vocabulary (output head and speech embedding, both V rows), the ids of CosyVoice 2's `Qwen2LM`:

    0 .. 6560   speech tokens
    6561        END_OF_SPEECH  (CosyVoice 2 `eos_token = speech_token_size`)
    6562        unused         (CosyVoice 2 reserves it; listed as a stop id, never a target)
    6563        FILL           (CosyVoice 2 `fill_token = speech_token_size + 2`: "need more text")

Input-only markers are rows of `special_embedding` (CosyVoice 2's 2-row `llm_embedding`):
row 0 = start of sequence (`sos`), row 1 = turn of speech (CosyVoice 2's `task_id`: "the text
is complete, speak the rest"). Keeping those row numbers makes `llm.pt` load 1:1.

Text embedding: CosyVoice 2 embeds text tokens with Qwen2.5's 151936 x 896 table. MinMo replaces
text tokens by the output projector's semantic vectors, so that table (136 M parameters) and the
tied text `lm_head` are not needed: our `Qwen2Model` is built with `vocab_size=1` and its
`embed_tokens` removed; `from_cosyvoice2` drops those two keys (and only those).

Sequence for one sample (bistream, CosyVoice 2's `prepare_lm_input_target`), with F = N // 5
full text chunks, when every full chunk has its 15 speech tokens (M >= 15 F):

    sos | sem[0:5] sp[0:15] | sem[5:10] sp[15:30] | ... | sem[5F:N] turn sp[15F:M]

targets: ignore at sos and the first 4 semantic vectors of a chunk; the 5th predicts the chunk's
first speech token; each speech position predicts the next one, and the chunk's last predicts
FILL; the tail (sem[5F:N], possibly empty) predicts nothing until `turn`, which predicts
sp[15F] (or END_OF_SPEECH when no speech is left); the last position predicts END_OF_SPEECH.

Short speech (M < 15 F): the interleave would need speech that does not exist, so the sample
falls back to CosyVoice 2's unistream layout, which is the same formula with F = 0:
`sos sem[0:N] turn sp[0:M]`. CosyVoice 2 uses the stricter test M / N > 3 and additionally
trains half of the long-enough samples unistream at random; MinMo only decodes in streaming
mode, so we interleave whenever the layout is valid and never pick the layout at random
(`streaming=False` asks for unistream explicitly).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minmo.config import ConfigError
from schemas.shards import SPEECH_VOCAB

IGNORE = -100

# Rows of `special_embedding` (CosyVoice 2's `llm_embedding`): `sos` = 0, `task_id` = 1.
SOS = 0
TURN_OF_SPEECH = 1

# CosyVoice 2 state-dict keys we drop on purpose (text embedding, tied text head).
_COSY_PREFIX = "llm.model.model."
_COSY_DROPPED = ("llm.model.model.embed_tokens.weight", "llm.model.lm_head.weight")
_COSY_RENAMED = {
    "llm_embedding.weight": "special_embedding.weight",
    "llm_decoder.weight": "head.weight",
    "llm_decoder.bias": "head.bias",
    "speech_embedding.weight": "speech_embedding.weight",
}


@dataclass
class VoiceLMConfig:
    """Qwen2 dimensions of the voice token LM (defaults: CosyVoice 2 LM = Qwen2.5-0.5B body)."""

    hidden_size: int = 896
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    intermediate_size: int = 4864
    rope_theta: float = 1e6
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    speech_vocab: int = SPEECH_VOCAB
    """Speech-token codes; the head has speech_vocab + 3 rows."""
    text_chunk: int = 5
    """Semantic vectors per chunk (the paper's 5:15 ratio)."""
    speech_chunk: int = 15
    """Speech tokens generated per text chunk."""
    initializer_range: float = 0.02
    """Std of the random init of the body and the head. Real runs load CosyVoice 2's weights; a tiny
    random LM that stays frozen (stage 2a) needs a wider init, or its logits are too flat for the
    output projector to steer."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} must be a multiple of num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads {self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.text_chunk < 1 or self.speech_chunk < 1:
            raise ConfigError("text_chunk and speech_chunk must be >= 1 (the paper: 5 and 15)")

    @classmethod
    def tiny(cls) -> VoiceLMConfig:
        return cls(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            max_position_embeddings=4096,
            initializer_range=0.3,
        )

    @classmethod
    def full(cls) -> VoiceLMConfig:
        return cls()

    # Token ids in the speech vocabulary (see the module docstring).
    @property
    def end_of_speech(self) -> int:
        return self.speech_vocab

    @property
    def unused(self) -> int:
        return self.speech_vocab + 1

    @property
    def fill(self) -> int:
        return self.speech_vocab + 2

    @property
    def vocab_size(self) -> int:
        return self.speech_vocab + 3

    def qwen2_config(self, vocab_size: int = 1, tie_word_embeddings: bool = False):
        from transformers import Qwen2Config

        return Qwen2Config(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            max_position_embeddings=self.max_position_embeddings,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps,
            initializer_range=self.initializer_range,
            tie_word_embeddings=tie_word_embeddings,
        )


Slot = tuple[str, int]  # ("sos" | "sem" | "speech" | "turn", index) or a target kind


@lru_cache(maxsize=4096)
def plan(
    n_semantic: int,
    n_speech: int,
    text_chunk: int = 5,
    speech_chunk: int = 15,
    streaming: bool = True,
) -> tuple[tuple[Slot, ...], tuple[Slot, ...]]:
    """Symbolic layout of one sample: (inputs, targets), each of length L.

    inputs: ("sos", 0) | ("sem", i) | ("speech", k) | ("turn", 0).
    targets: ("speech", k) | ("fill", 0) | ("eos", 0) | ("ignore", 0).
    """
    if n_semantic < 0 or n_speech < 0:
        raise ValueError(f"lengths must be >= 0, got {n_semantic} semantic, {n_speech} speech")
    full = n_semantic // text_chunk
    if not streaming or n_speech < speech_chunk * full:
        full = 0  # unistream: all semantic vectors first (see the module docstring)
    inputs: list[Slot] = [("sos", 0)]
    for j in range(full):
        inputs += [("sem", j * text_chunk + i) for i in range(text_chunk)]
        inputs += [("speech", j * speech_chunk + i) for i in range(speech_chunk)]
    inputs += [("sem", i) for i in range(full * text_chunk, n_semantic)]
    inputs.append(("turn", 0))
    inputs += [("speech", k) for k in range(full * speech_chunk, n_speech)]

    targets: list[Slot] = []
    for p, (kind, _) in enumerate(inputs):
        if p == len(inputs) - 1:
            targets.append(("eos", 0))
        elif inputs[p + 1][0] == "speech":
            targets.append(inputs[p + 1])
        elif kind == "speech":  # a chunk's last speech token: wait for more text
            targets.append(("fill", 0))
        else:
            targets.append(("ignore", 0))
    return tuple(inputs), tuple(targets)


@dataclass
class StreamChunk:
    """Speech tokens generated after one text chunk (or after the turn-of-speech marker).

    `lm_s` is the wall time of the LM forwards for this chunk: the prefill of the inputs that
    were waiting (previous token, new semantic vectors, marker) plus every decoding step. The
    paper's latency is 5 d_llm + 15 d_lm + 15 d_syn; `per_token_s` is d_lm.
    """

    tokens: list[int]
    lm_s: float
    first_token_s: float  # time until the first sampled id (token, FILL or END_OF_SPEECH)
    n_semantic: int  # semantic vectors fed so far, including this chunk's
    final: bool  # generated after the turn-of-speech marker
    reason: str  # "chunk_full" | "fill" | "end_of_speech" | "max_tokens"

    @property
    def per_token_s(self) -> float:
        return self.lm_s / max(1, len(self.tokens))


class VoiceTokenLM(nn.Module):
    """Qwen2 body + speech embedding + special embedding + speech head (CosyVoice 2 layout)."""

    def __init__(self, config: VoiceLMConfig) -> None:
        super().__init__()
        from transformers import Qwen2Model

        self.config = config
        h = config.hidden_size
        # vocab_size=1 so no text table is allocated; inputs always come as inputs_embeds.
        self.model = Qwen2Model(config.qwen2_config(vocab_size=1))
        self.model.embed_tokens = None
        self.special_embedding = nn.Embedding(2, h)
        self.speech_embedding = nn.Embedding(config.vocab_size, h)
        self.head = nn.Linear(h, config.vocab_size)
        nn.init.normal_(self.head.weight, std=config.initializer_range)
        nn.init.zeros_(self.head.bias)
        self._cache_kw = cache_keyword(self.model.forward)

    # ---- layout -------------------------------------------------------------------------------

    def layout(
        self, n_semantic: int, n_speech: int, streaming: bool = True
    ) -> list[tuple[str, int]]:
        c = self.config
        return list(plan(n_semantic, n_speech, c.text_chunk, c.speech_chunk, streaming)[0])

    def assemble(
        self,
        semantic: torch.Tensor,
        semantic_lengths: torch.Tensor,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        streaming: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's sequences, laid out as `plan` says, with index arithmetic (no loop over
        samples): (B, L, H) inputs (0 on padding), (B, L) targets (IGNORE on padding), (B,)
        lengths. One host sync (L).

        semantic (B, N, H), speech (B, M) ids (anything past a length is ignored), lengths (B,).
        Position p of a sample with F full chunks (`plan`'s F) holds: p = 0 sos; p in
        [1, 1 + F (t + s)) chunk j = (p - 1) // (t + s), offset o = (p - 1) % (t + s): sem[j t + o]
        for o < t, else speech[j s + o - t]; after the chunks, the tail's semantic vectors, turn,
        then the rest of the speech.
        """
        c = self.config
        tc, sc = c.text_chunk, c.speech_chunk
        batch, m = speech.shape
        n_max = semantic.shape[1]
        device = speech.device
        n_sem = semantic_lengths.to(device=device, dtype=torch.long)[:, None]
        n_sp = speech_lengths.to(device=device, dtype=torch.long)[:, None]
        valid = torch.arange(m, device=device)[None, :] < n_sp
        speech_ids = speech.long().masked_fill(~valid, 0)
        speech_emb = self.speech_embedding(speech_ids)  # one lookup for the batch
        full = n_sem // tc
        # Unistream (no full chunk) when asked, or when the speech is too short (docstring).
        full = torch.where((n_sp >= sc * full) & streaming, full, 0)
        lengths = n_sem + n_sp + 2
        p = torch.arange(int(lengths.max()), device=device)[None, :]
        chunks_end = 1 + full * (tc + sc)
        in_chunks = (p >= 1) & (p < chunks_end)
        j, o = torch.div(p - 1, tc + sc, rounding_mode="floor"), (p - 1) % (tc + sc)
        t = p - chunks_end  # position in the tail
        tail_sem = n_sem - full * tc
        in_tail = (p >= chunks_end) & (p < lengths)
        is_sem = (in_chunks & (o < tc)) | (in_tail & (t < tail_sem))
        is_turn = in_tail & (t == tail_sem)
        is_speech = (in_chunks & (o >= tc)) | (in_tail & (t > tail_sem))
        sem_index = torch.where(in_chunks, j * tc + o, full * tc + t)
        speech_index = torch.where(in_chunks, j * sc + o - tc, full * sc + t - tail_sem - 1)

        # Inputs: rows of [special (2) | semantic (N) | speech (M) | zero (1)].
        zero = 2 + n_max + m
        rows = torch.where(is_speech, 2 + n_max + speech_index, zero)
        rows = torch.where(is_sem, 2 + sem_index, rows)
        rows = torch.where(is_turn, TURN_OF_SPEECH, rows)
        rows = torch.where(p == 0, SOS, rows).expand(batch, -1)
        dtype = speech_emb.dtype
        hidden = speech_emb.shape[-1]
        pool = torch.cat(
            [
                self.special_embedding.weight.to(dtype)[None].expand(batch, -1, -1),
                semantic.to(dtype),
                speech_emb,
                speech_emb.new_zeros(batch, 1, hidden),
            ],
            dim=1,
        )
        inputs = torch.gather(pool, 1, rows[..., None].expand(-1, -1, hidden))

        # Targets: the next input's speech id; FILL after a chunk's last speech token; EOS last.
        next_speech = torch.cat([is_speech[:, 1:], is_speech.new_zeros(batch, 1)], dim=1)
        next_index = torch.cat([speech_index[:, 1:], speech_index.new_zeros(batch, 1)], dim=1)
        ids = torch.cat([speech_ids, speech_ids.new_full((batch, 1), IGNORE)], dim=1)
        targets = torch.gather(ids, 1, torch.where(next_speech, next_index, m))
        targets = torch.where(~next_speech & is_speech, c.fill, targets)
        targets = torch.where(p == lengths - 1, c.end_of_speech, targets)
        targets = torch.where(p < lengths, targets, IGNORE)
        return inputs, targets, lengths[:, 0]

    def build_sequence(
        self, semantic: torch.Tensor, speech: torch.Tensor, streaming: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample: (N, H) semantic vectors, (M,) speech ids -> (L, H) inputs, (L,) targets.

        Targets are speech-vocabulary ids, IGNORE (-100) where nothing is predicted.
        """
        if semantic.ndim != 2 or semantic.shape[1] != self.config.hidden_size:
            raise ValueError(
                f"semantic must be (N, {self.config.hidden_size}), got {tuple(semantic.shape)}"
            )
        if speech.ndim != 1:
            raise ValueError(f"speech must be (M,), got {tuple(speech.shape)}")
        inputs, targets, _ = self.assemble(
            semantic[None],
            torch.tensor([semantic.shape[0]]),
            speech[None],
            torch.tensor([speech.shape[0]]),
            streaming,
        )
        return inputs[0], targets[0]

    # ---- training -----------------------------------------------------------------------------

    def forward(
        self,
        semantic: torch.Tensor,
        semantic_lengths: torch.Tensor,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        streaming: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Teacher-forced loss. semantic (B, N, H), speech (B, M) long, lengths (B,).

        Returns loss (mean cross-entropy over predicted positions of the whole batch), logits
        (B, L, V), targets (B, L) with IGNORE on padding, n_targets, lengths (B,).
        """
        # The embedding lookup happens in here (FSDP2 needs lookups inside a forward).
        inputs, targets, lengths = self.assemble(
            semantic, semantic_lengths, speech, speech_lengths, streaming
        )
        mask = torch.arange(inputs.shape[1], device=inputs.device)[None, :] < lengths[:, None]
        hidden = self.model(inputs_embeds=inputs, attention_mask=mask.long(), use_cache=False)
        logits = self.head(hidden.last_hidden_state)
        n_targets = (targets != IGNORE).sum()
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        ) / n_targets.clamp(min=1)
        return {
            "loss": loss,
            "logits": logits,
            "targets": targets,
            "n_targets": n_targets,
            "lengths": lengths,
        }

    # ---- streaming inference ------------------------------------------------------------------

    @torch.no_grad()
    def generate_stream(
        self,
        semantic_chunks: Iterable[torch.Tensor],
        max_tokens: int = 2000,
        sampling: str = "greedy",
        top_k: int = 25,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Iterator[StreamChunk]:
        """Speech tokens while semantic vectors arrive (CosyVoice 2's bistream inference).

        semantic_chunks: (k, H) tensors in arrival order (any k; buffered into chunks of
        `text_chunk`). After each full chunk, up to `speech_chunk` tokens are generated (stop on
        FILL: wait for text); once the iterable ends, the remaining vectors and the
        turn-of-speech marker are fed and tokens come until END_OF_SPEECH or `max_tokens` in
        all. As in CosyVoice 2, FILL is never fed back, and after `speech_chunk` tokens the
        model is not asked (FILL is implied). END_OF_SPEECH cannot be sampled before the text
        ends, nor FILL after it. sampling: "greedy" or "top_k" (with `top_k`, `temperature`).
        Call `.eval()` first if dropout is configured.
        """
        if sampling not in ("greedy", "top_k"):
            raise ValueError(f"sampling must be 'greedy' or 'top_k', got {sampling!r}")
        c = self.config
        weight = self.speech_embedding.weight
        device, dtype = weight.device, weight.dtype
        cache = new_cache(self.model.config)
        allow_stream = torch.full((c.vocab_size,), float("-inf"), device=device)
        allow_stream[: c.speech_vocab] = 0
        allow_final = allow_stream.clone()
        allow_stream[c.fill] = 0
        allow_final[c.end_of_speech] = 0

        pending: list[torch.Tensor] = [self.special_embedding.weight[SOS : SOS + 1]]
        total = 0
        fed = 0

        def pick(logits: torch.Tensor, allow: torch.Tensor) -> int:
            scores = logits.float() + allow
            if sampling == "greedy":
                return int(scores.argmax())
            values, ids = scores.div(temperature).topk(min(top_k, scores.numel()))
            probs = values.softmax(-1)
            return int(ids[torch.multinomial(probs, 1, generator=generator)])

        def decode(limit: int, final: bool) -> StreamChunk:
            nonlocal pending, total
            stop = c.end_of_speech if final else c.fill
            allow = allow_final if final else allow_stream
            tokens: list[int] = []
            reason = "max_tokens" if final else "chunk_full"
            start = time.perf_counter()
            first = 0.0
            while len(tokens) < limit:
                x = torch.cat([p.to(device, dtype) for p in pending])[None]
                out = self.model(inputs_embeds=x, use_cache=True, **{self._cache_kw: cache})
                token = pick(self.head(out.last_hidden_state[0, -1]), allow)
                if not first:
                    first = time.perf_counter() - start
                pending = []
                if token == stop:
                    reason = "end_of_speech" if final else "fill"
                    break
                tokens.append(token)
                total += 1
                pending = [weight[token : token + 1]]
            else:
                if total >= max_tokens:
                    reason = "max_tokens"
            lm_s = time.perf_counter() - start
            return StreamChunk(tokens, lm_s, first or lm_s, fed, final, reason)

        buffer: list[torch.Tensor] = []
        buffered = 0
        for chunk in semantic_chunks:
            if chunk.ndim != 2 or chunk.shape[1] != c.hidden_size:
                raise ValueError(
                    f"semantic chunks must be (k, {c.hidden_size}), got {tuple(chunk.shape)}"
                )
            buffer.append(chunk)
            buffered += int(chunk.shape[0])
            while buffered >= c.text_chunk:
                joined = torch.cat(buffer)
                pending.append(joined[: c.text_chunk])
                buffer, buffered = [joined[c.text_chunk :]], buffered - c.text_chunk
                fed += c.text_chunk
                piece = decode(min(c.speech_chunk, max_tokens - total), final=False)
                yield piece
                if piece.reason == "max_tokens":
                    return
        pending += buffer
        pending.append(self.special_embedding.weight[TURN_OF_SPEECH : TURN_OF_SPEECH + 1])
        fed += buffered
        yield decode(max_tokens - total, final=True)

    # ---- CosyVoice 2 checkpoints ----------------------------------------------------------------

    @classmethod
    def from_cosyvoice2(
        cls, llm_pt: str | Path, config: VoiceLMConfig | None = None
    ) -> VoiceTokenLM:
        """Load CosyVoice 2's `llm.pt` (its `Qwen2LM` state dict).

        Mapping: llm.model.model.{layers.*, norm.weight} -> model.*; llm_embedding ->
        special_embedding (row 0 sos, row 1 task_id = turn of speech); llm_decoder -> head;
        speech_embedding -> speech_embedding. Dropped on purpose: the text embedding
        (llm.model.model.embed_tokens.weight) and the tied text head (llm.model.lm_head.weight).
        Any other key, any of our parameters left unfilled, or a shape mismatch is an error.
        """
        config = config or VoiceLMConfig.full()
        state = torch.load(Path(llm_pt), map_location="cpu", weights_only=True)
        if (
            isinstance(state, dict)
            and "state_dict" in state
            and isinstance(state["state_dict"], dict)
        ):
            state = state["state_dict"]
        model = cls(config)
        ours = model.state_dict()
        mapped: dict[str, torch.Tensor] = {}
        unexpected: list[str] = []
        for key, value in state.items():
            if key in _COSY_DROPPED or key.endswith("rotary_emb.inv_freq"):
                continue  # text-only tensors, or a buffer transformers recomputes
            if key in _COSY_RENAMED:
                name = _COSY_RENAMED[key]
            elif key.startswith(_COSY_PREFIX):
                name = "model." + key[len(_COSY_PREFIX) :]
            else:
                name = None
            if name is None or name not in ours:
                unexpected.append(key)
            else:
                mapped[name] = value
        missing = sorted(set(ours) - set(mapped))
        bad_shape = [
            f"{k}: checkpoint {tuple(v.shape)} vs ours {tuple(ours[k].shape)}"
            for k, v in mapped.items()
            if v.shape != ours[k].shape
        ]
        problems = []
        if unexpected:
            problems.append(f"unexpected keys (not CosyVoice 2 Qwen2LM?): {sorted(unexpected)}")
        if missing:
            problems.append(f"our parameters not in the checkpoint: {missing}")
        if bad_shape:
            problems.append(
                "shape mismatches (pass the matching VoiceLMConfig, e.g. .full() for "
                f"CosyVoice2-0.5B): {bad_shape}"
            )
        if problems:
            raise ValueError(f"cannot load {llm_pt} as a CosyVoice 2 LM: " + "; ".join(problems))
        model.load_state_dict(mapped, strict=True)
        return model


def cache_keyword(forward: Any) -> str:
    """The keyword a transformers model's `forward` takes its KV cache by: transformers 5.2x
    renames `past_key_values` to `cache`; accept either (also used by minmo.eval.stream)."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def new_cache(config: Any) -> Any:
    """An empty DynamicCache for a model of `config` (filled in place by each forward)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:  # older transformers
        return DynamicCache()
