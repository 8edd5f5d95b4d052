"""The trainer step's per-sample reference implementations, as they were before issue 20
vectorised them: `splice`, the output projector's semantic-vector gather, the voice LM's 5:15
sequence assembly and the fbank of clips shorter than a window. Tests only: the library's
batched versions must give the same tensors (tests/model/test_vectorised.py)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from minmo.model.batch import Batch
from minmo.model.llm import IGNORE, Spliced
from minmo.model.minmo import MinMo
from minmo.model.voice_encoder import (
    _INT16_SCALE,
    VoiceEncoder,
    _kaldi_mel_banks,
    _log_mel,
    _window_size,
)
from minmo.model.voice_lm import SOS, TURN_OF_SPEECH, VoiceTokenLM, plan


def splice_reference(
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


def semantic_reference(
    self: MinMo, sp: Spliced, hidden: torch.Tensor, embedding: nn.Module, batch: Batch
) -> tuple[torch.Tensor, torch.Tensor]:
    """Semantic vectors of the assistant's text: [embedding ‖ hidden] per text position,
    from the first assistant token up to (not including) its <|im_end|>."""
    rows = []
    for b in range(batch.size):
        ids = sp.token_ids[b]
        real = sp.attention_mask[b].bool()
        text_pos = (ids != IGNORE) & real
        # Text index of each position = how many text positions precede it.
        text_index = torch.cumsum(text_pos.long(), 0) - 1
        assistant = text_pos & (text_index >= batch.target_start[b])
        positions = assistant.nonzero().flatten()
        ends = positions[ids[positions] == self.special.turn_end]
        if len(ends):
            positions = positions[positions < ends[0]]
        rows.append(positions)
    n = max((len(r) for r in rows), default=0)
    if n == 0:
        raise ValueError("no assistant text to voice in this batch")
    index = torch.zeros(batch.size, n, dtype=torch.long, device=hidden.device)
    lengths = torch.tensor([len(r) for r in rows], device=hidden.device)
    for b, r in enumerate(rows):
        index[b, : len(r)] = r
    gathered_ids = torch.gather(sp.token_ids.clamp(min=0), 1, index)
    token_emb = embedding(gathered_ids)
    gathered_hidden = torch.gather(hidden, 1, index[..., None].expand(-1, -1, hidden.shape[-1]))
    semantic = self.output_projector(token_emb.detach(), gathered_hidden.detach())
    return semantic, lengths


def _indices(
    self: VoiceTokenLM, n_semantic: int, speech: torch.Tensor, streaming: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L,) rows into [special (2) | semantic (N) | speech (M)] and (L,) target ids."""
    c = self.config
    n_speech = int(speech.shape[0])
    inputs, targets = plan(n_semantic, n_speech, c.text_chunk, c.speech_chunk, streaming)
    base = {"sos": SOS, "turn": TURN_OF_SPEECH, "sem": 2, "speech": 2 + n_semantic}
    rows = torch.tensor([base[k] + i for k, i in inputs], dtype=torch.long)
    # targets index into [speech (M) | IGNORE | FILL | EOS]
    fixed = {"ignore": n_speech, "fill": n_speech + 1, "eos": n_speech + 2}
    pick = torch.tensor([i if k == "speech" else fixed[k] for k, i in targets])
    extra = torch.tensor([IGNORE, c.fill, c.end_of_speech], device=speech.device)
    ids = torch.cat([speech.long(), extra])[pick.to(speech.device)]
    return rows, ids


def _assemble(
    self: VoiceTokenLM,
    semantic: torch.Tensor,
    speech: torch.Tensor,
    speech_emb: torch.Tensor,
    streaming: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    rows, targets = _indices(self, int(semantic.shape[0]), speech, streaming)
    dtype = speech_emb.dtype
    pool = torch.cat([self.special_embedding.weight.to(dtype), semantic.to(dtype), speech_emb])
    return pool[rows.to(pool.device)], targets


def voice_lm_assemble_reference(
    self: VoiceTokenLM,
    semantic: torch.Tensor,
    semantic_lengths: torch.Tensor,
    speech: torch.Tensor,
    speech_lengths: torch.Tensor,
    streaming: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`VoiceTokenLM.forward`'s sequence assembly as it was: (inputs, targets, lengths)."""
    b, m = speech.shape
    n_sem = [int(x) for x in semantic_lengths.tolist()]
    n_sp = [int(x) for x in speech_lengths.tolist()]
    valid = (
        torch.arange(m, device=speech.device)[None, :] < speech_lengths.to(speech.device)[:, None]
    )
    # One embedding call for the batch, inside forward (FSDP2 needs lookups in the root).
    speech_ids = speech.long().masked_fill(~valid, 0)
    speech_emb = self.speech_embedding(speech_ids)
    seqs, tgts = [], []
    for i in range(b):
        x, y = _assemble(
            self,
            semantic[i, : n_sem[i]],
            speech_ids[i, : n_sp[i]],
            speech_emb[i, : n_sp[i]],
            streaming,
        )
        seqs.append(x)
        tgts.append(y)
    lengths = torch.tensor([len(y) for y in tgts], device=speech_emb.device)
    inputs = nn.utils.rnn.pad_sequence(seqs, batch_first=True)
    targets = nn.utils.rnn.pad_sequence(tgts, batch_first=True, padding_value=IGNORE)
    return inputs, targets, lengths


def _kaldi_window(kind: str, size: int) -> Tensor:
    n = torch.arange(size, dtype=torch.float64)
    cosine = torch.cos(2 * math.pi * n / max(size - 1, 1))
    if kind == "hamming":
        w = 0.54 - 0.46 * cosine
    elif kind == "hanning":
        w = 0.5 - 0.5 * cosine
    elif kind == "povey":
        w = (0.5 - 0.5 * cosine).pow(0.85)
    else:
        w = torch.ones(size, dtype=torch.float64)
    return w.float()


def _window_and_banks(self: VoiceEncoder, size: int) -> tuple[Tensor, Tensor]:
    n_fft = 1 << (size - 1).bit_length()  # Kaldi's round-to-power-of-two
    banks = _kaldi_mel_banks(self.config.n_mels, n_fft, self.config.sample_rate)
    return _kaldi_window(self.config.window, size), banks


def fbank_reference(self: VoiceEncoder, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Kaldi log-mel fbank (snip_edges) of the batch: (B, N, n_mels) and frames per item.

    Frames past an item's count hold padding garbage; callers must respect the counts.
    """
    if waves.dim() != 2:
        raise ValueError(f"waves must be (B, T), got shape {tuple(waves.shape)}")
    lengths = lengths.to(device=waves.device, dtype=torch.long)
    if lengths.shape != waves.shape[:1]:
        raise ValueError(f"lengths must be (B,)={waves.shape[0]}, got {tuple(lengths.shape)}")
    if bool((lengths < 2).any()) or bool((lengths > waves.shape[1]).any()):
        raise ValueError(
            f"each length must be in [2, T={waves.shape[1]}] samples, got {lengths.tolist()}"
        )
    x = waves.float() * _INT16_SCALE
    long_enough = lengths >= self._win
    counts = torch.where(long_enough, 1 + (lengths - self._win).clamp_min(0) // self._hop, 1)
    n_max = int(counts.max())
    out = x.new_zeros(x.shape[0], n_max, self.config.n_mels)
    if bool(long_enough.any()):
        frames = x.unfold(1, self._win, self._hop)[:, :n_max]
        window, banks = _window_and_banks(self, self._win)
        out[:, : frames.shape[1]] = _log_mel(frames, window, banks)
    # Utterances shorter than one window: funasr shrinks the window to the whole utterance
    # (one frame, FFT at the next power of two). Rare, so a loop over just those items.
    for b in torch.nonzero(~long_enough).flatten().tolist():
        n = int(lengths[b])
        ms = torch.tensor(n) / self.config.sample_rate * 1000  # float32, as funasr does
        win = _window_size(self.config.sample_rate, ms)
        window, banks = _window_and_banks(self, win)
        out[b, 0] = _log_mel(x[b, :win], window, banks)
    return out, counts
