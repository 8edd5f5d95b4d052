"""The shards step: tables -> WebDataset shards for the four training stages.

`plan` groups rows into shard tasks, `tokenize` turns audio and text into token arrays,
`writer` writes and indexes the tars, and `step` runs them on Ray Data (`minmo shards`).
"""
