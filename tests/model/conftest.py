"""Fixtures shared by the model tests."""

from __future__ import annotations

import pytest

from minmo.tokens.text import load_text_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_text_tokenizer(None)
