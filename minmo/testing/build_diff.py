"""Comparing two builds of one job: what differs, check by check.

Owns: `compare_builds(reference, candidate)` and the meaning of "the same build", which the chaos
harness (minmo/testing/chaos.py) and its tests rely on. Each finding names its check:
- `tables`: every table (a top-level folder of the build holding Parquet parts) has the same rows,
  as a multiset (a row written twice is a difference), whatever the part files are called;
- `shards`: every file under `shards/` (tars, `.idx`, `index.json`) has the same sha256;
- `exports`: every file of every `checkpoints/<stage>/final/` is equal: tensors by value (the
  `.pt` and `.safetensors` files; torch.save writes a random serialization id of its own), JSON
  by value, anything else byte for byte;
- `stats`: `stats/stats.json` is equal, less `VOLATILE_STATS_KEYS`;
- `files`: the candidate holds no file and no folder that the reference lacks (a temp file, a dead
  run's staging folder, a second TensorBoard event file), and lacks none of its files.

Every string compared has the build's own path replaced by `{build}`: the two builds live in
different folders, and tables name their source files by URI (recordings.source_uri).

Must not: write to either build. Reads local builds only (a test harness, not a step).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from schemas.shards import is_temp_name

VOLATILE_STATS_KEYS = ("elapsed_s",)
"""Top-level keys of stats.json that differ between two computations of one build (wall time).
Paths in it (`inputs.root`, `config.out`) compare after the build path becomes `{build}`."""

TFEVENTS_PREFIX = "events.out.tfevents."
"""TensorBoard names each event file by time, host and pid: compared by count per folder."""

BUILD_PLACEHOLDER = "{build}"
MAX_FINDINGS = 8  # per check: the first few name the problem; the count says how big it is


@dataclass
class Comparison:
    """Findings per check (see the module docstring); no finding in any check: the same build."""

    findings: dict[str, list[str]] = field(default_factory=dict)

    def add(self, check: str, finding: str) -> None:
        self.findings.setdefault(check, []).append(finding)

    @property
    def ok(self) -> bool:
        return not any(self.findings.values())

    def failed_checks(self) -> list[str]:
        return [check for check, found in self.findings.items() if found]

    def describe(self) -> str:
        lines = []
        for check in self.failed_checks():
            found = self.findings[check]
            more = f" (+{len(found) - MAX_FINDINGS} more)" if len(found) > MAX_FINDINGS else ""
            lines.append(f"  {check}: {'; '.join(found[:MAX_FINDINGS])}{more}")
        return "\n".join(lines)


def compare_builds(reference: Path, candidate: Path) -> Comparison:
    """How `candidate` differs from `reference` (see the module docstring); neither is changed."""
    result = Comparison()
    _compare_tables(reference, candidate, result)
    _compare_shards(reference, candidate, result)
    _compare_exports(reference, candidate, result)
    _compare_stats(reference, candidate, result)
    _compare_files(reference, candidate, result)
    return result


def normalized(text: str, build: Path) -> str:
    """`text` with the build's own path replaced by `{build}`."""
    return text.replace(str(build), BUILD_PLACEHOLDER)


def table_names(build: Path) -> list[str]:
    """The build's tables: top-level folders (not `_`/`.` ones) holding Parquet parts."""
    if not build.is_dir():
        return []
    return sorted(
        d.name
        for d in build.iterdir()
        if d.is_dir() and d.name[0] not in "_." and any(_parquet_parts(d))
    )


def _parquet_parts(table_dir: Path) -> Iterator[Path]:
    return (p for p in table_dir.glob("*.parquet") if p.is_file() and not is_temp_name(p.name))


def table_rows(build: Path, table: str) -> Counter[str]:
    """Every row of a table as canonical JSON (keys sorted, build path as `{build}`), counted."""
    rows: Counter[str] = Counter()
    for part in sorted(_parquet_parts(build / table)):
        for row in pq.read_table(part).to_pylist():
            rows[normalized(json.dumps(row, sort_keys=True, default=repr), build)] += 1
    return rows


def _compare_tables(reference: Path, candidate: Path, result: Comparison) -> None:
    ref_tables, cand_tables = table_names(reference), table_names(candidate)
    for name in sorted(set(ref_tables) ^ set(cand_tables)):
        result.add(
            "tables", f"{name}: only in {'reference' if name in ref_tables else 'candidate'}"
        )
    for name in sorted(set(ref_tables) & set(cand_tables)):
        ref, cand = table_rows(reference, name), table_rows(candidate, name)
        if ref != cand:
            lost, extra = ref - cand, cand - ref
            example = next(iter(extra or lost))[:200]
            result.add(
                "tables",
                f"{name}: {sum(lost.values())} reference rows missing, {sum(extra.values())} "
                f"rows not in the reference (e.g. {example})",
            )


def _files(root: Path) -> dict[str, Path]:
    """Every file under `root` by its path relative to `root` (temp files included)."""
    if not root.is_dir():
        return {}
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _compare_shards(reference: Path, candidate: Path, result: Comparison) -> None:
    ref = {k: p for k, p in _files(reference / "shards").items() if not is_temp_name(k)}
    cand = {k: p for k, p in _files(candidate / "shards").items() if not is_temp_name(k)}
    for name in sorted(set(ref) ^ set(cand)):
        result.add("shards", f"{name}: only in {'reference' if name in ref else 'candidate'}")
    for name in sorted(set(ref) & set(cand)):
        if sha256_file(ref[name]) != sha256_file(cand[name]):
            result.add("shards", f"{name}: sha256 differs")


def _compare_exports(reference: Path, candidate: Path, result: Comparison) -> None:
    stages = sorted(
        {p.parent.name for p in reference.glob("checkpoints/*/final")}
        | {p.parent.name for p in candidate.glob("checkpoints/*/final")}
    )
    for stage in stages:
        ref = _files(reference / "checkpoints" / stage / "final")
        cand = _files(candidate / "checkpoints" / stage / "final")
        for name in sorted(set(ref) ^ set(cand)):
            where = "reference" if name in ref else "candidate"
            result.add("exports", f"{stage}/final/{name}: only in {where}")
        for name in sorted(set(ref) & set(cand)):
            problem = _file_difference(ref[name], cand[name], reference, candidate)
            if problem:
                result.add("exports", f"{stage}/final/{name}: {problem}")


def _file_difference(ref: Path, cand: Path, ref_build: Path, cand_build: Path) -> str | None:
    """How two files of an export differ by value, or None. torch.save embeds a serialization id
    of its own, so tensors compare by value, not by bytes; text (JSON, a LoRA's model card) may
    name the build's folder."""
    if ref.suffix in (".pt", ".safetensors"):
        return _tensor_difference(ref, cand)
    if sha256_file(ref) == sha256_file(cand):
        return None
    try:
        a, b = normalized(ref.read_text(), ref_build), normalized(cand.read_text(), cand_build)
    except UnicodeDecodeError:
        return "bytes differ"
    if ref.suffix == ".json":
        return None if json.loads(a) == json.loads(b) else "JSON differs"
    return None if a == b else "text differs"


def _tensor_difference(ref: Path, cand: Path) -> str | None:
    import torch  # heavy; only the export check needs it

    def load(path: Path) -> dict[str, Any]:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # ships with transformers / peft

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)

    a, b = load(ref), load(cand)
    if a.keys() != b.keys():
        return f"tensor names differ: {sorted(set(a) ^ set(b))[:5]}"
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    return f"{len(unequal)} tensors differ (e.g. {unequal[0]})" if unequal else None


def _compare_stats(reference: Path, candidate: Path, result: Comparison) -> None:
    ref_path, cand_path = reference / "stats" / "stats.json", candidate / "stats" / "stats.json"
    if not ref_path.is_file() and not cand_path.is_file():
        return
    if ref_path.is_file() != cand_path.is_file():
        where = "reference" if ref_path.is_file() else "candidate"
        result.add("stats", f"stats/stats.json only in {where}")
        return
    a = json.loads(normalized(ref_path.read_text(), reference))
    b = json.loads(normalized(cand_path.read_text(), candidate))
    for key in VOLATILE_STATS_KEYS:
        a.pop(key, None)
        b.pop(key, None)
    for where in json_differences(a, b):
        result.add("stats", f"stats.json {where}")


def json_differences(a: Any, b: Any, where: str = "$") -> Iterator[str]:
    """The JSON paths at which two parsed documents differ (the shallowest one of each)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                yield f"{where}.{key}: only in {'reference' if key in a else 'candidate'}"
            else:
                yield from json_differences(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from json_differences(x, y, f"{where}[{i}]")
    elif a != b:
        yield f"{where}: {json.dumps(a)[:80]} != {json.dumps(b)[:80]}"


def _tree(root: Path) -> tuple[Counter[str], set[str]]:
    """(files, folders) under `root`, relative; TensorBoard event files named by their folder."""
    files: Counter[str] = Counter()
    dirs: set[str] = set()
    for path in root.rglob("*"):
        rel = str(path.relative_to(root))
        if path.is_dir() and not path.is_symlink():
            dirs.add(rel)
        elif path.name.startswith(TFEVENTS_PREFIX):
            files[str(Path(rel).parent / f"{TFEVENTS_PREFIX}*")] += 1
        else:
            files[rel] += 1
    return files, dirs


def _compare_files(reference: Path, candidate: Path, result: Comparison) -> None:
    ref_files, ref_dirs = _tree(reference)
    cand_files, cand_dirs = _tree(candidate)
    for name, n in sorted((cand_files - ref_files).items()):
        result.add("files", f"left behind: {name}" + (f" (x{n})" if n > 1 else ""))
    for name in sorted(cand_dirs - ref_dirs):
        result.add("files", f"folder left behind: {name}/")
    for name in sorted(ref_files - cand_files):
        result.add("files", f"missing: {name}")
