"""The `minmo` command line: one sub-command per step, plus `run` for job specs.

Heavy libraries (ray, torch) are imported inside the commands, so `minmo --help` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from minmo.io.fs import LOCAL_SCHEMES, STORE_SCHEMES, check_scheme

# Every path argument of every command, and the URI schemes the command serves there (a local
# path always works). `main` checks them all before the command runs, so a scheme a command
# cannot serve is an error naming the command and the scheme, and a URI never becomes a local
# directory named after it. Model and tokenizer files are read by libraries that take local
# paths only.
PATH_ARGS: dict[str, dict[str, tuple[str, ...]]] = {
    "demo-data": {"out": STORE_SCHEMES},
    "ingest": {"src": STORE_SCHEMES, "build": STORE_SCHEMES},
    "synthesize": {"build": STORE_SCHEMES, "dialogues": STORE_SCHEMES, "responses": STORE_SCHEMES},
    "diarize": {"build": STORE_SCHEMES, "diarization_model": LOCAL_SCHEMES},
    "label-turns": {"build": STORE_SCHEMES},
    "shards": {
        "build": STORE_SCHEMES,
        "text_tokenizer": LOCAL_SCHEMES,
        "speech_tokenizer": LOCAL_SCHEMES,
    },
    "verify": {"dir": STORE_SCHEMES},
    "stats": {"inputs": STORE_SCHEMES, "out": STORE_SCHEMES},
    "train": {
        "job": STORE_SCHEMES,
        "build": STORE_SCHEMES,
        "out": STORE_SCHEMES,
        "staging": LOCAL_SCHEMES,
    },
    "run": {"job": STORE_SCHEMES, "build": STORE_SCHEMES},
    "plan": {"mix": STORE_SCHEMES, "rates": STORE_SCHEMES},
}


def check_paths(args: argparse.Namespace) -> None:
    """ValueError for the first path argument whose scheme the command cannot serve."""
    for dest, schemes in PATH_ARGS.get(args.command, {}).items():
        value = getattr(args, dest, None)
        for uri in value if isinstance(value, list) else [value]:
            if uri is not None:
                check_scheme(f"minmo {args.command}", uri, schemes)


def _storage_options(args: argparse.Namespace) -> dict[str, Any]:
    """--storage-options as a mapping; bad JSON is the user's error, said without a traceback."""
    if not args.storage_options:
        return {}
    try:
        options = json.loads(args.storage_options)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--storage-options is not valid JSON: {exc}") from None
    if not isinstance(options, dict):
        raise ValueError(
            '--storage-options must be a JSON object, e.g. \'{"region": "eu-west-1"}\''
        )
    return options


def _record_source_roots(args: argparse.Namespace) -> None:
    """`--source-root OLD=NEW`: record the sources' move in the build once, so that every later
    step, on any node, reads moved audio from NEW (pipelines/audio_source.py SourceRoots)."""
    if getattr(args, "source_root", None):
        from pipelines.audio_source import SourceRoots
        from pipelines.build import BuildDir

        roots = SourceRoots.parse(args.source_root)
        roots.record(BuildDir(args.build, **_storage_options(args)))


def _add_source_root(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source-root",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="the sources once under OLD are now under NEW (a re-mounted corpus, or one copied "
        "to an object store); recorded in the build, so later steps read audio from NEW. Ids "
        "and shards do not change. Repeatable",
    )


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from minmo.demo import build_demo_corpus

    summary = build_demo_corpus(
        args.out, seed=args.seed, progress=not args.quiet, storage_options=_storage_options(args)
    )
    if args.quiet:
        print(summary.describe())
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from pipelines.build import BuildDir, StepLedger
    from pipelines.ingest.commit_index import CommitIndexError, reindex
    from pipelines.ingest.config import IngestConfig
    from pipelines.ingest.run import STEP, TABLES, run_ingest

    options = _storage_options(args)
    if args.reindex:
        build = BuildDir(args.build, **options)
        counts = reindex(build, StepLedger(build, STEP, TABLES))
        print(
            f"ingest: commit index rebuilt from {counts['source_parts']} committed parts: "
            f"{counts['rows']} rows in {counts['buckets']} buckets"
        )
        if not args.src:
            return 0
    if not args.src:
        raise ValueError("give the sources to ingest (SRC ...), or --reindex alone")
    config = IngestConfig(
        format=args.format,
        corpus=args.corpus,
        task=args.task,
        max_segment_s=args.max_segment_s,
        max_duration_s=args.max_duration_s,
        files_per_unit=args.files_per_unit,
        units_per_wave=args.units_per_wave,
        vad_actors=args.vad_actors,
        storage_options=options,
    )
    try:
        summary = run_ingest(args.src, args.build, config, progress=not args.quiet)
    except CommitIndexError as exc:  # a damaged or missing index: the message says the fix
        print(f"minmo ingest: error: {exc}", file=sys.stderr)
        return 2
    print(summary.render())
    return 0


def _cmd_diarize(args: argparse.Namespace) -> int:
    from pipelines.diarize import DiarizeConfig, run_diarize

    config = DiarizeConfig(
        backend=args.backend,
        diarization_model=args.diarization_model,
        num_speakers=None if args.num_speakers == 0 else args.num_speakers,
        min_speakers=args.min_speakers,
        max_speakers=args.max_speakers,
        tasks=args.task,
        device=args.device,
        actors=args.actors,
        recordings_per_unit=args.recordings_per_unit,
        storage_options=_storage_options(args),
    )
    print(run_diarize(args.build, config, progress=not args.quiet).render())
    return 0


def _cmd_label_turns(args: argparse.Namespace) -> int:
    from pipelines.label_turns import LabelTurnsConfig, run_label_turns

    config = LabelTurnsConfig(
        pause_s=args.pause_s,
        backchannel_max_s=args.backchannel_max_s,
        backchannel_window_s=args.backchannel_window_s,
        hop_s=args.hop_s,
        seed=args.seed,
        storage_options=_storage_options(args),
    )
    print(run_label_turns(args.build, config, progress=not args.quiet).render())
    return 0


def _cmd_synthesize(args: argparse.Namespace) -> int:
    from pipelines.synthesize import SynthesizeConfig, run_synthesize

    config = SynthesizeConfig(
        dialogues=args.dialogues,
        layout=args.layout,
        backend=args.backend,
        backend_options=json.loads(args.backend_options) if args.backend_options else {},
        responses=args.responses,
        duplex=not args.no_duplex,
        seed=args.seed,
        actors=args.actors,
        storage_options=_storage_options(args),
    )
    print(run_synthesize(args.build, config, progress=not args.quiet).render())
    return 0


def _cmd_shards(args: argparse.Namespace) -> int:
    from pipelines.shards.step import ShardsConfig, run_shards

    config = ShardsConfig(
        stages=["all"] if args.stage == "all" else [f"stage{args.stage}"],
        text_tokenizer=args.text_tokenizer,
        speech_tokenizer=args.speech_tokenizer,
        max_samples=args.max_samples,
        max_bytes=args.max_mb * 1_000_000,
        seed=args.seed,
        bucket_edges_s=args.bucket_edges_s or [],
        mixture=json.loads(args.mixture) if args.mixture else {},
        batch_size=args.batch_size,
        storage_options=json.loads(args.storage_options) if args.storage_options else {},
    )
    print(run_shards(args.build, config, progress=not args.quiet, rebuild=args.rebuild).render())
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from pipelines.verify import verify_shards

    results = verify_shards(args.dir, _storage_options(args))
    if not results:
        print(
            f"minmo verify: no stage directory with _index/index.json under {args.dir}",
            file=sys.stderr,
        )
        return 2
    bad = 0
    for stage, problems in results.items():
        if problems:
            bad += 1
            print(f"{stage}: FAILED, {len(problems)} problem(s); first: {problems[0]}")
            for p in problems[1:20]:
                print(f"  {p}")
        else:
            print(f"{stage}: ok")
    return 1 if bad else 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from pipelines.stats.compute import StatsConfig
    from pipelines.stats.run import run_stats

    config = StatsConfig(
        out=args.out,
        memory_limit=args.memory_limit,
        threads=args.threads,
        workers=args.workers,
        max_shard_rows=args.max_shard_rows,
        title=args.title,
        storage_options=json.loads(args.storage_options) if args.storage_options else {},
    )
    print(run_stats(args.inputs, config, progress=not args.quiet).render())
    return 0


def _cmd_model_info(args: argparse.Namespace) -> int:
    from minmo.model.info import render

    print(render(args.size))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    # None: keep the job spec's own value.
    overrides = {
        "steps": args.steps,
        "out": args.out,
        "staging": args.staging,
        "storage_options": _storage_options(args),
    }
    overrides["storage_options"] = overrides["storage_options"] or None
    if args.ray:
        from minmo.train.entry import run_train_ray

        run_train_ray(args.job, args.build, args.workers, args.gpu, **overrides)
        return 0
    from minmo.train.entry import run_train

    print(run_train(args.job, args.build, progress=not args.quiet, **overrides).render())
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from minmo.plan import PlanConfig, PlanError, render, run_plan

    config = PlanConfig(
        mix=args.mix,
        rates=args.rates,
        hours=args.hours,
        nodes=args.nodes,
        cores_per_node=args.cores_per_node,
        gpus_per_node=args.gpus_per_node,
        storage_options=_storage_options(args) or None,
    )
    try:
        print(render(run_plan(config)))
    except PlanError as exc:
        print(f"minmo plan: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from minmo.jobs import run_job

    run_job(args.job, args.build, progress=not args.quiet, storage_options=_storage_options(args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pipelines.ingest.config import IngestConfig

    defaults = IngestConfig.__dataclass_fields__
    parser = argparse.ArgumentParser(prog="minmo", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-data", help="synthesise the demo corpus with espeak-ng")
    demo.add_argument("out", help="output directory (local path or s3://)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--storage-options", default=None, help="JSON for the output filesystem")
    demo.set_defaults(func=_cmd_demo_data)

    ingest = sub.add_parser("ingest", help="raw audio -> recordings/segments/quarantine tables")
    ingest.add_argument(
        "src",
        nargs="*",
        help="directory, glob, manifest (jsonl/csv/parquet), Kaldi or Lhotse dir; local or s3://",
    )
    ingest.add_argument(
        "--reindex",
        action="store_true",
        help="rebuild the build's commit index (which sources and contents it holds) from its "
        "committed tables, e.g. after the run said the index is damaged or missing; with SRC, "
        "then ingest",
    )
    _add_source_root(ingest)
    ingest.add_argument("--build", required=True, help="build directory (local path or s3://)")
    ingest.add_argument(
        "--format",
        default="auto",
        choices=["auto", "dir", "jsonl", "csv", "parquet", "kaldi", "lhotse"],
    )
    ingest.add_argument("--corpus", default=None, help="corpus name (default: from the source)")
    ingest.add_argument("--task", default=None, help="task label for every recording, e.g. asr")
    ingest.add_argument("--max-segment-s", type=float, default=defaults["max_segment_s"].default)
    ingest.add_argument("--max-duration-s", type=float, default=defaults["max_duration_s"].default)
    ingest.add_argument(
        "--files-per-unit",
        type=int,
        default=defaults["files_per_unit"].default,
        help="resume granularity: files committed together",
    )
    ingest.add_argument(
        "--units-per-wave",
        type=int,
        default=defaults["units_per_wave"].default,
        help="units in flight at once (the driver holds their listing; one worker pool per run)",
    )
    ingest.add_argument(
        "--vad-actors",
        type=int,
        default=None,
        help="ingest workers, each decode+VAD in one process (default: one per cluster CPU)",
    )
    ingest.add_argument(
        "--storage-options",
        default=None,
        help="JSON for the source and build filesystems, e.g. "
        '\'{"endpoint_override": "http://127.0.0.1:9000"}\'',
    )
    ingest.set_defaults(func=_cmd_ingest)

    _add_synthesize(sub)
    _add_diarize(sub)
    _add_label_turns(sub)
    _add_shards(sub)

    verify = sub.add_parser("verify", help="check shards against index.json (exit 1 when bad)")
    verify.add_argument(
        "dir", help="DIR/shards (all stages) or one stage directory; local path or s3://"
    )
    verify.add_argument("--storage-options", default=None, help="JSON for an s3:// directory")
    verify.set_defaults(func=_cmd_verify)

    st = sub.add_parser(
        "stats",
        help="statistics + HTML report of a build (or of two, compared: minmo stats A B)",
    )
    st.add_argument(
        "inputs",
        nargs="+",
        metavar="DIR",
        help="a build directory, tables or shard directories (or an earlier stats.json); "
        "two of them to compare A against B",
    )
    st.add_argument("--out", default=None, help="report directory (default DIR/stats)")
    st.add_argument("--memory-limit", default="1GB", help="DuckDB memory cap (spills beyond)")
    st.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all)")
    st.add_argument(
        "--workers",
        type=int,
        default=None,
        help="shard-metadata Ray tasks in flight (default: two per Ray CPU)",
    )
    st.add_argument(
        "--max-shard-rows",
        type=int,
        default=1000,
        help="past this many shards in a stage, keep distributions and the worst shards",
    )
    st.add_argument("--title", default=None, help="the report's title")
    st.add_argument("--storage-options", default=None, help="JSON for s3:// inputs and output")
    st.set_defaults(func=_cmd_stats)

    tr = sub.add_parser("train", help="train one MinMo stage from its shards (torchrun-ready)")
    tr.add_argument("job", help="training spec, e.g. jobs/train/1a.yaml")
    tr.add_argument(
        "--build", required=True, help="build directory holding shards/ (local path or s3://)"
    )
    tr.add_argument(
        "--out",
        default=None,
        help="checkpoint directory, local or s3:// (default: the spec's out, else "
        "BUILD/checkpoints/<stage>)",
    )
    tr.add_argument(
        "--staging",
        default=None,
        help="local folder where an s3:// out is written before each upload (default: the "
        "temp dir; several nodes: a path they share)",
    )
    tr.add_argument(
        "--storage-options",
        default=None,
        help="JSON for the build's filesystem (s3://: shards, checkpoints, init_from)",
    )
    tr.add_argument("--steps", type=int, default=None, help="override the spec's steps")
    tr.add_argument("--ray", action="store_true", help="run on Ray Train's TorchTrainer")
    tr.add_argument("--workers", type=int, default=2, help="Ray Train workers (with --ray)")
    tr.add_argument("--gpu", action="store_true", help="one GPU per Ray Train worker")
    tr.set_defaults(func=_cmd_train)

    info = sub.add_parser("model-info", help="MinMo's parameters per module vs the paper")
    info.add_argument("--size", choices=["tiny", "full"], default="full")
    info.set_defaults(func=_cmd_model_info)

    _add_plan(sub)

    run = sub.add_parser("run", help="run a job spec's steps in order")
    run.add_argument("job", help="YAML job spec, e.g. jobs/demo.yaml (local path or s3://)")
    run.add_argument("--build", required=True, help="build directory (local path or s3://)")
    _add_source_root(run)
    run.add_argument(
        "--storage-options",
        default=None,
        help="JSON for the build's filesystem, given to every step (over the spec's own "
        "top-level storage_options)",
    )
    run.set_defaults(func=_cmd_run)
    return parser


def _add_plan(sub: Any) -> None:
    from minmo.plan import PlanConfig

    d = PlanConfig()
    p = sub.add_parser(
        "plan",
        help="capacity plan: core-hours, GPU-hours, bytes and wall time per step on a cluster",
    )
    p.add_argument("--hours", type=float, default=None, help="audio-hours (default: the mix's)")
    p.add_argument("--mix", default=d.mix, help="task mixture YAML (jobs/plan/*.yaml)")
    p.add_argument("--rates", default=d.rates, help="measured rates (bench/scale.py writes them)")
    p.add_argument("--nodes", type=int, default=d.nodes)
    p.add_argument("--cores-per-node", type=int, default=d.cores_per_node)
    p.add_argument("--gpus-per-node", type=int, default=d.gpus_per_node)
    p.add_argument("--storage-options", default=None, help="JSON for s3:// mix or rates")
    p.set_defaults(func=_cmd_plan)


def _add_synthesize(sub: Any) -> None:
    p = sub.add_parser(
        "synthesize", help="text dialogues -> spoken dialogues (stage 3) and duplex calls"
    )
    p.add_argument("--build", required=True, help="build directory (local path or s3://)")
    p.add_argument("--dialogues", action="append", required=True, help="chat JSONL (repeatable)")
    _add_source_root(p)
    p.add_argument("--layout", default="auto", choices=["auto", "chatml", "sharegpt", "alpaca"])
    p.add_argument("--backend", default="espeak", choices=["espeak", "piper", "http"])
    p.add_argument(
        "--backend-options",
        default=None,
        help='JSON, e.g. \'{"base_url": "http://gpu:50000", "api": "cosyvoice"}\'',
    )
    p.add_argument("--responses", default=None, help="JSONL of query_text/response (recipe 2)")
    p.add_argument("--no-duplex", action="store_true", help="skip simulated duplex calls")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--actors", type=int, default=None)
    p.add_argument("--storage-options", default=None, help="JSON for the build filesystem")
    p.set_defaults(func=_cmd_synthesize)


def _add_diarize(sub: Any) -> None:
    from pipelines.diarize import BACKENDS

    p = sub.add_parser("diarize", help="conversation recordings -> speaker turns table")
    p.add_argument("--build", required=True, help="build directory (local path or s3://)")
    _add_source_root(p)
    p.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="auto: channels for multi-channel audio, else pyannote if a model is given, "
        "else offline",
    )
    p.add_argument(
        "--diarization-model",
        default=None,
        help="pyannote pipeline: local dir with config.yaml, or a repo id in your HF cache",
    )
    p.add_argument(
        "--num-speakers", type=int, default=2, help="speakers per conversation (0: estimate)"
    )
    p.add_argument("--min-speakers", type=int, default=None)
    p.add_argument("--max-speakers", type=int, default=None)
    p.add_argument(
        "--task",
        action="append",
        default=None,
        help="diarize recordings with this task (repeatable; default: conversation)",
    )
    p.add_argument("--device", default=None, help="torch device for model backends")
    p.add_argument("--actors", type=int, default=None, help="actor pool size")
    p.add_argument("--recordings-per-unit", type=int, default=16, help="resume granularity")
    p.add_argument("--storage-options", default=None, help="JSON for the build filesystem")
    p.set_defaults(func=_cmd_diarize)


def _add_label_turns(sub: Any) -> None:
    from pipelines.label_turns import LabelTurnsConfig

    d = LabelTurnsConfig()
    p = sub.add_parser(
        "label-turns", help="speaker turns -> duplex events and frame labels (2 per conversation)"
    )
    p.add_argument("--build", required=True, help="build directory (local path or s3://)")
    p.add_argument("--pause-s", type=float, default=d.pause_s, help="pauses shorter join a turn")
    p.add_argument(
        "--backchannel-max-s", type=float, default=d.backchannel_max_s, help="longest back-channel"
    )
    p.add_argument(
        "--backchannel-window-s",
        type=float,
        default=d.backchannel_window_s,
        help="the other speaker talks this close before and after a back-channel",
    )
    p.add_argument("--hop-s", type=float, default=d.hop_s, help="frame hop (LLM input rate)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the user turn-taking gaps")
    p.add_argument("--storage-options", default=None, help="JSON for the build filesystem")
    p.set_defaults(func=_cmd_label_turns)


def _add_shards(sub: Any) -> None:
    from pipelines.shards.step import ShardsConfig

    d = ShardsConfig()
    p = sub.add_parser("shards", help="tables -> per-stage WebDataset shards + index.json")
    p.add_argument("--build", required=True, help="build directory (local path)")
    _add_source_root(p)
    p.add_argument("--stage", default="all", choices=["1", "2", "3", "4", "all"])
    p.add_argument("--text-tokenizer", default=None, help="HF tokenizer dir (Qwen2.5-7B-Instruct)")
    p.add_argument(
        "--speech-tokenizer",
        default=None,
        help="S3TokenizerV2 state_dict .pt; without it the codes come from RANDOM weights",
    )
    p.add_argument("--max-samples", type=int, default=d.max_samples, help="samples per shard")
    p.add_argument("--max-mb", type=int, default=d.max_bytes // 1_000_000, help="MB per shard")
    p.add_argument("--seed", type=int, default=d.seed, help="shuffle / prompt / mixture seed")
    p.add_argument("--bucket-edges-s", type=float, nargs="*", help="duration bucket edges")
    p.add_argument("--mixture", default=None, help='JSON, e.g. \'{"stage1": {"asr": 0.5}}\'')
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="tokenizer batch")
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="delete the stage's shards and write them anew (said on stderr first); without it "
        "a run appends a generation for new data and rebuilds only when the config changed",
    )
    p.add_argument("--storage-options", default=None, help="JSON for the build filesystem")
    p.set_defaults(func=_cmd_shards)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_paths(args)
        _record_source_roots(args)
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        # Configuration and input errors are the user's to fix: say what, not a traceback.
        from minmo.jobs import JobSpecError

        if isinstance(exc, JobSpecError) or type(exc) in (ValueError, FileNotFoundError):
            print(f"minmo {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
