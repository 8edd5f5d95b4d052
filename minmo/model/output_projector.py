"""MinMo's output projector: LLM states of the text it says -> semantic vectors for the voice LM.

The paper: one linear layer whose input is the user-input embedding concatenated with the LLM's
last hidden state on the feature axis; for the sampled text tokens, their embeddings and their
hidden states are concatenated the same way, and the positions are concatenated on the sequence
axis. So every position p of the assistant's text gives [embedding(token_p) ‖ hidden_p] (2 x the
LLM width) and one linear layer maps it to the voice LM's width.

Full size: (2 x 3584) -> 896 with bias = 6.4 M (paper: 6 M).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class OutputProjectorConfig:
    llm_size: int = 3584
    voice_lm_size: int = 896

    @classmethod
    def tiny(cls, llm_size: int = 64, voice_lm_size: int = 64) -> OutputProjectorConfig:
        return cls(llm_size, voice_lm_size)

    @classmethod
    def full(cls) -> OutputProjectorConfig:
        return cls()


class OutputProjector(nn.Module):
    def __init__(self, config: OutputProjectorConfig) -> None:
        super().__init__()
        self.config = config
        self.linear = nn.Linear(2 * config.llm_size, config.voice_lm_size)

    def forward(self, embeddings: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """(B, N, llm) token embeddings and (B, N, llm) last hidden states -> (B, N, voice_lm)."""
        return self.linear(torch.cat([embeddings, hidden], dim=-1))
