"""Questionnaire answers from report text (rules, or an optional LLM endpoint) and factual consistency.

Usage::

    from renalclip_lib.extraction import extract_answers, consistency
    extract_answers("Findings: A 3.2 cm solid mass in the left upper pole ...")["q_size_left"]   # 1
    consistency(generated, reference)["side_agreement"]
"""
from .consistency import CONSISTENCY_METRICS, consistency, consistency_scores
from .llm_backend import ExtractionEndpointError, LLMEndpoint, extract_with_fallback, llm_extract
from .rules import SIDE_KEY, extract_answers

__all__ = ["CONSISTENCY_METRICS", "ExtractionEndpointError", "LLMEndpoint", "SIDE_KEY", "consistency",
           "consistency_scores", "extract_answers", "extract_with_fallback", "llm_extract"]
