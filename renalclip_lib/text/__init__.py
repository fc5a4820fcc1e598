"""Report text for the text encoder: per-kidney formatting and shuffles as released, feature cache.

Usage::

    from renalclip_lib.text import kidney_report, report_variants, TextFeatureCache
"""
from .feature_cache import TextFeatureCache
from .reports import kidney_report, report_variants, sentence_shuffling

__all__ = ["TextFeatureCache", "kidney_report", "report_variants", "sentence_shuffling"]
