"""Inference: model bundles, one-case analysis (``Assessment``), batch runs.

Usage::

    from renalclip_lib.inference import analyze_case, load_bundle
    a = analyze_case({"A": "art.nii.gz"}, load_bundle("bundle"), center_lps=(60, -12, 1200))
"""
from .analyze import analyze_case
from .assessment import Assessment
from .bundle import Bundle, build_bundle, load_bundle

__all__ = ["Assessment", "Bundle", "analyze_case", "build_bundle", "load_bundle"]
