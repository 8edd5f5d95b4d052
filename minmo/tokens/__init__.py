"""Text and speech tokenizers for the shard step."""
