"""Test helper: copy a local directory tree into a fresh bucket of the moto S3 server
(`moto_s3_options` in conftest.py) and hand back its s3:// URI."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs


def upload_tree(local: Path, options: dict[str, Any], prefix: str = "build") -> str:
    """`local`'s files under `s3://<new bucket>/<prefix>/`, the same relative paths; the URI.

    Each call gets its own bucket: moto's servers share one in-process store."""
    s3 = pafs.S3FileSystem(**options, allow_bucket_creation=True)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3.create_dir(bucket)
    pafs.copy_files(
        str(Path(local).resolve()),
        f"{bucket}/{prefix}",
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=s3,
    )
    return f"s3://{bucket}/{prefix}"


def s3_filesystem(options: dict[str, Any]) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(**options)
