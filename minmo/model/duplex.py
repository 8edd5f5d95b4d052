"""MinMo's full-duplex predictor: one Transformer layer + a linear softmax over the LLM's hidden
states at each frame, predicting the frame classes of schemas/duplex.py (listen, speak_now,
keep_speaking, stop_now).

The LLM's 3584-wide states are first projected to a narrower width (the paper gives 18 M
parameters for the predictor and not its width): full size 3584 -> 1024, one pre-norm layer with
16 heads and a 4096-wide feed-forward, then 1024 -> 4: 3.7 M + 12.6 M + norms = 16.3 M (paper:
18 M, within 10 %). A causal mask keeps each frame's decision on the past only, as in streaming.

Besides the hidden states the predictor takes the assistant-activity track (0/1 per frame: the
system is talking; schemas/duplex.py): a learned embedding of it is added to each projected frame.
The speech input is the user's stream, so without the track the predictor could not tell, on a
mono call, which side it plays (2 x 1024 parameters at full size).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

N_CLASSES = 4  # schemas.duplex.FrameLabel


@dataclass
class DuplexHeadConfig:
    """Shape of the duplex predictor head on the LLM's hidden states (not the turn-taking
    label thresholds: those are `minmo.duplex.labels.DuplexLabelConfig`)."""

    llm_size: int = 3584
    width: int = 1024
    heads: int = 16
    ffn_size: int = 4096
    n_classes: int = N_CLASSES
    class_weights: list[float] = field(default_factory=lambda: [1.0, 5.0, 1.0, 5.0])
    """Loss weights per class: listen dominates real conversations, the events are rare."""

    @classmethod
    def tiny(cls, llm_size: int = 64) -> DuplexHeadConfig:
        return cls(llm_size, width=32, heads=2, ffn_size=64)

    @classmethod
    def full(cls) -> DuplexHeadConfig:
        return cls()


class DuplexPredictor(nn.Module):
    def __init__(self, config: DuplexHeadConfig) -> None:
        super().__init__()
        self.config = config
        self.down = nn.Linear(config.llm_size, config.width)
        self.activity = nn.Embedding(2, config.width)  # 0 silent, 1 the assistant talks
        self.layer = nn.TransformerEncoderLayer(
            config.width,
            config.heads,
            config.ffn_size,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.head = nn.Linear(config.width, config.n_classes)
        self.register_buffer(
            "class_weights",
            torch.tensor(config.class_weights, dtype=torch.float32),
            persistent=False,
        )

    def forward(
        self,
        hidden: torch.Tensor,
        activity: torch.Tensor,
        padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, llm) hidden states + (B, T) 0/1 assistant activity -> (B, T, n_classes)
        logits; `padding` True = ignore."""
        if activity.shape != hidden.shape[:2]:
            raise ValueError(
                f"assistant activity {tuple(activity.shape)} does not match the frames "
                f"{tuple(hidden.shape[:2])}"
            )
        x = self.down(hidden) + self.activity(activity.long().clamp(0, 1))
        causal = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device)
        x = self.layer(x, src_mask=causal, src_key_padding_mask=padding, is_causal=True)
        return self.head(x)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Class-weighted cross-entropy; labels < 0 are ignored (padding)."""
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            labels.reshape(-1),
            weight=self.class_weights.to(logits.device),
            ignore_index=-100,
        )

    @torch.no_grad()
    def sample_losses(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample, (B,) each: the class-weighted loss summed over its frames, and the summed
        class weights; `loss` is the batch's sums over its weights (per-task loss reads these)."""
        counted = labels >= 0
        per_frame = F.cross_entropy(
            logits.float().transpose(1, 2),
            labels,
            weight=self.class_weights.to(logits.device),
            ignore_index=-100,
            reduction="none",
        )
        weights = self.class_weights.to(logits.device)[labels.clamp(min=0)] * counted
        return per_frame.sum(1), weights.sum(1)
