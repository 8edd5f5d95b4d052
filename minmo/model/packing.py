"""Packed training sequences: several samples share one LLM row, attention kept inside each.

Owns the plan of which sample sits where in the packed rows, and the moves between the two
layouts of a batch:

    sample layout  (B, L, ...)   one sample per row, right-padded: what `splice` produces and
                                 what the heads read (speech positions, assistant positions)
    packed layout  (R, P, ...)   samples laid end to end in R rows of P positions (P <= the row
                                 capacity unless one sample is longer), padding only at row ends

Attention stays inside each sample through transformers' own packed-sequence path, so the same
code serves every attention backend: position ids restart at 0 at each sample's first position
and the attention mask is None; transformers (`masking_utils.find_packed_sequence_indices`) then
reads the sequence boundaries off the position ids and builds, per backend, the block-diagonal
causal mask: a 4D boolean mask for `sdpa` and `eager` (what runs on CPU), a BlockMask for
`flex_attention`, and `cu_seqlens` for the varlen kernels of `flash_attention_2/3`. Rotary
embeddings take the same restarted position ids, so each sample sees exactly the positions it
has unpacked. The padding after a row's last sample gets position ids 0, 1, ... of its own: a
separate "sequence" that never attends to a sample nor is attended by one.

Must not: know what the positions hold (speech, text, labels): the caller packs what the LLM
reads and unpacks what the LLM returns, and every head keeps working on the sample layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def balanced_rows(lengths: Sequence[int], capacity: int) -> tuple[list[int], list[int], list[int]]:
    """(row, offset) per sample and the rows' fills, for as few rows as hold the samples within
    `capacity` each, filled evenly: the packed batch is rows x the fullest row, so even fills
    waste least. Longest-processing-time first: samples taken longest first (ties in batch
    order) each go to the least-filled row; if a row then overflows, one more row and again.
    A sample longer than `capacity` gets a row of its own (never cut: its labels and speech
    positions must stay whole). When that takes no fewer positions than one sample per row, one
    sample per row it is. Deterministic; integers only, microseconds for a batch.
    """
    if capacity < 1:
        raise ValueError(f"row capacity must be >= 1, got {capacity}")
    if not lengths:
        return [], [], []
    limit = max(capacity, max(lengths))
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n_rows = max(1, -(-sum(lengths) // capacity))
    while True:
        rows = [0] * len(lengths)
        offsets = [0] * len(lengths)
        fills = [0] * n_rows
        for b in order:
            r = min(range(n_rows), key=lambda i: fills[i])
            rows[b], offsets[b] = r, fills[r]
            fills[r] += lengths[b]
        if n_rows >= len(lengths):
            break
        if max(fills) <= limit:
            if n_rows * max(fills) < len(lengths) * max(lengths):
                return rows, offsets, fills
            break  # no fewer positions than one sample per row: keep that
        n_rows += 1
    return list(range(len(lengths))), [0] * len(lengths), list(lengths)


@dataclass(frozen=True)
class PackPlan:
    """Where each sample of a right-padded (B, L) batch goes in R packed rows of P positions.

    source (R * P,): flat index b * L + j of the sample position each packed slot holds (0 on
    padding slots); slot_real (R * P,): the slot holds a sample position; dest (B, L): flat
    packed slot r * P + offset + j of each sample position (clamped to a valid slot on padding);
    real (B, L): the sample position is real.
    """

    rows: int
    row_length: int
    source: torch.Tensor
    slot_real: torch.Tensor
    dest: torch.Tensor
    real: torch.Tensor
    positions: torch.Tensor  # (R, P) position ids, restarting at 0 per sample and per row tail

    @classmethod
    def build(cls, attention_mask: torch.Tensor, capacity: int) -> PackPlan:
        """The plan for a right-padded batch (`attention_mask` (B, L), 1 = real, real positions
        first in each row, as `splice` makes them) and rows of `capacity` positions."""
        batch, length = attention_mask.shape
        device = attention_mask.device
        real = attention_mask.bool()
        lengths = real.sum(1).tolist()  # the one host sync: the plan's shapes depend on it
        rows, offsets, fills = balanced_rows(lengths, capacity)
        n_rows, row_length = len(fills), max(fills, default=0)
        j = torch.arange(length, device=device)
        base = torch.tensor(rows, device=device) * row_length + torch.tensor(offsets, device=device)
        dest = (base[:, None] + j).masked_fill(~real, 0)
        size = n_rows * row_length
        flat_sample = torch.arange(batch * length, device=device)
        source = torch.zeros(size, dtype=torch.long, device=device)
        source[dest[real]] = flat_sample[real.flatten()]
        slot_real = torch.zeros(size, dtype=torch.bool, device=device)
        slot_real[dest[real]] = True
        # Row tails count 0, 1, ... from the row's fill; sample slots get their own index j.
        k = torch.arange(row_length, device=device)
        positions = (k - torch.tensor(fills, device=device)[:, None]).clamp(min=0).flatten()
        positions[dest[real]] = j.expand(batch, -1)[real]
        return cls(
            n_rows, row_length, source, slot_real, dest, real, positions.view(n_rows, row_length)
        )

    @property
    def padding_fraction(self) -> float:
        """Share of the packed rows' positions that hold no sample."""
        size = self.rows * self.row_length
        return 0.0 if size == 0 else 1.0 - int(self.real.sum()) / size

    def pack(self, x: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
        """(B, L, ...) sample layout -> (R, P, ...) packed layout; `fill` on row tails."""
        flat = x.reshape(-1, *x.shape[2:])[self.source]
        keep = self.slot_real.view(-1, *([1] * (x.dim() - 2)))
        return flat.masked_fill(~keep, fill).view(self.rows, self.row_length, *x.shape[2:])

    def unpack(self, y: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
        """(R, P, ...) packed layout -> (B, L, ...) sample layout; `fill` on sample padding."""
        flat = y.reshape(-1, *y.shape[2:])[self.dest]
        keep = self.real.view(*self.real.shape, *([1] * (y.dim() - 2)))
        return flat.masked_fill(~keep, fill)
