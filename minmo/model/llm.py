"""MinMo's LLM: transformers' Qwen2 causal LM (production: Qwen2.5-7B-Instruct) with LoRA (peft),
and the splice that puts the user's speech embeddings between <|startofspeech|> and
<|endofspeech|>.

Shard text tokens hold the two markers next to each other (`SPEECH_PLACEHOLDER`); `splice` opens
the gap and inserts each sample's projected speech frames there, so sequences grow by the number
of speech positions. Positions of the speech (one per 120 ms) are returned too: the duplex
predictor reads the LLM's hidden states there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

IGNORE = -100


@dataclass
class LLMConfig:
    """Qwen2 dimensions (defaults: Qwen2.5-7B-Instruct) and the LoRA recipe."""

    path: str | None = None
    """Local HF directory; None builds random weights from the fields."""
    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    """Random-init std. Real runs load pretrained weights; a tiny random LLM that stays frozen
    (stages 1a/1b, 2, 4) needs a wider init, or its output logits are too flat to be steered."""
    lora_rank: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )

    @classmethod
    def tiny(cls, vocab_size: int = 2100) -> LLMConfig:
        return cls(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            lora_rank=8,
            lora_alpha=16,
            lora_dropout=0.0,
            tie_word_embeddings=False,
            initializer_range=0.3,
        )

    @classmethod
    def full(cls) -> LLMConfig:
        return cls()

    def qwen2(self):
        from transformers import Qwen2Config

        return Qwen2Config(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            max_position_embeddings=self.max_position_embeddings,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            initializer_range=self.initializer_range,
        )


def build_llm(config: LLMConfig, vocab_size: int | None = None) -> nn.Module:
    """The Qwen2 LM with LoRA adapters on `lora_targets` (peft), embeddings resized to at least
    `vocab_size` (the tokenizer's size, MinMo's special tokens included)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2ForCausalLM

    if config.path:
        if not Path(config.path, "config.json").is_file():
            raise FileNotFoundError(f"no config.json in LLM directory {config.path}")
        model = Qwen2ForCausalLM.from_pretrained(
            config.path, local_files_only=True, dtype=torch.float32
        )
    else:
        model = Qwen2ForCausalLM(config.qwen2())
    if vocab_size is not None and vocab_size > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(vocab_size)
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_targets),
        bias="none",
    )
    return get_peft_model(model, lora)


@dataclass
class Spliced:
    """A batch ready for the LLM: embeddings with speech inserted, and what lines up with them."""

    embeds: torch.Tensor  # (B, L, H)
    attention_mask: torch.Tensor  # (B, L) 1 = real
    labels: torch.Tensor  # (B, L) next-token targets aligned to positions (IGNORE elsewhere)
    token_ids: torch.Tensor  # (B, L) the text id at each position (IGNORE at speech/padding)
    speech_positions: torch.Tensor  # (B, S) index of each speech frame in the sequence (-1 pad)


def splice(
    token_embeddings: torch.Tensor,
    input_ids: torch.Tensor,
    input_lengths: torch.Tensor,
    target_start: torch.Tensor,
    speech: torch.Tensor | None,
    speech_lengths: torch.Tensor | None,
    speech_start_id: int,
) -> Spliced:
    """Insert speech frames after each sample's <|startofspeech|> (one per sample at most).

    token_embeddings: (B, L, H) embeddings of input_ids; speech: (B, S, H) projected frames.
    labels: position p predicts text id p+1 for p+1 >= target_start (the assistant's text),
    counted in text positions, never across the speech gap.

    Batched index arithmetic, no loop over samples: output position q of sample b holds text
    position q before the cut (just after the marker), speech frame q - cut in the gap, text
    position q - n_speech after it, padding past n + n_speech; every output tensor is one gather
    from [text | speech | one padding row]. One host sync per batch (the output length, and
    whether a sample has speech but no marker).
    """
    batch, length, hidden = token_embeddings.shape
    device = token_embeddings.device
    n_text = input_lengths.to(device=device, dtype=torch.long)
    text_pos = torch.arange(length, device=device)
    if speech is None or speech_lengths is None:
        n_speech = torch.zeros_like(n_text)
        frames = token_embeddings.new_zeros(batch, 0, hidden)
    else:
        n_speech = speech_lengths.to(device=device, dtype=torch.long)
        frames = speech.to(token_embeddings.dtype)
    width = frames.shape[1]
    marker = (input_ids == speech_start_id) & (text_pos < n_text[:, None])
    has_marker = marker.any(dim=1)
    cut = torch.where(n_speech > 0, marker.long().argmax(dim=1) + 1, 0)  # first marker
    orphan = (n_speech > 0) & ~has_marker
    sizes = torch.stack(
        [
            (n_text + n_speech).max(),
            n_speech.max(),
            torch.where(orphan, torch.arange(batch, device=device), batch).min(),
        ]
    ).tolist()
    out_length, max_speech, first_orphan = sizes
    if first_orphan < batch:
        raise ValueError(
            f"sample {first_orphan} has speech but no <|startofspeech|> in its text tokens"
        )
    q = torch.arange(out_length, device=device)[None, :]
    cut_, n_speech_, n_text_ = cut[:, None], n_speech[:, None], n_text[:, None]
    in_gap = (q >= cut_) & (q < cut_ + n_speech_)
    real = q < n_text_ + n_speech_
    # Source row in [text (L) | speech (S) | padding (1)] of each output position.
    text_source = torch.where(q < cut_, q, q - n_speech_)
    pad = length + width
    source = torch.where(in_gap, length + q - cut_, torch.where(real, text_source, pad))

    pool = torch.cat([token_embeddings, frames, token_embeddings.new_zeros(batch, 1, hidden)], 1)
    embeds = torch.gather(pool, 1, source[..., None].expand(-1, -1, hidden))
    # Text label of text position p: the id at p + 1, from the assistant's text on.
    following = torch.cat([input_ids[:, 1:], input_ids.new_zeros(batch, 1)], dim=1)
    labelled = (text_pos + 1 >= target_start.to(device)[:, None]) & (text_pos + 1 < n_text_)
    text_labels = torch.where(labelled, following, IGNORE).long()
    ignored = torch.full((batch, width + 1), IGNORE, dtype=torch.long, device=device)
    labels = torch.gather(torch.cat([text_labels, ignored], 1), 1, source)
    ids = torch.where(text_pos < n_text_, input_ids, IGNORE).long()
    token_ids = torch.gather(torch.cat([ids, ignored], 1), 1, source)

    frame = torch.arange(max_speech, device=device)[None, :]
    speech_positions = torch.where(frame < n_speech_, cut_ + frame, -1)
    return Spliced(embeds, real.long(), labels, token_ids, speech_positions)
