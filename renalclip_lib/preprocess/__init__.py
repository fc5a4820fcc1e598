"""Geometry pipeline: one grid for all phases, the lesion centre, the ROI and the model tensor.

Usage::

    from renalclip_lib.preprocess import register_phases, lesion_center, crop_roi, to_model_input
"""
from .center import lesion_center
from .resample import overlap_fraction, reference_phase, register_phases, resample_to_reference
from .roi import crop_roi, to_model_input, window

__all__ = ["crop_roi", "lesion_center", "overlap_fraction", "reference_phase", "register_phases",
           "resample_to_reference", "to_model_input", "window"]
