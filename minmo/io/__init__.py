"""The one I/O layer: filesystems (local and object store), atomic writes, Parquet parts, shard
tars. Steps, the trainer, verify and stats read and write through it and nowhere else."""
