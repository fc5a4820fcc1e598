"""RenalCLIP: a kidney-cancer vision-language model for renal masses on CT (library, no Slicer).

Usage::

    from renalclip_lib.io import read_volume
    from renalclip_lib.preprocess import crop_roi, to_model_input
"""
__version__ = "0.1.0"
