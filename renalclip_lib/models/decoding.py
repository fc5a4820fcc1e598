"""Decoding settings of the report generator, as released (no torch import: configs use them too).

``number_safe`` (not in the release, off by default) exempts digits from the 3-gram block and the
repetition penalty, which otherwise rewrite measurements (see ``number_safe_decoding``).

Usage: ``DecodingOptions(num_beams=1)`` for greedy search; ``DecodingOptions(number_safe=True)``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DecodingOptions:
    num_beams: int = 4
    repetition_penalty: float = 1.2
    no_repeat_ngram_size: int = 3
    max_new_tokens: int = 256
    number_safe: bool = False
