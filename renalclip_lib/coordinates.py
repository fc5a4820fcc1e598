"""The one LPS <-> RAS conversion: renalclip_lib works in LPS (ITK/DICOM); Slicer shows RAS.

The two frames differ by the sign of x and y, so the same matrix converts both ways.

Usage: ``ras_to_lps([10, 20, 30])`` -> ``array([-10., -20., 30.])``
"""
from __future__ import annotations

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def ras_to_lps(point) -> np.ndarray:
    """A point (3,) or points (n, 3) in RAS -> LPS."""
    return np.asarray(point, float) @ RAS_TO_LPS.T


lps_to_ras = ras_to_lps
