"""Decoding settings of the report generator, as released (no torch import: configs use them too).

Usage: ``DecodingOptions(num_beams=1)`` for greedy search.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DecodingOptions:
    num_beams: int = 4
    repetition_penalty: float = 1.2
    no_repeat_ngram_size: int = 3
    max_new_tokens: int = 256
