"""Benchmark: every step's throughput at two build sizes, and the rates `minmo plan` reads.

    .venv/bin/python bench/scale.py [--sizes 10 100] [--work /tmp/minmo-scale] [--ray-cpus 2]
        [--steps ingest synthesize ...] [--out bench/rates.json] [--no-write] [--keep]

Size: copies of the demo corpus (`minmo demo-data`: utterances and two-party conversations,
WAV and FLAC at their demo rates) and of the bundled text dialogues. "10x the demo" is 10 copies:
ten times the demo's audio-hours (each copy at its own gain, so no copy is an exact duplicate of
another and every step does the work again) and ten times its dialogues (fresh ids, so each copy
gets its own voices and its own TTS). Every step then runs, as `jobs/demo.yaml` configures it
(that file is the one home of the step settings; only the inputs, the shard size and the speech
tokenizer are changed here), in a fresh child process with a local Ray: ingest, synthesize,
diarize, label-turns, shards per stage (stage1..4, one child each), stats.

Each child starts Ray first (timed apart: a cluster pays it once per job, not per step), then
runs the step while a sampler (`ProcessSampler` of bench/shards_scale.py) sums the CPU seconds
of the whole process tree: driver, Ray's own processes, workers. A rate is audio-hours handled
per core-hour of that CPU time; on a machine shared with other work the wall time follows the
load, the CPU time much less, so the CPU rate is what rates.json keeps (the wall rate, wall x
Ray CPUs, is printed beside it, with the load average). Audio-hours handled, per step: ingest
the source audio of the run; synthesize the speech it produced; diarize and label-turns the
conversations' audio; shards the stage's sample audio (task copies of one segment count each);
stats the build's recordings. Bytes written per audio-hour: the growth of each output folder.

The speech tokenizer is the tiny test checkpoint in the step runs (a 124M model on 2 CPU cores
would take most of the run). Its full-size cost is measured apart, in process
(`minmo.tokens.speech.SpeechTokenizer`, random weights: the same compute as real ones), and
added to the stages that hold speech tokens: shards per_core_hour in rates.json = stage audio
/ (measured CPU + target speech seconds / full tokenizer rate); the tiny-tokenizer rate is kept
beside it. No GPU here: every rate is a CPU rate (per_gpu_hour null).

Target: each step's rate at the larger size >= 90 % of its rate at the smaller one (no step
grows super-linearly). rates.json keeps the larger size's rates. `--from-raw WORK/raw.json`
redoes the table and rates.json from a finished run's measurements.

Measured 2026-12-06, commit a3990a4, on the development VM (AMD EPYC, 2 vCPUs, 23.5 GiB, no
GPU), Python 3.11.7, Ray 2.60.0, pyarrow 26.0.1, torch 2.14.1, with `--sizes 2 20` (0.20 and
2.03 source audio-hours; 10x / 100x would have taken hours: other engineers' runs kept the load
average at 15-51), 42 minutes. Audio-hours per core-hour, 2x -> 20x (ratio): ingest 36 -> 180
(5.0), synthesize 19 -> 83 (4.3), diarize 24 -> 70 (2.9), label-turns 87 -> 849 (9.7), shards
stage1 12 -> 158 (13.3), stage2 10 -> 101 (9.8), stage3 2 -> 21 (12.6), stage4 17 -> 138 (8.2),
stats 188 -> 1,374 (7.3): all MET, and all still dominated by each run's fixed 20-50 CPU-s
(Ray Data start-up, actor pools, model loads). Full S3TokenizerV2 on CPU: 5.3 target-speech
hours per core-hour, which brings shards stage2 / stage3 to 5.1 / 3.6 in rates.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from machine import cpu_model  # noqa: E402
from shards_scale import ProcessSampler  # noqa: E402
from shards_scale import run_child as run_child_script  # noqa: E402

from schemas.units import SAMPLE_RATE_HZ  # noqa: E402

DEMO_JOB = REPO / "jobs" / "demo.yaml"
DIALOGUES = REPO / "jobs" / "data" / "demo_dialogues.jsonl"
STAGES = ("stage1", "stage2", "stage3", "stage4")
STEP_RUNS = ("ingest", "synthesize", "diarize", "label-turns", *STAGES, "stats")
RATIO_MIN = 0.90
TOKENS_PER_S = 25  # S3 tokenizer v2 codes per second of speech
# Steps whose output is bounded per run, not per audio-hour (the stats report keeps
# distributions past 1,000 shards): their bytes are kept as measured, not scaled by the plan.
PER_RUN_OUTPUT = ("stats",)
VERSIONED = ("ray", "pyarrow", "torch", "numpy", "soundfile", "soxr", "duckdb", "webdataset")


# ---- inputs: the demo corpus and dialogues, k copies ------------------------------------------


def scaled_sources(demo: Path, out: Path, copies: int) -> tuple[Path, float]:
    """`copies` copies of the demo corpus under `out` (copy c at gain 0.5 + 0.5 (c+1)/copies,
    same container, rate and channels) and one manifest for all; returns it and the audio s."""
    import soundfile as sf

    rows = [json.loads(line) for line in (demo / "manifest.jsonl").read_text().splitlines()]
    audio = {r["path"]: sf.read(demo / r["path"], dtype="float32", always_2d=True) for r in rows}
    info = {r["path"]: sf.info(str(demo / r["path"])) for r in rows}
    out.mkdir(parents=True, exist_ok=True)
    manifest, audio_s = [], 0.0
    for c in range(copies):
        gain = 0.5 + 0.5 * (c + 1) / copies
        for r in rows:
            data, rate = audio[r["path"]]
            rel = f"copy{c:04d}/{r['path']}"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(out / rel, data * gain, rate, subtype=info[r["path"]].subtype)
            manifest.append({**r, "path": rel})
            audio_s += data.shape[0] / rate
    path = out / "manifest.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in manifest))
    return path, audio_s


def scaled_dialogues(out: Path, copies: int) -> Path:
    """The bundled dialogues, `copies` times, each copy's ids suffixed with its number."""
    lines = [json.loads(line) for line in DIALOGUES.read_text().splitlines() if line.strip()]
    path = out / "dialogues.jsonl"
    with path.open("w") as f:
        for c in range(copies):
            for d in lines:
                f.write(json.dumps({**d, "id": f"{d['id']}-{c:04d}"}, ensure_ascii=False) + "\n")
    return path


# ---- the child: one step in a fresh interpreter ----------------------------------------------


def handled_audio_s(step: str, summary: Any) -> float:
    """The audio seconds a step's run handled (see the module docstring)."""
    if step == "ingest":
        return float(summary.run_audio_s)
    if step == "synthesize":
        return 3600 * sum(summary.to_dict()["hours_per_role"].values())
    if step == "diarize":
        return float(summary.run_audio_s)
    if step == "label-turns":
        return 3600 * float(summary.to_dict()["hours"])
    if step == "shards":
        return float(summary.stages[0]["totals"]["audio_s"])
    if step == "stats":
        return 3600 * float(summary.stats[0]["recordings"]["hours"])
    raise ValueError(step)


def child(job: dict[str, Any]) -> dict[str, Any]:
    """Start Ray, then run one step of the demo job spec with `overrides`, CPU-sampled."""
    from minmo.cli.jobs import load_job
    from pipelines.ray_runtime import ensure_ray

    t0 = time.perf_counter()
    ensure_ray(num_cpus=job["ray_cpus"], progress=False)
    ray_start_s = time.perf_counter() - t0
    sections = {step.name: (step, section) for step, section in load_job(DEMO_JOB, job["build"])}
    step, section = sections[job["step"]]
    section = {k: v for k, v in section.items() if k not in job["drop"]} | job["overrides"]
    sampler = ProcessSampler()
    with sampler:
        cpu0, t = sampler.cpu_s(), time.perf_counter()
        summary = step.run(job["build"], section, False)
        wall_s, cpu_s = time.perf_counter() - t, sampler.cpu_s() - cpu0
    result = {
        "ray_start_s": ray_start_s,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "audio_s": handled_audio_s(step.name, summary),
        "load_avg_1m": os.getloadavg()[0],
    }
    if step.name == "shards":
        totals = summary.stages[0]["totals"]
        result |= {"samples": totals["samples"], "speech_tokens": totals["speech_tokens"]}
    return result


def run_child(job: dict[str, Any], log: Path) -> dict[str, Any]:
    """`child(job)` of this script in a fresh interpreter (shards_scale's runner)."""
    return run_child_script(job, log, script=__file__)


# ---- measuring one size ----------------------------------------------------------------------


def folder_bytes(build: Path) -> dict[str, int]:
    """Bytes per output folder: each top-level folder, and each stage under shards/."""
    out: dict[str, int] = {}
    for path in build.rglob("*"):
        if not path.is_file():
            continue
        parts = path.relative_to(build).parts
        if len(parts) < 2 or parts[0] == "demo-src":
            continue
        key = "/".join(parts[:2]) if parts[0] == "shards" and len(parts) > 2 else parts[0]
        out[key] = out.get(key, 0) + path.stat().st_size
    return out


def job_for(run: str, build: Path, inputs: dict[str, str], args: argparse.Namespace) -> dict:
    """The child job of one step run: the demo spec's section, with the scaled inputs."""
    job: dict[str, Any] = {"build": str(build), "ray_cpus": args.ray_cpus, "drop": []}
    if run == "ingest":
        job |= {"step": "ingest", "overrides": {"src": inputs["manifest"]}}
    elif run == "synthesize":
        job |= {"step": "synthesize", "overrides": {"dialogues": [inputs["dialogues"]]}}
    elif run in STAGES:
        # Production-sized shards (the demo cuts 64 samples per shard to show several).
        job |= {
            "step": "shards",
            "overrides": {"stages": [run], "speech_tokenizer": inputs["speech_tokenizer"]},
            "drop": ["max_samples"],
        }
    else:
        job |= {"step": run, "overrides": {}}
    return job


def measure_size(
    copies: int, demo: Path, work: Path, tokenizer: str, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    root = work / f"x{copies}"
    shutil.rmtree(root, ignore_errors=True)
    build = root / "build"
    build.mkdir(parents=True)
    manifest, source_s = scaled_sources(demo, root / "src", copies)
    inputs = {
        "manifest": str(manifest),
        "dialogues": str(scaled_dialogues(root, copies)),
        "speech_tokenizer": tokenizer,
    }
    print(f"# {copies}x the demo: {source_s / 3600:.3f} source audio-hours", flush=True)
    results = {}
    for run in args.steps:
        before = folder_bytes(build)
        r = run_child(job_for(run, build, inputs, args), root / "log.txt")
        after = folder_bytes(build)
        grown = {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
        key = f"shards:{run}" if run in STAGES else run
        r["bytes"] = grown
        results[key] = r
        print(
            f"  {key:<14} {r['audio_s'] / 3600:8.3f} audio-h  {r['wall_s']:7.1f} s wall  "
            f"{r['cpu_s']:7.1f} CPU-s  {rate(r):8,.0f} audio-h/core-h  (load {r['load_avg_1m']:.1f})",
            flush=True,
        )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return results


def rate(r: dict[str, Any]) -> float:
    """Audio-hours per core-hour of the process tree's CPU time."""
    return r["audio_s"] / r["cpu_s"] if r["cpu_s"] > 0 else 0.0


def wall_rate(r: dict[str, Any], cpus: int) -> float:
    return r["audio_s"] / (r["wall_s"] * cpus) if r["wall_s"] > 0 else 0.0


def full_tokenizer_rate(demo: Path, seconds: float = 60.0) -> dict[str, float]:
    """Target-speech seconds per CPU second of the full-size S3TokenizerV2 (random weights),
    on demo utterances resampled to 16 kHz, in this process, best of 2 after a warm-up."""
    import soundfile as sf
    import torch

    from minmo.audio.resample import resample
    from minmo.tokens.speech import SpeechTokenizer

    clips, total = [], 0.0
    for path in sorted((demo / "utterances").rglob("*.*")):
        data, sr = sf.read(path, dtype="float32")
        clip = resample(data[None, :], sr)[0] if sr != SAMPLE_RATE_HZ else data
        clips.append(clip)
        total += clip.shape[0] / SAMPLE_RATE_HZ
        if total >= seconds:
            break
    tokenizer = SpeechTokenizer(checkpoint=None, device="cpu")
    batch = clips[:8]
    tokenizer.tokenize(batch)
    best = float("inf")
    for _ in range(2):
        c0 = time.process_time()
        for i in range(0, len(clips), 8):
            tokenizer.tokenize(clips[i : i + 8])
        best = min(best, time.process_time() - c0)
    return {"audio_s": total, "cpu_s": best, "threads": torch.get_num_threads()}


# ---- main ------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict[str, Any]:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(ram, 1),
        "gpu": None,
        "platform": platform.platform(),
    }


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        out = ""
    return out or "unknown (not a git checkout: pass --commit)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[10, 100], help="demo copies")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--steps", nargs="+", default=list(STEP_RUNS), choices=STEP_RUNS)
    parser.add_argument("--out", type=Path, default=BENCH / "rates.json")
    parser.add_argument("--no-write", action="store_true", help="print only; keep rates.json")
    parser.add_argument("--keep", action="store_true", help="keep the builds under --work")
    parser.add_argument("--commit", default=None, help="code version to record (default: git)")
    parser.add_argument("--from-raw", type=Path, default=None, help="report a run's raw.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(json.loads(args.child))
        Path(args.result).write_text(json.dumps(result))
        return
    if args.from_raw:
        report(json.loads(args.from_raw.read_text()), args)
        return

    from minmo.demo import build_demo_corpus
    from minmo.testing.tiny_models import build_tiny_checkpoint

    work = args.work or Path(tempfile.mkdtemp(prefix="minmo-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    print(
        f"# {cpu_model()}, {os.cpu_count()} CPUs, Ray CPUs {args.ray_cpus}, load "
        f"{os.getloadavg()[0]:.1f}; work {work}",
        flush=True,
    )
    demo = work / "demo-src"
    summary = build_demo_corpus(demo, seed=0, progress=False)
    tiny = str(build_tiny_checkpoint(work / "s3tiny.pt"))
    small, large = sorted(args.sizes)
    by_size = {n: measure_size(n, demo, work, tiny, args) for n in (small, large)}
    raw = {
        "sizes": [small, large],
        "by_size": {str(n): r for n, r in by_size.items()},
        "tokenizer": full_tokenizer_rate(demo),
        "demo_audio_s": summary.audio_s,
        "started": started,
        "wall_s": round(time.time() - started, 1),
    }
    (work / "raw.json").write_text(json.dumps(raw, indent=1))
    report(raw, args)


def report(raw: dict[str, Any], args: argparse.Namespace) -> None:
    """The step x size table, and rates.json from the larger size (unless --no-write)."""
    small, large = raw["sizes"]
    by_size = {int(n): r for n, r in raw["by_size"].items()}
    tok = raw["tokenizer"]
    tok_rate = tok["audio_s"] / tok["cpu_s"]  # target-speech s per CPU s, full model

    print(
        f"\nfull S3TokenizerV2 on CPU ({tok['threads']} threads): "
        f"{tok_rate:.2f} target-speech hours per core-hour"
    )
    print(
        f"\n| step | {small}x audio-h | {small}x rate | {large}x audio-h | {large}x rate | "
        f"ratio | target (>= {RATIO_MIN:.2f}) | {large}x wall rate | {large}x load |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    steps: dict[str, Any] = {}
    for key, big in by_size[large].items():
        lo = by_size[small][key]
        ratio = rate(big) / rate(lo) if rate(lo) else 0.0
        print(
            f"| {key} | {lo['audio_s'] / 3600:.3f} | {rate(lo):,.0f} | {big['audio_s'] / 3600:.3f} "
            f"| {rate(big):,.0f} | {ratio:.2f} | {'MET' if ratio >= RATIO_MIN else 'MISSED'} | "
            f"{wall_rate(big, args.ray_cpus):,.0f} | {big['load_avg_1m']:.1f} |"
        )
        hours = big["audio_s"] / 3600
        written = {k: v / hours for k, v in big["bytes"].items()} if hours else {}
        if key in PER_RUN_OUTPUT:  # a report: its size does not follow the audio
            written = {}
        entry: dict[str, Any] = {
            "per_core_hour": rate(big),
            "per_gpu_hour": None,
            "bytes_per_audio_hour": written,
            "per_core_hour_wall": wall_rate(big, args.ray_cpus),
            "scale_ratio": ratio,
            "bytes_per_run": big["bytes"],
            "measured_at": {
                f"{n}x": {
                    "audio_hours": by_size[n][key]["audio_s"] / 3600,
                    "wall_s": by_size[n][key]["wall_s"],
                    "cpu_s": by_size[n][key]["cpu_s"],
                    "ray_start_s": by_size[n][key]["ray_start_s"],
                    "load_avg_1m": by_size[n][key]["load_avg_1m"],
                }
                for n in (small, large)
            },
        }
        if big.get("speech_tokens"):
            target_s = big["speech_tokens"] / TOKENS_PER_S
            entry["per_core_hour_tiny_tokenizer"] = entry["per_core_hour"]
            entry["per_core_hour"] = big["audio_s"] / (big["cpu_s"] + target_s / tok_rate)
            entry["target_speech_share"] = target_s / big["audio_s"]
        steps[key] = entry
    if any("speech_tokens" in v for v in by_size[large].values()):
        print("(shards rates above: tiny tokenizer; rates.json adds the full tokenizer's CPU)")
    for key, entry in steps.items():
        if "per_core_hour_tiny_tokenizer" in entry:
            print(f"  {key}: {entry['per_core_hour']:,.1f} audio-h per core-h with the full model")

    if args.no_write:
        return
    rates = {
        "written_by": "bench/scale.py",
        "date": datetime.date.fromtimestamp(raw["started"]).isoformat(),
        "commit": args.commit or git_commit(),
        "machine": machine(),
        "versions": versions(),
        "unit": "audio-hours per core-hour of CPU time (process tree: driver, Ray, workers)",
        "sizes": {
            "definition": "copies of the demo corpus (audio) and of the bundled dialogues",
            "demo_audio_hours": raw["demo_audio_s"] / 3600,
            "copies": [small, large],
            "rates_from": f"{large}x",
        },
        "ray_cpus": args.ray_cpus,
        "speech_tokenizer": {
            "runs": "tiny test checkpoint",
            "full_model_speech_s_per_cpu_s": tok_rate,
            "note": "shards per_core_hour adds the full model's CPU for the stage's target "
            "speech (speech_tokens / 25 Hz); per_core_hour_tiny_tokenizer is without it",
        },
        "gpu": "none lent: every rate is a CPU rate",
        "wall_s": raw["wall_s"],
        "load_avg_1m_at_end": os.getloadavg()[0],
        "steps": steps,
    }
    args.out.write_text(json.dumps(rates, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
