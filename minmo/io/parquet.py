"""Parquet part files: the one writer every step's tables go through.

Callers write only into staging or under a temp name they rename, so this writer itself needs no
temp name: a part is visible to readers only once its step commits it.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from minmo.io.errors import naming_disk_full


def write_table(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """Write one Parquet file; callers write only into staging, so no temp name is needed."""
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with naming_disk_full(path), fs.open_output_stream(path) as out:
        pq.write_table(table, out, compression="zstd")
