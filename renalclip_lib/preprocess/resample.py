"""Put every phase of a study on one grid: linear resampling with the identity transform.

This is what Slicer's BRAINSResample does with no transform: each reference voxel takes the
moving image's value at the same physical (LPS) point, by trilinear interpolation, and -1000 HU
where the moving scan has no data. Breathing misregistration between phases is kept, as in the
published pipeline; only the grids are unified.

Usage::

    on_a = register_phases({"A": art, "V": ven, "N": nc})   # every phase on the arterial grid
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..constants import AIR_HU, PHASES, REFERENCE_PHASE_ORDER
from ..errors import InvalidImageError, PhaseOverlapError
from ..io import Volume


def resample_to_reference(moving: Volume, reference: Volume, default_value: float = AIR_HU,
                          interpolator: str = "linear") -> Volume:
    """Resample ``moving`` onto ``reference``'s grid (identity transform), float32, -1000 outside.

    ``interpolator`` is "linear" for images or "nearest" for label maps (then the dtype is kept and
    ``default_value`` should be 0). Raises ``PhaseOverlapError`` if the two scans share no volume.
    """
    import SimpleITK as sitk

    overlap = overlap_fraction(moving, reference)
    if overlap <= 0.0:
        raise PhaseOverlapError(moving.source or "<moving image>",
                                f"does not overlap the reference scan {reference.source or ''}".strip())
    if interpolator not in ("linear", "nearest"):
        raise ValueError(f"unknown interpolator {interpolator!r}")
    mov = moving.to_sitk()
    if interpolator == "linear":
        interp, pixel = sitk.sitkLinear, sitk.sitkFloat32
    else:
        interp, pixel = sitk.sitkNearestNeighbor, mov.GetPixelID()
    out = sitk.Resample(mov, [int(n) for n in reference.size_xyz], sitk.Transform(), interp,
                        *grid_args(reference), float(default_value), pixel)
    return Volume.from_sitk(out, moving.source)


def grid_args(volume: Volume) -> tuple[tuple, tuple, tuple]:
    """(origin, spacing, direction) of a grid as SimpleITK's ``Resample`` takes them."""
    return (tuple(map(float, volume.origin)), tuple(map(float, volume.spacing)),
            tuple(map(float, volume.direction.reshape(-1))))


def overlap_fraction(moving: Volume, reference: Volume) -> float:
    """Fraction of the reference's physical box covered by the moving scan's box (0 to 1).

    Computed on the axis-aligned bounds of the moving box expressed in the reference's index
    frame, which is exact for scans that share slice orientation and a safe overestimate otherwise.
    """
    corners = reference.physical_to_index(moving.corners_physical())
    lo = np.maximum(corners.min(axis=0), 0.0)
    hi = np.minimum(corners.max(axis=0), np.asarray(reference.size_xyz, float) - 1)
    extent = np.asarray(reference.size_xyz, float) - 1
    covered = np.clip(hi - lo, 0.0, None)
    if np.any(hi < lo):
        return 0.0
    return float(np.prod(np.where(extent > 0, covered / np.maximum(extent, 1e-9), 1.0)))


def reference_phase(phases: Mapping[str, object]) -> str:
    """The grid every phase goes onto: arterial, else venous; else the first present phase."""
    for p in REFERENCE_PHASE_ORDER + PHASES:
        if phases.get(p) is not None:
            return p
    raise InvalidImageError(None, "no phase given (expected some of N, A, V, D)")


def register_phases(phases: Mapping[str, Volume], reference: str | None = None) -> dict[str, Volume]:
    """Resample every phase onto the reference phase's grid (A, else V); keys among N, A, V, D.

    The reference phase comes back as float32 on its own grid; the others are linearly resampled.
    """
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise InvalidImageError(None, f"unknown phase key(s) {unknown}; expected some of {list(PHASES)}")
    present = {k: v for k, v in phases.items() if v is not None}
    ref_key = reference or reference_phase(present)
    ref = present[ref_key]
    out = {}
    for key, vol in present.items():
        if key == ref_key:
            out[key] = ref.with_array(ref.array.astype(np.float32, copy=False))
        else:
            out[key] = resample_to_reference(vol, ref)
    return out
