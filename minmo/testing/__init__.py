"""Test doubles and tiny random-init checkpoints of the real architectures.

Tests and the demo build them here, save them in the real on-disk layout, and load them through
the library's real loading code. The library itself never imports this package.
"""
