"""MinMo's input projector: voice-encoder frames -> LLM input embeddings at half the frame rate.

A stride-2 1-D convolution (2x downsampling: 60 ms encoder frames -> 120 ms LLM positions, the
rate the duplex labels use) followed by two Transformer encoder layers at the LLM's width.

Full size (`full()`): encoder 1024 -> LLM 3584, kernel 3, two pre-norm layers with 28 heads and
a 3584-wide feed-forward: 3*1024*3584 + 2*(4*3584^2 + 2*3584^2) + biases/norms = 165 M, against
the paper's 170 M (the paper does not give the widths; these land within 3 %).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class InputProjectorConfig:
    encoder_size: int = 1024
    llm_size: int = 3584
    kernel_size: int = 3
    layers: int = 2
    heads: int = 28
    ffn_size: int = 3584
    dropout: float = 0.0

    @classmethod
    def tiny(cls, encoder_size: int = 64, llm_size: int = 64) -> InputProjectorConfig:
        return cls(encoder_size, llm_size, kernel_size=3, layers=2, heads=4, ffn_size=128)

    @classmethod
    def full(cls) -> InputProjectorConfig:
        return cls()


def downsampled_lengths(lengths: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Output frames of the stride-2 conv with padding kernel_size // 2: ceil(n / 2)."""
    pad = kernel_size // 2
    return torch.div(lengths + 2 * pad - kernel_size, 2, rounding_mode="floor") + 1


class InputProjector(nn.Module):
    def __init__(self, config: InputProjectorConfig) -> None:
        super().__init__()
        self.config = config
        self.conv = nn.Conv1d(
            config.encoder_size,
            config.llm_size,
            config.kernel_size,
            stride=2,
            padding=config.kernel_size // 2,
        )
        layer = nn.TransformerEncoderLayer(
            config.llm_size,
            config.heads,
            config.ffn_size,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.llm_size)

    def forward(
        self, frames: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, encoder_size), (B,) -> (B, ceil(T/2), llm_size), (B,) lengths."""
        mask_in = torch.arange(frames.shape[1], device=frames.device)[None, :] < lengths[:, None]
        x = frames.masked_fill(~mask_in[..., None], 0.0)  # padding must not leak through the conv
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        out_lengths = downsampled_lengths(lengths, self.config.kernel_size)
        padding = torch.arange(x.shape[1], device=x.device)[None, :] >= out_lengths[:, None]
        x = self.layers(x, src_key_padding_mask=padding)
        x = self.norm(x).masked_fill(padding[..., None], 0.0)
        return x, out_lengths
