"""The training loop: one function that runs as a single process, under torchrun, or inside a
Ray Train worker (`minmo train --ray`), unchanged.

    build MinMo (tiny or full; real weights from local paths) -> init_from the previous stage's
    export -> apply the stage's recipe -> DDP / FSDP2 -> AdamW over trainable parameters only,
    warmup + cosine -> resume from the newest checkpoint (weights, optimizer, scheduler, data
    position, RNG) -> steps (gradient accumulation, clipping, bf16 autocast on GPU) -> a
    validation loss on a held-out shard directory every N steps (no grad, eval mode, the same
    loss) -> checkpoint every N steps and on SIGTERM -> export the trained modules.

An object-store `out` (the default on an `s3://` build) is written to a local staging directory
and uploaded by rank 0 after each checkpoint and the export; an object-store `init_from` is
downloaded first (minmo/train/store.py holds the commit protocol).

Ranks stay in lockstep: before every micro-batch all ranks agree (all-reduce MIN) that each has
one; when any rank's epoch is exhausted, all move to the next epoch together. A rank therefore
never waits on a collective that another rank will not reach.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minmo.model.minmo import LOSS_OF_STAGE, RECIPES, MinMo, MinMoConfig, SpecialIds
from minmo.model.voice_encoder import VoiceEncoder
from minmo.model.voice_lm import VoiceTokenLM
from minmo.tokens.text import load_text_tokenizer
from minmo.train.checkpoint import Checkpointer, export, load_export, trained_modules
from minmo.train.config import ModelSpec, TrainConfig
from minmo.train.data import ShardIndex, StageLoader, training_dir
from minmo.train.distributed import (
    DistInfo,
    all_min,
    all_sum,
    barrier,
    init_distributed,
    resolve_mode,
    wrap_model,
)
from minmo.train.flops import FlopCounter, peak_flops
from minmo.train.metrics import MetricsLog, TaskLosses
from minmo.train.optim import adamw_implementation, build_optimizer
from minmo.train.store import StoreMirror, fetch_export, is_remote, staging_dir
from minmo.train.workers import WorkerProbe, choose_workers, cpus_for_workers
from schemas.units import SAMPLE_RATE_HZ


def build_model(spec: ModelSpec, tokenizer: Any) -> MinMo:
    """MinMo at `spec.size`; real weights where the spec gives local paths."""
    from dataclasses import replace

    vocab = len(tokenizer)
    config = MinMoConfig.tiny(vocab) if spec.size == "tiny" else MinMoConfig.full()
    if spec.llm_path:
        config = replace(config, llm=replace(config.llm, path=spec.llm_path))
    model = MinMo(config, SpecialIds.from_tokenizer(tokenizer), vocab)
    if spec.sensevoice_dir:
        model.voice_encoder = VoiceEncoder.from_pretrained(spec.sensevoice_dir)
    if spec.cosyvoice2_llm:
        model.voice_lm = VoiceTokenLM.from_cosyvoice2(spec.cosyvoice2_llm, config.voice_lm)
    return model


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    stage: str
    steps_run: int
    final_step: int
    losses: list[float] = field(default_factory=list)
    valid_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    resumed_from: str | None = None
    export_dir: str | None = None
    trainable: dict[str, dict[str, int]] = field(default_factory=dict)
    wall_s: float = 0.0
    steps: int = 0  # the stage's configured steps: reached before this run, it was finished

    def render(self) -> str:
        if self.losses:
            done = f"loss {self.losses[0]:.4f} -> {self.losses[-1]:.4f}"
        elif self.steps and self.final_step >= self.steps:
            done = f"already finished ({self.steps} steps), nothing to train"
        else:
            done = "no step trained"
        parts = [
            f"train {self.stage}: {self.steps_run} steps this run (step {self.final_step}) "
            f"in {self.wall_s:.1f} s; {done}",
            "  trainable: "
            + ", ".join(
                f"{m} {v['trainable']:,}/{v['total']:,}" for m, v in self.trainable.items()
            ),
        ]
        if self.valid_losses:
            (s0, v0), (s1, v1) = self.valid_losses[0], self.valid_losses[-1]
            parts.append(
                f"  valid loss {v0:.4f} (step {s0}) -> {v1:.4f} (step {s1}), "
                f"{len(self.valid_losses)} validation(s)"
            )
        if self.resumed_from:
            parts.append(f"  resumed from {self.resumed_from}")
        if self.export_dir:
            parts.append(f"  exported to {self.export_dir}")
        return "\n".join(parts)


class _Stop:
    """SIGTERM sets a flag; the loop checkpoints at the end of the step and leaves."""

    def __init__(self) -> None:
        self.requested = False
        # Not the main thread (some launchers): no handler, so no flag.
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True


def _next_batch(loader: Any, info: DistInfo) -> Any:
    """A batch on every rank, or an epoch change on every rank together."""
    while True:
        batch = loader.next_batch()
        if all_min(int(batch is not None), info):
            return batch
        loader.next_epoch()


def _valid_loader(config: TrainConfig, info: DistInfo) -> StageLoader | None:
    """The held-out set's loader (no workers: a few batches per validation), or None when the
    spec names none. A valid directory with too few samples for every rank to get one is said
    on stderr and skipped, not a failed run: a small build's valid split may be empty."""
    if not config.valid:
        return None
    try:
        index = ShardIndex.load(config.valid, config.storage_options)
    except ValueError as exc:  # no shards listed
        print(f"minmo train: no validation loss: {exc}", file=sys.stderr)
        return None
    if index.total < info.world:
        print(
            f"minmo train: no validation loss: {config.valid} holds {index.total} samples "
            f"for {info.world} ranks",
            file=sys.stderr,
        )
        return None
    return StageLoader(
        config.valid,
        rank=info.rank,
        world=info.world,
        seed=config.seed,
        num_workers=0,
        max_samples=config.max_samples,
        max_audio_s=config.max_audio_s,
        max_tokens=config.max_tokens,
        packed=config.packing,
        storage_options=config.storage_options,
    )


def validate(
    wrapped: torch.nn.Module,
    loader: StageLoader,
    batches: int,
    kind: str,
    info: DistInfo,
    autocast: Any,
) -> dict[str, float]:
    """The training loss on the first `batches` batches of the held-out set: eval mode (no
    dropout), no grad, averaged over batches and ranks; {"valid_loss", "valid_<part>", ...}.
    Every rank runs the same number of batches (they agree on each one, as in training)."""
    loader.rewind()
    wrapped.eval()
    sums: dict[str, float] = {}
    n = 0
    try:
        with torch.no_grad():
            for _ in range(batches):
                batch = loader.next_batch()
                if not all_min(int(batch is not None), info):
                    break
                with autocast:
                    out = wrapped(batch.to(info.device))
                for key, value in out.items():
                    if key.endswith("_loss") or key == "loss":
                        sums[key] = sums.get(key, 0.0) + float(value)
                n += 1
    finally:
        wrapped.train()
    keys = sorted(sums)
    reduced = all_sum([sums[k] for k in keys] + [float(n)], info)
    count = reduced[-1]
    if not count:
        return {}
    means = {k: v / count for k, v in zip(keys, reduced[:-1], strict=True)}
    out = {f"valid_{k}": v for k, v in means.items() if k != "loss"}
    out["valid_loss"] = means.get(f"{kind}_loss", means.get("loss", float("nan")))
    out["valid_batches"] = count / info.world
    return out


def train(config: TrainConfig, build: str, progress: bool = True) -> TrainResult:
    started = time.perf_counter()
    # Before any work: a location the trainer cannot serve is the user's to fix, said at once.
    shards, out, init_from = config.locations(build)
    info = init_distributed()
    # Rank 0 moves every byte between the store and the staging folders; the others wait.
    mirror = StoreMirror(out, config.storage_options, config.staging) if is_remote(out) else None
    init_dir = str(staging_dir(init_from, config.staging)) if is_remote(init_from) else init_from
    if info.is_main:
        if mirror is not None:
            mirror.pull()
        if init_dir != init_from:
            fetch_export(init_from, Path(init_dir), config.storage_options)
    barrier(info)
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    np.random.seed(config.seed)
    tokenizer = load_text_tokenizer(config.model.text_tokenizer)
    model = build_model(config.model, tokenizer)
    inherited = load_export(init_dir, model) if init_dir else []
    if init_dir != init_from:
        barrier(info)  # every rank has loaded it
        if info.is_main:
            shutil.rmtree(init_dir, ignore_errors=True)
    model.apply_recipe(config.stage)
    model.pack_length = config.max_tokens if config.packing else None
    trainable_report = model.trainable_report()
    flop_counter = FlopCounter(model)  # the unwrapped model: its hooks see every wrapper's call
    mode = resolve_mode(config.parallel, info)
    wrapped = wrap_model(
        model,
        mode,
        info,
        config.activation_checkpointing,
        compile_backend="inductor" if config.compile else None,
    )
    wrapped.train()
    params = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, config)
    if info.is_main and progress:
        print(f"minmo train: AdamW ({adamw_implementation(params)})", file=sys.stderr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: warmup_cosine(s, config.warmup_steps, config.steps, config.min_lr_ratio),
    )
    loader = StageLoader(
        training_dir(shards, config.storage_options),
        rank=info.rank,
        world=info.world,
        seed=config.seed,
        # "auto": none until WorkerProbe has timed loading in this process.
        num_workers=0 if config.num_workers == "auto" else int(config.num_workers),
        max_samples=config.max_samples,
        max_audio_s=config.max_audio_s,
        max_tokens=config.max_tokens,
        packed=config.packing,
        storage_options=config.storage_options,
    )
    valid_loader = _valid_loader(config, info)
    out_dir = mirror.local if mirror is not None else Path(out)
    ckpt = Checkpointer(out_dir, config.keep_last, info.rank)
    step = 0
    resumed = ckpt.latest()
    if resumed is not None:
        extras = ckpt.load(resumed, wrapped, optimizer)
        scheduler.load_state_dict(extras["scheduler"])
        loader.load_state_dict(extras["data"])
        step = int(extras["step"])
    probe = WorkerProbe() if config.num_workers == "auto" else None
    stop = _Stop()
    metrics = MetricsLog(
        out_dir, info.is_main, config.steps, step, config.tensorboard, progress and info.is_main
    )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if config.bf16 and info.device.type == "cuda"
        else contextlib.nullcontext()
    )
    peak = peak_flops(config.peak_flops, info.device, config.bf16)
    result = TrainResult(
        config.stage,
        0,
        step,
        trainable=trainable_report,
        steps=config.steps,
        resumed_from=(f"{mirror.uri}/{resumed.name}" if mirror else str(resumed))
        if resumed
        else None,
    )
    try:
        while step < config.steps:
            t0 = time.perf_counter()
            sums = dict.fromkeys(
                ("samples", "audio_s", "positions", "padded", "tokens", "flops"), 0.0
            )
            # Losses and positions stay on the device until the step's end: one device-to-host
            # copy per step, none per micro-batch (a sync would stop the host queueing work).
            part_sums: dict[str, torch.Tensor] = {}
            positions = torch.zeros((), dtype=torch.long, device=info.device)
            flops = torch.zeros((), dtype=torch.float64, device=info.device)
            tasks = TaskLosses(info.device)
            load_s = 0.0
            for micro in range(config.grad_accum):
                t_load = time.perf_counter()
                host = _next_batch(loader, info)  # the loader's batch: counting it costs no sync
                load_s += time.perf_counter() - t_load
                batch = host.to(info.device)
                sync = micro == config.grad_accum - 1 or mode != "ddp"
                with (
                    contextlib.nullcontext() if sync else wrapped.no_sync(),
                    autocast,
                    flop_counter.watch(),
                ):
                    out = wrapped(batch)
                    loss = out["loss"] / config.grad_accum
                counted = flop_counter.count_on_device(out)
                flops = flops if counted is None else flops + counted
                tasks.add(out, batch.tasks)
                loss.backward()
                for key, value in out.items():
                    if key.endswith("_loss"):
                        part = value.detach().double() / config.grad_accum
                        part_sums[key] = part_sums[key] + part if key in part_sums else part
                positions = positions + out["llm_positions"].detach()
                sums["padded"] += float(out["llm_padded_positions"])  # a host-side count
                sums["samples"] += host.size
                if host.wave_lengths is not None:
                    sums["audio_s"] += float(host.wave_lengths.sum()) / SAMPLE_RATE_HZ
                sums["tokens"] += float(host.input_lengths.sum())
                if host.speech_lengths is not None:
                    sums["tokens"] += float(host.speech_lengths.sum())
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.clip_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            result.steps_run += 1
            keys = sorted(part_sums)
            norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            on_device = [
                *(part_sums[k] for k in keys),
                positions.double(),
                flops,
                norm.detach().double(),
            ]
            *losses, sums["positions"], sums["flops"], grad_norm_value = torch.stack(
                on_device
            ).tolist()
            # Loss averaged over ranks, so the log does not depend on which rank writes it.
            local = losses + list(sums.values())
            reduced = all_sum(local + tasks.values(), info)
            parts = {k: v / info.world for k, v in zip(keys, reduced[: len(keys)], strict=True)}
            totals = dict(zip(sums, reduced[len(keys) : len(local)], strict=True))
            dt = time.perf_counter() - t0
            record = {
                "loss": parts[f"{_kind(config.stage)}_loss"],
                **parts,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": grad_norm_value,
                "samples_per_s": totals["samples"] / dt,
                "tokens_per_s": totals["tokens"] / dt,
                "llm_positions_per_s": totals["positions"] / dt,
                "audio_s_per_s": totals["audio_s"] / dt,
                "step_s": dt,
                "padding": 1.0 - totals["positions"] / max(totals["padded"], 1.0),
                "epoch": loader.state_dict()["epoch"],
                "model_flops": totals["flops"],
                **tasks.record(reduced[len(local) :]),
            }
            if probe is not None and not probe.done:
                per_micro = config.grad_accum
                probe.add(load_s / per_micro, (dt - load_s) / per_micro)
                if probe.done:
                    record["num_workers"] = _choose_workers(probe, loader, info)
            if peak:
                record["mfu"] = totals["flops"] / dt / (peak * info.world)
            result.losses.append(record["loss"])
            validating = valid_loader is not None and (
                step % config.valid_every == 0 or step == config.steps
            )
            if validating:
                record.update(
                    validate(
                        wrapped,
                        valid_loader,
                        config.valid_batches,
                        _kind(config.stage),
                        info,
                        autocast,
                    )
                )
                if "valid_loss" in record:
                    result.valid_losses.append((step, record["valid_loss"]))
            if step % config.log_every == 0 or step == config.steps or validating:
                metrics.log(step, record)
            leaving = not all_min(int(not stop.requested), info)
            if step % config.save_every == 0 or step == config.steps or leaving:
                saved = ckpt.save(
                    step,
                    wrapped,
                    optimizer,
                    {"scheduler": scheduler.state_dict(), "data": loader.state_dict()},
                )
                if mirror is not None and info.is_main:
                    metrics.flush()
                    mirror.push_checkpoint(saved, config.keep_last)
            if leaving:
                break
    finally:
        metrics.close()
        loader.close()
        if valid_loader is not None:
            valid_loader.close()
    result.final_step = step
    if step >= config.steps:
        exported = export(
            out_dir,
            wrapped,
            trained_modules(RECIPES[config.stage], inherited),
            config.stage,
            info.rank,
            meta={"model": asdict(config.model), "seed": config.seed, "step": step},
        )
        result.export_dir = str(exported) if exported else None
        if mirror is not None and exported is not None:
            result.export_dir = mirror.push_export(exported)
    if mirror is not None and info.is_main:
        mirror.push_logs()
        mirror.remove_staging()
    result.wall_s = time.perf_counter() - started
    return result


def _choose_workers(probe: WorkerProbe, loader: StageLoader, info: DistInfo) -> int:
    """`num_workers: auto`'s choice from the probe's timings, averaged over ranks (so every
    rank takes the same count), applied to `loader` and said on stderr by rank 0."""
    load_s, step_s = (v / info.world for v in all_sum(list(probe.means()), info))
    cpus = cpus_for_workers()
    workers = choose_workers(load_s, step_s, cpus)
    loader.set_num_workers(workers)
    if info.is_main:
        print(
            f"minmo train: num_workers auto -> {workers} (loading {load_s * 1e3:.1f} ms, "
            f"step {step_s * 1e3:.1f} ms per micro-batch; {cpus} CPU(s) for workers per rank)",
            file=sys.stderr,
        )
    return workers


def _kind(stage: str) -> str:
    return LOSS_OF_STAGE[stage]
