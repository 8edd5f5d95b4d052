"""The whole MinMo model and its training recipe per stage (DESIGN.md §1, the paper's §3).

    waves -> voice_encoder -> input_projector --splice--> llm (Qwen2 + LoRA) -> text logits
                                                           |-> output_projector -> voice_lm
                                                           |-> duplex predictor (speech frames)

Stages and what each trains (everything else is frozen: requires_grad=False and eval mode):

    1a Pre-Align   input projector                      text CE
    1b Full-Align  input projector + voice encoder      text CE
    1c SFT         LLM LoRA adapters                    text CE
    2a T2S align   output projector                     speech-token CE
    2b T2S align   output projector + voice token LM    speech-token CE
    3  S2S align   output projector + voice token LM    speech-token CE (text CE reported)
    4  Duplex      full-duplex predictor                duplex CE, class-weighted

Every embedding lookup happens inside `MinMo.forward` (FSDP2 shards the root module last, so
the lookups must run under its forward). Frozen front parts run under `torch.no_grad()` when
nothing before them trains, which keeps stage 2-4 memory to the trained modules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from minmo.model.batch import IGNORE, Batch
from minmo.model.duplex import DuplexHeadConfig, DuplexPredictor
from minmo.model.input_projector import InputProjector, InputProjectorConfig
from minmo.model.llm import LLMConfig, Spliced, build_llm, splice
from minmo.model.output_projector import OutputProjector, OutputProjectorConfig
from minmo.model.packing import PackPlan
from minmo.model.voice_encoder import VoiceEncoder, VoiceEncoderConfig
from minmo.model.voice_lm import VoiceLMConfig, VoiceTokenLM
from minmo.tokens.text import SPEECH_END, SPEECH_START

MODULES = ("voice_encoder", "input_projector", "llm", "output_projector", "voice_lm", "duplex")
LORA = "llm.lora"  # the trainable part of the LLM: its LoRA adapters only

RECIPES: dict[str, tuple[str, ...]] = {
    "1a": ("input_projector",),
    "1b": ("input_projector", "voice_encoder"),
    "1c": (LORA,),
    "2a": ("output_projector",),
    "2b": ("output_projector", "voice_lm"),
    "3": ("output_projector", "voice_lm"),
    "4": ("duplex",),
}
LOSS_OF_STAGE = {
    "1a": "text",
    "1b": "text",
    "1c": "text",
    "2a": "speech",
    "2b": "speech",
    "3": "speech",
    "4": "duplex",
}
# `forward` reports, under POSITIONS + module, the (B,) positions each sample ran through each
# module that ran (the trainer's FLOP count reads them), and under "<kind>_loss_sums" and
# "<kind>_loss_counts" each sample's summed loss and the weight it carries in the batch's mean
# (the trainer's per-task loss reads them).
POSITIONS = "positions/"
# Which shard directory feeds each stage.
SHARDS_OF_STAGE = {
    "1a": "stage1",
    "1b": "stage1",
    "1c": "stage1",
    "2a": "stage2",
    "2b": "stage2",
    "3": "stage3",
    "4": "stage4",
}


@dataclass
class MinMoConfig:
    voice_encoder: VoiceEncoderConfig = field(default_factory=VoiceEncoderConfig.full)
    input_projector: InputProjectorConfig = field(default_factory=InputProjectorConfig.full)
    llm: LLMConfig = field(default_factory=LLMConfig.full)
    output_projector: OutputProjectorConfig = field(default_factory=OutputProjectorConfig.full)
    voice_lm: VoiceLMConfig = field(default_factory=VoiceLMConfig.full)
    duplex: DuplexHeadConfig = field(default_factory=DuplexHeadConfig.full)

    @classmethod
    def full(cls) -> MinMoConfig:
        return cls()

    @classmethod
    def tiny(cls, vocab_size: int = 2100) -> MinMoConfig:
        enc = VoiceEncoderConfig.tiny()
        llm = LLMConfig.tiny(vocab_size)
        vlm = VoiceLMConfig.tiny()
        return cls(
            voice_encoder=enc,
            input_projector=InputProjectorConfig.tiny(enc.output_size, llm.hidden_size),
            llm=llm,
            output_projector=OutputProjectorConfig.tiny(llm.hidden_size, vlm.hidden_size),
            voice_lm=vlm,
            duplex=DuplexHeadConfig.tiny(llm.hidden_size),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SpecialIds:
    """Text-tokenizer ids the model needs (from minmo.tokens.text's tokenizer)."""

    speech_start: int
    speech_end: int
    turn_end: int  # <|im_end|>: the assistant's text ends before it

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> SpecialIds:
        ids = tokenizer.convert_tokens_to_ids([SPEECH_START, SPEECH_END, "<|im_end|>"])
        return cls(*ids)


class MinMo(nn.Module):
    def __init__(self, config: MinMoConfig, special: SpecialIds, text_vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.special = special
        self.voice_encoder = VoiceEncoder(config.voice_encoder)
        self.input_projector = InputProjector(config.input_projector)
        self.llm = build_llm(config.llm, text_vocab_size)
        self.output_projector = OutputProjector(config.output_projector)
        self.voice_lm = VoiceTokenLM(config.voice_lm)
        self.duplex = DuplexPredictor(config.duplex)
        self.stage: str | None = None
        self.pack_length: int | None = None
        """Row capacity in LLM positions when training packed (minmo/model/packing.py): the
        batch's spliced samples are laid end to end in rows of this many positions, attention
        kept inside each sample; None: one sample per row, padded to the longest."""

    # ---- recipes ----------------------------------------------------------------------------

    def apply_recipe(self, stage: str) -> None:
        """Freeze everything, then unfreeze (and put in train mode) what `stage` trains."""
        if stage not in RECIPES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(RECIPES)}")
        self.stage = stage
        self.requires_grad_(False)
        self.eval()
        for part in RECIPES[stage]:
            if part == LORA:
                for name, p in self.llm.named_parameters():
                    if "lora_" in name:
                        p.requires_grad_(True)
                self.llm.train()
            else:
                module = getattr(self, part)
                module.requires_grad_(True)
                module.train()

    def train(self, mode: bool = True) -> MinMo:
        """Keep frozen modules in eval mode (dropout off) whatever the caller asks."""
        super().train(mode)
        if mode and self.stage is not None:
            trained = {p.split(".")[0] for p in RECIPES[self.stage]}
            for name in MODULES:
                if name not in trained:
                    getattr(self, name).eval()
        return self

    def trainable_report(self) -> dict[str, dict[str, int]]:
        """Per module: total and trainable parameter counts (LoRA shown under llm)."""
        report = {}
        for name in MODULES:
            params = list(getattr(self, name).parameters())
            report[name] = {
                "total": sum(p.numel() for p in params),
                "trainable": sum(p.numel() for p in params if p.requires_grad),
            }
        return report

    def _trains(self, *names: str) -> bool:
        return any(p.requires_grad for n in names for p in getattr(self, n).parameters())

    # ---- forward ----------------------------------------------------------------------------

    def forward(self, batch: Batch, stage: str | None = None) -> dict[str, torch.Tensor]:
        stage = stage or self.stage
        if stage not in LOSS_OF_STAGE:
            raise ValueError(f"unknown stage {stage!r}")
        kind = LOSS_OF_STAGE[stage]
        out: dict[str, torch.Tensor] = {}
        speech, speech_lengths = self._speech_inputs(batch, out)
        llm_grad = self._trains("voice_encoder", "input_projector", "llm")
        with torch.set_grad_enabled(torch.is_grad_enabled() and llm_grad):
            embedding = self.llm.get_input_embeddings()
            token_emb = embedding(batch.input_ids)
            sp = splice(
                token_emb,
                batch.input_ids,
                batch.input_lengths,
                batch.target_start,
                speech,
                speech_lengths,
                self.special.speech_start,
            )
            plan = PackPlan.build(sp.attention_mask, self.pack_length) if self.pack_length else None
            # Text logits only where a label is (transformers flattens a boolean mask to
            # (labelled, V), row-major): the LM head and the loss skip the speech, the prompt and
            # the padding. Stages without a text loss keep one position's logits only.
            labelled = sp.labels != IGNORE
            text = kind == "text" or stage == "3"
            sample_of = torch.arange(labelled.shape[0], device=labelled.device)[:, None]
            sample_of = sample_of.expand_as(labelled)
            if plan is None:
                keep = labelled
                result = self.llm(
                    inputs_embeds=sp.embeds,
                    attention_mask=sp.attention_mask,
                    output_hidden_states=kind != "text",
                    use_cache=False,
                    logits_to_keep=keep if text else 1,
                )
            else:  # no mask: transformers reads the samples' bounds off the position ids
                keep = plan.pack(labelled, False)
                sample_of = plan.pack(sample_of, 0)
                result = self.llm(
                    inputs_embeds=plan.pack(sp.embeds),
                    position_ids=plan.positions,
                    output_hidden_states=kind != "text",
                    use_cache=False,
                    logits_to_keep=keep if text else 1,
                )
        out["llm_positions"] = sp.attention_mask.sum()
        out["llm_padded_positions"] = torch.tensor(
            sp.attention_mask.numel() if plan is None else plan.rows * plan.row_length
        )
        out[POSITIONS + "llm"] = sp.attention_mask.sum(1)
        if text:
            targets = sp.labels if plan is None else plan.pack(sp.labels, IGNORE)
            nll = F.cross_entropy(result.logits.float(), targets[keep], reduction="none")
            per_sample = torch.zeros(labelled.shape[0], dtype=nll.dtype, device=nll.device)
            per_sample = per_sample.index_add(0, sample_of[keep], nll)
            counted = labelled.sum(1)
            out["text_loss"] = nll.sum() / counted.sum()
            out["text_loss_per_sample"] = (per_sample / counted.clamp(min=1)).detach()
            out["text_tokens"] = counted.sum()
            out["text_loss_sums"] = per_sample.detach()
            out["text_loss_counts"] = counted
        if kind != "text":
            # The heads read the sample layout: speech and assistant positions index it.
            hidden = result.hidden_states[-1]
            hidden = hidden if plan is None else plan.unpack(hidden)
        if kind == "speech":
            semantic, lengths = self._semantic(sp, hidden, embedding, batch)
            if batch.speech_tokens is None or batch.speech_lengths is None:
                raise ValueError(f"stage {stage} needs speech tokens in the batch")
            vl = self.voice_lm(semantic, lengths, batch.speech_tokens, batch.speech_lengths)
            out["speech_loss"] = vl["loss"]
            out["speech_tokens"] = vl["n_targets"]
            # Read by `minmo eval` (top-1 accuracy); detached, as the duplex logits below.
            out["speech_logits"] = vl["logits"].detach()
            out["speech_targets"] = vl["targets"]
            out[POSITIONS + "output_projector"] = lengths
            out[POSITIONS + "voice_lm"] = vl["lengths"]
            with torch.no_grad():
                targets = vl["targets"]
                per_token = F.cross_entropy(
                    vl["logits"].float().transpose(1, 2),
                    targets,
                    ignore_index=IGNORE,
                    reduction="none",
                )
                out["speech_loss_sums"] = per_token.sum(1)
                out["speech_loss_counts"] = (targets != IGNORE).sum(1)
        if kind == "duplex":
            if batch.labels is None:
                raise ValueError("stage 4 needs duplex labels in the batch")
            if batch.assistant_activity is None:
                raise ValueError(
                    "stage 4 needs the assistant-activity track in the batch (shard member "
                    "assistant_activity.npy; shards built before it: rebuild stage 4)"
                )
            frames, padding = self._at_speech(hidden, sp.speech_positions)
            activity = _fit(batch.assistant_activity, frames.shape[1])
            logits = self.duplex(frames, activity, padding)
            n = min(logits.shape[1], batch.labels.shape[1])
            labels = batch.labels[:, :n].masked_fill(padding[:, :n], IGNORE)
            out["duplex_loss"] = self.duplex.loss(logits[:, :n], labels)
            out["duplex_frames"] = (labels != IGNORE).sum()
            out["duplex_logits"] = logits[:, :n].detach()
            out[POSITIONS + "duplex"] = (~padding).sum(1)
            sums, weights = self.duplex.sample_losses(out["duplex_logits"], labels)
            out["duplex_loss_sums"], out["duplex_loss_counts"] = sums, weights
        out["loss"] = out[f"{kind}_loss"]
        return out

    def _speech_inputs(
        self, batch: Batch, out: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if batch.waves is None or batch.wave_lengths is None:
            return None, None
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._trains("voice_encoder")):
            frames, lengths = self.voice_encoder(batch.waves, batch.wave_lengths)
        with torch.set_grad_enabled(
            torch.is_grad_enabled() and self._trains("voice_encoder", "input_projector")
        ):
            speech, speech_lengths = self.input_projector(frames, lengths)
        out[POSITIONS + "voice_encoder"] = lengths
        out[POSITIONS + "input_projector"] = speech_lengths
        return speech, speech_lengths

    def _semantic(
        self, sp: Spliced, hidden: torch.Tensor, embedding: nn.Module, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Semantic vectors of the assistant's text: [embedding ‖ hidden] per text position,
        from the first assistant token up to (not including) its <|im_end|>."""
        index, lengths = assistant_positions(sp, batch.target_start, self.special.turn_end)
        gathered_ids = torch.gather(sp.token_ids.clamp(min=0), 1, index)
        token_emb = embedding(gathered_ids)
        gathered_hidden = torch.gather(hidden, 1, index[..., None].expand(-1, -1, hidden.shape[-1]))
        semantic = self.output_projector(token_emb.detach(), gathered_hidden.detach())
        return semantic, lengths

    @staticmethod
    def _at_speech(
        hidden: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        padding = positions < 0
        index = positions.clamp(min=0)[..., None].expand(-1, -1, hidden.shape[-1])
        return torch.gather(hidden, 1, index).detach(), padding


def assistant_positions(
    sp: Spliced, target_start: torch.Tensor, turn_end: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence positions of each sample's assistant text, in order, up to (not including) its
    first <|im_end|>: (B, N) long, 0-padded, and (B,) counts.

    A position's text index is the number of text positions before it, so the speech gap does
    not count; the assistant's text starts at text index `target_start`. Batched: a cumulative
    sum finds the text indices, a scatter packs each row's kept positions to the left (padding
    positions all go to one extra column, dropped). One host sync (N).
    """
    ids = sp.token_ids
    text = (ids != IGNORE) & sp.attention_mask.bool()
    text_index = torch.cumsum(text.long(), 1) - 1
    assistant = text & (text_index >= target_start.to(ids.device)[:, None])
    ends = assistant & (ids == turn_end)
    position = torch.arange(ids.shape[1], device=ids.device)[None, :]
    first_end = torch.where(ends, position, ids.shape[1]).min(dim=1, keepdim=True).values
    keep = assistant & (position < first_end)
    lengths = keep.sum(dim=1)
    n = int(lengths.max()) if ids.shape[0] else 0
    if n == 0:
        raise ValueError("no assistant text to voice in this batch")
    slot = torch.where(keep, torch.cumsum(keep.long(), 1) - 1, n)
    index = torch.zeros(ids.shape[0], n + 1, dtype=torch.long, device=ids.device)
    index.scatter_(1, slot, position.expand_as(slot))
    return index[:, :n], lengths


def _fit(track: torch.Tensor, n: int) -> torch.Tensor:
    """A (B, F) per-frame track cut or 0-padded to the predictor's n frames (both start at the
    first speech frame with the same hop, like the labels)."""
    if track.shape[1] >= n:
        return track[:, :n]
    return F.pad(track, (0, n - track.shape[1]), value=0)


def parameter_table(config: MinMoConfig, text_vocab_size: int | None = None) -> dict[str, int]:
    """Parameters per module, built on the meta device (no memory allocated), LoRA separate."""
    special = SpecialIds(0, 1, 2)
    with torch.device("meta"):
        model = MinMo(config, special, text_vocab_size or config.llm.vocab_size)
    table = {}
    for name in MODULES:
        params = list(getattr(model, name).named_parameters())
        if name == "llm":
            table["llm"] = sum(p.numel() for n, p in params if "lora_" not in n)
            table["llm.lora"] = sum(p.numel() for n, p in params if "lora_" in n)
        else:
            table[name] = sum(p.numel() for _, p in params)
    return table
