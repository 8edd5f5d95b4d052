"""The trainer: data loading, the training loop, checkpoints, metrics, distributed set-up."""
