"""Decoding settings of the report generator, as released (no torch import: configs use them too).

``number_safe`` (not in the release, off by default) exempts digits from the 3-gram block and the
repetition penalty, which otherwise rewrite measurements (see ``number_safe_decoding``).
``require_measurement`` (not in the release, off by default) makes beam search keep only reports
that state a measurement in centimetres (constrained beam search forcing the "cm" token): a report
of a renal mass without its size is incomplete, and beam search, which keeps the most probable whole
text, otherwise often leaves it out even when nearly every training report states it (a particular
diameter is improbable digit by digit). Greedy decoding ignores it.

Usage: ``DecodingOptions(num_beams=1)`` for greedy search; ``DecodingOptions(number_safe=True)``;
``DecodingOptions(require_measurement=True)``.
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
    require_measurement: bool = False
