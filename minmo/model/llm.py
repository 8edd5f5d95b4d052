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
    """
    batch, _, hidden = token_embeddings.shape
    device = token_embeddings.device
    rows, label_rows, id_rows, positions = [], [], [], []
    for b in range(batch):
        n = int(input_lengths[b])
        ids = input_ids[b, :n]
        emb = token_embeddings[b, :n]
        text_labels = torch.full((n,), IGNORE, dtype=torch.long, device=device)
        start = int(target_start[b])
        if start < n:
            text_labels[max(start - 1, 0) : n - 1] = ids[max(start, 1) : n]
        n_speech = 0 if speech is None or speech_lengths is None else int(speech_lengths[b])
        marker = (ids == speech_start_id).nonzero()
        if n_speech and len(marker) == 0:
            raise ValueError(f"sample {b} has speech but no <|startofspeech|> in its text tokens")
        if n_speech:
            cut = int(marker[0]) + 1  # labels stay with their text positions across the gap
            gap = torch.full((n_speech,), IGNORE, dtype=torch.long, device=device)
            rows.append(torch.cat([emb[:cut], speech[b, :n_speech], emb[cut:]]))
            label_rows.append(torch.cat([text_labels[:cut], gap, text_labels[cut:]]))
            id_rows.append(torch.cat([ids[:cut], gap, ids[cut:]]))
            positions.append(torch.arange(cut, cut + n_speech, device=device))
        else:
            rows.append(emb)
            label_rows.append(text_labels)
            id_rows.append(ids.clone())
            positions.append(torch.zeros(0, dtype=torch.long, device=device))
    length = max(r.shape[0] for r in rows)
    embeds = token_embeddings.new_zeros(batch, length, hidden)
    mask = torch.zeros(batch, length, dtype=torch.long, device=device)
    labels = torch.full((batch, length), IGNORE, dtype=torch.long, device=device)
    token_ids = torch.full((batch, length), IGNORE, dtype=torch.long, device=device)
    max_speech = max((p.shape[0] for p in positions), default=0)
    speech_positions = torch.full((batch, max_speech), -1, dtype=torch.long, device=device)
    for b, (row, lab, tid, pos) in enumerate(
        zip(rows, label_rows, id_rows, positions, strict=True)
    ):
        embeds[b, : row.shape[0]] = row
        mask[b, : row.shape[0]] = 1
        labels[b, : lab.shape[0]] = lab
        token_ids[b, : tid.shape[0]] = tid
        speech_positions[b, : pos.shape[0]] = pos
    return Spliced(embeds, mask, labels, token_ids, speech_positions)
