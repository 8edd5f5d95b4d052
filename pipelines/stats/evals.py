"""Eval results in the stats: the eval.json files of a build (or given) -> stats.json's `eval`.

Owns: where a build's eval.json files are looked for (`<build>/eval/**/eval.json`, the layout a
job's `eval` step writes: minmo/eval/run.py `build_runs`), and the headline figures picked out
of each (`headline`): one flat name -> number mapping per task, the same names for every
checkpoint, so that the report can put checkpoints side by side, draw a metric against the
training step, and compare.json can take deltas.
Must not: import torch or minmo.eval (stats runs without them), or score anything itself.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow.fs as pafs

from minmo.io.fs import open_filesystem, to_uri, uri_scheme
from schemas.eval import validate_eval

EVAL_DIR = "eval"
EVAL_NAME = "eval.json"
MAX_DEPTH = 3  # <build>/eval/<stage>/eval.json, or one folder further down (a run, a split)

# (eval.json key, headline name): plain numbers of a task's entry, in report order.
_SCALARS = (
    ("accuracy", "accuracy"),
    ("bleu", "bleu"),
    ("chrf", "chrf"),
    ("loss_per_token", "loss_per_token"),
    ("top1_accuracy", "top1_accuracy"),
    ("perplexity", "perplexity"),
    ("frame_accuracy", "frame_accuracy"),
)
# Whether a larger value is better, by headline name (prefix): the report says which way is up.
LOWER_IS_BETTER = ("wer", "cer", "loss_per_token", "perplexity")


def headline(task: dict[str, Any]) -> dict[str, float]:
    """A task's figures of eval.json as flat names: `wer`, `cer`, `hotword_recall`,
    `accuracy`, `bleu`, `chrf`, `loss_per_token`, `top1_accuracy`, `perplexity`,
    `frame_accuracy`, `f1.<event>@<K>` and `backchannel_accuracy@<K>` (duplex), whichever the
    task has."""
    out: dict[str, float] = {}
    for name in ("wer", "cer"):
        if name in task:
            out[name] = float(task[name]["rate"])
    if "hotword_recall" in task:
        out["hotword_recall"] = float(task["hotword_recall"]["recall"])
    for key, name in _SCALARS:
        if key in task:
            out[name] = float(task[key])
    for event, per_k in sorted((task.get("f1") or {}).items()):
        for k, score in sorted(per_k.items(), key=lambda item: int(item[0])):
            out[f"f1.{event}@{k}"] = float(score["f1"])
    kept = task.get("backchannel_accuracy") or {}
    for k, share in sorted(kept.items(), key=lambda item: int(item[0])):
        out[f"backchannel_accuracy@{k}"] = float(share)
    return out


def summarise(doc: dict[str, Any], source: str) -> dict[str, Any]:
    """One stats.json `eval` entry from an eval.json (validated) read at `source`. Wall time
    and device are left out: a rerun of the stats must give the same bytes."""
    validate_eval(doc)
    return {
        "source": source,
        "checkpoint": doc["checkpoint"],
        "stage": doc["stage"],
        "step": doc.get("step"),
        "shards": doc["shards"],
        "samples": doc["samples"],
        "tasks": {
            task: {"samples": entry["samples"], "metrics": headline(entry)}
            for task, entry in sorted(doc["tasks"].items())
        },
    }


def find_eval_files(fs: pafs.FileSystem, root: str) -> list[str]:
    """Every `eval.json` under `<root>/eval/` (sorted paths on `fs`), none when absent."""
    top = f"{root.rstrip('/')}/{EVAL_DIR}"
    if fs.get_file_info(top).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(top, recursive=True))
    depth = top.count("/") + MAX_DEPTH
    return sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.File and i.base_name == EVAL_NAME and i.path.count("/") <= depth
    )


def _read(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode("utf-8"))


def eval_section(
    fs: pafs.FileSystem,
    root: str,
    extra: list[str],
    storage_options: dict[str, Any],
    errors: list[dict[str, str]],
) -> list[dict[str, Any]]:
    """The `eval` entries: the build's own eval.json files, then the `extra` ones given (paths
    or URIs), ordered by shard directory, stage, step and source so that reruns give the same
    bytes. A file that cannot be read or does not keep its schema goes to `errors`."""
    found = [(fs, path, to_uri(fs, path)) for path in find_eval_files(fs, root)]
    for uri in extra:
        other, path = open_filesystem(uri, **storage_options)
        if to_uri(other, path) not in {known for _, _, known in found}:
            found.append((other, path, uri))
    entries = []
    for where, path, uri in found:
        try:
            entries.append(summarise(_read(where, path), uri))
        except (OSError, ValueError) as exc:  # schema errors are ValueErrors too
            error = f"{type(exc).__name__}: {exc}"
            errors.append({"section": "eval", "source": uri, "error": error})
    entries.sort(key=lambda e: (e["shards"], e["stage"], e["step"] or -1, e["source"]))
    return entries


def shards_key(entry: dict[str, Any], root: str) -> str:
    """The entry's shard directory relative to the stats input (`shards/stage1/test`), so that
    two builds' evaluations of the same split line up; the full path when it lies elsewhere."""
    shards, top = entry["shards"].rstrip("/"), root.rstrip("/")
    if shards.startswith(f"{top}/"):
        return shards[len(top) + 1 :]
    if uri_scheme(top) is None:  # a relative root: the job wrote absolute paths
        absolute = os.path.abspath(top)
        if shards.startswith(f"{absolute}/"):
            return shards[len(absolute) + 1 :]
    return shards
