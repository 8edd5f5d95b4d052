"""Sample builders: build tables -> per-stage training sample specs (no audio, no tokens yet).

A spec says what one training example is: its task, ChatML messages, where its input audio and its
target speech live (URI + channel + time span), its frame labels, and its provenance. The shard
step (`pipelines/shards/step.py`) turns specs into shard members. Stages follow DESIGN.md §1:
stage1 speech -> text, stage2 text -> speech tokens, stage3 speech -> text + speech, stage4 duplex.
"""
