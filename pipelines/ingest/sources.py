"""Source layouts → a stream of `SourceItem`s (audio to ingest) and quarantine rows.

Owns: recognising a source's layout (`detect_format`) and the one entry point ingest calls
(`list_sources`); each layout's reader lives in `pipelines/ingest/layouts/`.

Must not: open audio, or hold a source's listing in memory: every reader is a generator that
streams its manifest (JSONL by line, CSV by row, Parquet by batch, directories one at a time).

    from pipelines.ingest.sources import list_sources
    for entry in list_sources("s3://corpus/train/", corpus="mycorpus", task="asr"):
        ...  # a SourceItem, or a dict: a quarantine row (step "ingest") with its reason code

Layouts (`fmt`): `dir` (a directory tree, a glob or one audio file, with sidecar or Kaldi-style
transcripts; see layouts/directory.py), `jsonl` / `csv` / `parquet` (one row per audio file;
layouts/manifest.py), `kaldi` (a data dir with wav.scp; layouts/kaldi.py), `lhotse` (recordings
+ supervisions or cuts manifests; layouts/lhotse.py), or `auto`:
- a file: `.jsonl`, `.jsonl.gz`, `.json`, `.json.gz` → `lhotse` when its first record is a Lhotse
  cut or recording, else `jsonl`; `.csv`, `.tsv` → `csv`; `.parquet`, `.pq` → `parquet`; an
  audio file → `dir` (that file alone);
- a directory: with `wav.scp` → `kaldi`; with a Lhotse cuts or recordings manifest among its
  own files → `lhotse`; otherwise → `dir`;
- a glob (`*`, `?`, `[`) → `dir`.

Every item and refusal carries a `source_key` (`corpus:path relative to the source's root`,
see `source_root`): the relocatable identity that recording ids and resume key on.

Every audio location is checked to exist (batched; `check_exists=False` skips it, e.g. when the
listing is known good and the store is slow): a missing file is a `missing_file` row, never an
exception. What raises is only what no row can describe: an unknown `fmt`, a source that does
not exist or whose layout cannot be told.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.fs as pafs

from minmo.io.fs import Location
from pipelines.ingest.items import SourceItem
from pipelines.ingest.layouts import directory, kaldi, lhotse, manifest
from pipelines.ingest.layouts.common import Keyer, Pending, ReadContext, Row, settle
from pipelines.ingest.layouts.directory import AUDIO_EXTENSIONS, is_audio_name, is_glob, split_glob

__all__ = ["AUDIO_EXTENSIONS", "FORMATS", "detect_format", "list_sources"]

FORMATS = ("auto", "dir", "jsonl", "csv", "parquet", "kaldi", "lhotse")

JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
# Detection opens at most this many JSON files of a directory to look for Lhotse manifests.
DETECT_MAX_JSON_FILES = 64

Reader = Callable[..., Iterator[Pending | Row]]
READERS: dict[str, Reader] = {
    "dir": directory.read,
    "jsonl": manifest.read_jsonl,
    "csv": manifest.read_csv,
    "parquet": manifest.read_parquet,
    "kaldi": kaldi.read,
    "lhotse": lhotse.read,
}


def detect_format(src: str, **fs_options: Any) -> str:
    """The concrete layout of `src` (see the module docstring for the rules)."""
    if is_glob(src):
        return "dir"
    loc = Location.from_uri(src, **fs_options)
    info = loc.info()
    if info.is_file:
        return _file_format(loc, src)
    if info.type == pafs.FileType.Directory:
        return _directory_format(loc)
    raise ValueError(f"source {src!r} does not exist (looked for a file or directory at {loc.uri})")


def _file_format(loc: Location, src: str) -> str:
    name = loc.name.lower()
    if name.endswith(JSON_SUFFIXES):
        kind = lhotse.manifest_kind(lhotse.first_record(loc))
        return "lhotse" if kind in ("cuts", "recordings") else "jsonl"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if is_audio_name(name):
        return "dir"
    raise ValueError(
        f"cannot tell the layout of {src!r}: a source file must be a manifest "
        f"({', '.join(JSON_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES)}) or an audio file "
        f"({', '.join(AUDIO_EXTENSIONS)}); pass fmt= to choose a layout"
    )


def _directory_format(loc: Location) -> str:
    if loc.child(kaldi.WAV_SCP).is_file():
        return "kaldi"
    found = lhotse.find_manifests(loc, limit=DETECT_MAX_JSON_FILES)
    if found["cuts"] or found["recordings"]:
        return "lhotse"
    return "dir"


def default_corpus(src: str, fmt: str, **fs_options: Any) -> str:
    """The source directory's name: the directory itself for `dir`/`kaldi`/`lhotse` dirs, the
    base directory of a glob, and the directory holding a manifest or single audio file."""
    if is_glob(src):
        base = Location.from_uri(split_glob(src)[0], **fs_options)
        return base.name or base.path
    loc = Location.from_uri(src, **fs_options)
    if fmt in ("jsonl", "csv", "parquet") or not loc.is_dir():
        loc = loc.parent
    return loc.name or posixpath.basename(loc.path.rstrip("/")) or loc.path


def source_root(src: str, fmt: str, **fs_options: Any) -> str:
    """The URI that a listing's keys are relative to (items.source_key): the directory for
    `dir`/`kaldi`/`lhotse` dirs, the base directory of a glob, and the directory holding a
    manifest or a single audio file. Moving the corpus moves its root with it."""
    if is_glob(src):
        return Location.from_uri(split_glob(src)[0], **fs_options).uri
    loc = Location.from_uri(src, **fs_options)
    if fmt in ("jsonl", "csv", "parquet") or not loc.is_dir():
        loc = loc.parent
    return loc.uri


def list_sources(
    src: str,
    fmt: str = "auto",
    *,
    corpus: str | None = None,
    task: str | None = None,
    check_exists: bool = True,
    original_uri: Callable[[str], str] | None = None,
    **fs_options: Any,
) -> Iterator[SourceItem | dict[str, Any]]:
    """Stream what `src` holds: a `SourceItem` per audio file, a quarantine row per refusal.

    `corpus` (default: the source directory's name, or a manifest row's `corpus` column) and
    `task` (default: a manifest row's `task`) given here override what the source says.
    `fs_options` go to the filesystem (e.g. `endpoint_override=` for S3). `original_uri` maps
    a URI outside the source's root back to where it was first ingested (the build's
    `SourceRoots.unresolve`), so that its key survives a move.

    Not a generator itself: a bad `fmt` or an unreadable `src` raises here, at the call, and
    only the listing is lazy."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    concrete = detect_format(src, **fs_options) if fmt == "auto" else fmt
    ctx = ReadContext(
        default_corpus=default_corpus(src, concrete, **fs_options), corpus=corpus, task=task
    )
    keyer = Keyer(
        root=source_root(src, concrete, **fs_options),
        corpus=ctx.corpus_for(),
        original=original_uri,
    )
    return settle(READERS[concrete](src, ctx, **fs_options), check_exists=check_exists, keyer=keyer)
