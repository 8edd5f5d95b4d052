"""Benchmark: the padding fraction of each stage's LLM batches, padded vs packed.

    .venv/bin/python bench/packing.py --build build/demo [--jobs jobs/train] [--max-tokens N]

For every stage spec in `--jobs` (the demo's: jobs/train/*.yaml) this reads one epoch of the
build's shards for that stage with the spec's batch budget, runs the tiny MinMo's forward on each
batch (no gradients; random weights: only the shapes matter) and counts the LLM's positions:
real ones (text + spliced speech frames) against the positions it ran on,

1. padded: one sample per row, padded to the batch's longest (`packing: false`);
2. packed, same batches: the batches of (1) packed into rows of `max_tokens`;
3. packed budget: `packing: true` as the trainer runs it, the budget counting tokens summed, so
   batches fill up (fewer, larger batches; `max_samples` still caps them).

It also prints the voice encoder's audio padding, which packing leaves as it is (the encoder
still runs one clip per row). `--max-tokens` and `--max-samples` override the specs' budget.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from minmo.model.batch import Batch  # noqa: E402
from minmo.model.minmo import MinMo  # noqa: E402
from minmo.tokens.text import load_text_tokenizer  # noqa: E402
from minmo.train.config import TrainConfig, load_train_config  # noqa: E402
from minmo.train.data import StageLoader, training_dir  # noqa: E402
from minmo.train.loop import build_model  # noqa: E402


def epoch_positions(
    model: MinMo, config: TrainConfig, shards: str, packed_budget: bool, pack_length: int | None
) -> dict[str, float]:
    """One epoch of the stage's batches: batches, samples, real and run LLM positions, real and
    padded audio samples."""
    loader = StageLoader(
        training_dir(shards),
        seed=config.seed,
        max_samples=config.max_samples,
        max_audio_s=config.max_audio_s,
        max_tokens=config.max_tokens,
        packed=packed_budget,
    )
    model.pack_length = pack_length
    sums = dict.fromkeys(("batches", "samples", "real", "run", "audio", "audio_run"), 0.0)
    with torch.no_grad():
        while (batch := loader.next_batch()) is not None:
            assert isinstance(batch, Batch)  # collate=True
            out = model(batch)
            sums["batches"] += 1
            sums["samples"] += batch.size
            sums["real"] += float(out["llm_positions"])
            sums["run"] += float(out["llm_padded_positions"])
            if batch.waves is not None and batch.wave_lengths is not None:
                sums["audio"] += float(batch.wave_lengths.sum())
                sums["audio_run"] += float(batch.waves.numel())
    loader.close()
    return sums


def _pad(s: dict[str, float], real: str = "real", run: str = "run") -> str:
    return "–" if not s[run] else f"{100 * (1 - s[real] / s[run]):.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", required=True, help="a build holding shards/stage1..4")
    parser.add_argument("--jobs", default=str(REPO / "jobs" / "train"), help="stage specs")
    parser.add_argument("--max-tokens", type=int, default=None, help="override max_tokens")
    parser.add_argument("--max-samples", type=int, default=None, help="override max_samples")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    overrides = {"max_tokens": args.max_tokens, "max_samples": args.max_samples}
    print(
        "| stage | batches | samples | LLM positions | padding, padded | padding, packed "
        "(same batches) | batches, packed budget | padding, packed budget | audio padding |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for spec in sorted(Path(args.jobs).glob("*.yaml")):
        config = load_train_config(spec, args.build, **overrides)
        shards, _, _ = config.locations(args.build)
        tokenizer = load_text_tokenizer(config.model.text_tokenizer)
        model = build_model(config.model, tokenizer)
        model.apply_recipe(config.stage)
        model.eval()
        padded = epoch_positions(model, config, shards, False, None)
        same = epoch_positions(model, config, shards, False, config.max_tokens)
        budget = epoch_positions(model, config, shards, True, config.max_tokens)
        print(
            f"| {config.stage} | {padded['batches']:.0f} | {padded['samples']:.0f} | "
            f"{padded['real']:.0f} | {_pad(padded)} | {_pad(same)} | {budget['batches']:.0f} | "
            f"{_pad(budget)} | {_pad(padded, 'audio', 'audio_run')} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
