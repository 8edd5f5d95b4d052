"""The trainer's outputs on an object store: a local staging directory mirrored to the build.

torch.distributed.checkpoint, TensorBoard and `export` write local files (no fsspec S3 driver
is installed), so on an object-store `out` (`s3://bucket/build/checkpoints/1a`) the trainer
writes into a local staging directory and rank 0 uploads each completed piece through
pyarrow.fs. The store is the truth: a run starts by replacing its staging directory with the
store's newest complete checkpoint, so a crash between a local save and its upload only costs
the steps since the last upload.

Commit protocol (a half-uploaded piece is never taken as complete):
- checkpoint: the files of `step-N/` go up first, then the `latest` pointer naming it. The
  pointer is the commit: resume downloads only the directory it names; a partial `step-M/` left
  by a crash is deleted (never read) by the next save's prune.
- export: the old `final/` is deleted, the module files and `lora/` go up, `export.json` last.
  `load_export` (every later stage's `init_from`) refuses a directory without `export.json`.
- `metrics.jsonl` and `tensorboard/` go up with every checkpoint and at the end; each object is
  put whole, and an event file the run merged away is deleted from the store. They come down
  when a run starts, so a resumed run cuts them back and appends (minmo/train/metrics.py).

Staging is `<root>/minmo-train-<hash of the URI>/` (root: the job's `staging`, else the system
temp dir), one path every rank computes alike; ranks on several nodes need a `staging` root on a
filesystem they share, as a local `out` does. The trainer owns that folder: it is emptied when a
run starts and removed when the run ends.

Must not: know the DCP file layout beyond the names above, or upload from any rank but 0.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from minmo.io.fs import open_filesystem, uri_scheme
from minmo.io.trees import download_tree, local_fs, upload_tree

LATEST = "latest"  # the pointer file Checkpointer writes (checkpoint.LATEST)
EXPORT_MARKER = "export.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
_STEP = re.compile(r"^step-\d+$")


def is_remote(uri: str | None) -> bool:
    """Whether `uri` names an object store (anything but a local path or file://)."""
    return uri is not None and uri_scheme(uri) not in (None, "file")


def staging_dir(uri: str, root: str | None = None) -> Path:
    """The local folder that stands in for `uri`: the same on every rank of a node."""
    key = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    return Path(root or tempfile.gettempdir()) / f"minmo-train-{key}"


def _exists(fs: pafs.FileSystem, path: str) -> pafs.FileType:
    return fs.get_file_info(path).type


def _upload_file(local: Path, fs: pafs.FileSystem, path: str) -> None:
    pafs.copy_files(str(local), path, source_filesystem=local_fs(), destination_filesystem=fs)


def _delete_dir(fs: pafs.FileSystem, path: str) -> None:
    if _exists(fs, path) == pafs.FileType.Directory:
        fs.delete_dir(path)


class StoreMirror:
    """An object-store `out` and the local staging directory the trainer writes instead.

    Rank 0 calls every method; the other ranks only read the staging directory (after a
    barrier) and write their own DCP files into it."""

    def __init__(
        self, uri: str, storage_options: dict[str, Any] | None = None, root: str | None = None
    ) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.path = open_filesystem(self.uri, **(storage_options or {}))
        self.local = staging_dir(self.uri, root)

    def pull(self) -> str | None:
        """Empty the staging directory, then fill it with the store's newest complete checkpoint
        (and its `latest` pointer) and `metrics.jsonl`, so that a resume and the metrics log
        continue as on a local `out`. Returns the checkpoint's name, None when there is none."""
        shutil.rmtree(self.local, ignore_errors=True)
        self.local.mkdir(parents=True)
        if _exists(self.fs, f"{self.path}/{METRICS}") == pafs.FileType.File:
            download_tree(self.fs, f"{self.path}/{METRICS}", self.local / METRICS)
        if _exists(self.fs, f"{self.path}/{TENSORBOARD}") == pafs.FileType.Directory:
            # the run appends to its event file (minmo/train/metrics.py EventLog)
            download_tree(self.fs, f"{self.path}/{TENSORBOARD}", self.local / TENSORBOARD)
        if _exists(self.fs, f"{self.path}/{LATEST}") != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(f"{self.path}/{LATEST}") as f:
            name = f.read().decode().strip()
        if (
            not _STEP.match(name)
            or _exists(self.fs, f"{self.path}/{name}") == pafs.FileType.NotFound
        ):
            return None  # as Checkpointer.latest: a pointer to nothing is no checkpoint
        download_tree(self.fs, f"{self.path}/{name}", self.local / name)
        (self.local / LATEST).write_text(name + "\n")
        return name

    def push_checkpoint(self, step_dir: Path, keep_last: int) -> None:
        """Upload a completed `step-N/`, commit it by the `latest` pointer, then prune the store
        as Checkpointer prunes the staging directory; the logs go up with it."""
        name = step_dir.name
        _delete_dir(self.fs, f"{self.path}/{name}")  # a partial upload from a crashed run
        upload_tree(step_dir, self.fs, f"{self.path}/{name}")
        with self.fs.open_output_stream(f"{self.path}/{LATEST}") as f:
            f.write((name + "\n").encode())
        self._prune(name, keep_last)
        self.push_logs()

    def _prune(self, committed: str, keep_last: int) -> None:
        """Keep the last `keep_last` checkpoints up to the committed one; any later `step-*` is
        a partial upload that was never committed."""
        entries = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False))
        names = sorted(
            e.base_name
            for e in entries
            if e.type == pafs.FileType.Directory and _STEP.match(e.base_name)
        )
        keep = set([n for n in names if n <= committed][-keep_last:])
        for name in names:
            if name not in keep:
                self.fs.delete_dir(f"{self.path}/{name}")

    def push_logs(self) -> None:
        if (self.local / METRICS).is_file():
            _upload_file(self.local / METRICS, self.fs, f"{self.path}/{METRICS}")
        if (self.local / TENSORBOARD).is_dir():
            remote = f"{self.path}/{TENSORBOARD}"
            upload_tree(self.local / TENSORBOARD, self.fs, remote)
            # EventLog merged the event files into one: the store keeps that one alone
            local = {p.name for p in (self.local / TENSORBOARD).iterdir()}
            for info in self.fs.get_file_info(pafs.FileSelector(remote, allow_not_found=True)):
                if info.type == pafs.FileType.File and info.base_name not in local:
                    self.fs.delete_file(info.path)

    def push_export(self, final: Path) -> str:
        """Upload `final/` with `export.json` last; its URI."""
        remote = f"{self.path}/{final.name}"
        _delete_dir(self.fs, remote)
        upload_tree(final, self.fs, remote, last=EXPORT_MARKER)
        self.push_logs()
        return f"{self.uri}/{final.name}"

    def remove_staging(self) -> None:
        shutil.rmtree(self.local, ignore_errors=True)


def fetch_export(uri: str, local: Path, storage_options: dict[str, Any] | None = None) -> Path:
    """An export (`.../final`) on a store copied to `local`; FileNotFoundError, as
    `load_export` says it, when it has no `export.json` (absent or half-uploaded)."""
    fs, path = open_filesystem(uri, **(storage_options or {}))
    path = path.rstrip("/")
    if _exists(fs, f"{path}/{EXPORT_MARKER}") != pafs.FileType.File:
        raise FileNotFoundError(
            f"{uri.rstrip('/')}/{EXPORT_MARKER} missing: init_from must be an exported 'final' "
            "dir (the previous stage has not finished, or its upload was cut)"
        )
    shutil.rmtree(local, ignore_errors=True)
    download_tree(fs, path, local)
    return local
