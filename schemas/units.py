"""The shared units: what every step, the trainer and the tables mean by a second and a sample.

Owns: the `Seconds` alias (a float of seconds, as in every `*_s` column), the one sample rate all
audio is converted to before any step or the model sees it, and the LLM's input frame hop (the
grid of the duplex labels). Must not: import anything of ours (schemas is the bottom layer).
"""

from __future__ import annotations

from typing import TypeAlias

Seconds: TypeAlias = float

# Every decoded, resampled, synthesised and sharded clip is at this rate: the VAD, the voice
# encoder, the speech tokenizer and the duplex simulator all assume it.
SAMPLE_RATE_HZ = 16_000

# One LLM input position: the voice encoder's 60 ms frames, halved by the input projector's
# stride-2 convolution. The duplex frame labels are on this grid.
LLM_HOP_S: Seconds = 0.12
