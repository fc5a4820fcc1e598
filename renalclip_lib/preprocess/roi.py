"""The region of interest the image encoder sees, and the tensor it is fed.

``crop_roi`` cuts a 140 x 140 x 160 mm box centred on a physical point, with axes along the
patient's L, P, S directions whatever the scan's direction cosines, and resamples it to
1 x 1 x 5 mm (140 x 140 x 32 voxels), -1000 HU outside the scan. The published release resizes
with area averaging, which low-passes when it downsamples; to give the published weights inputs
of the same sharpness, each input axis is first smoothed by a Gaussian whose variance equals that
of the box average, sigma^2 = (r^2 - 1) / 12 voxels^2 for a downsampling ratio r, and then sampled
by trilinear interpolation at the exact physical points (so the centre lands where it should).

Voxel centres of the ROI sit at ``center + (index - (n - 1) / 2) * spacing``: the requested centre
lies midway between voxels 69 and 70 in x and y and between slices 15 and 16 in z.

Usage::

    roi = crop_roi(ct, center_lps=(31.0, 12.5, -140.0))
    x = to_model_input(roi)             # float32 (1, 32, 128, 128), order (z, x, y)
"""
from __future__ import annotations

import numpy as np

from ..constants import (AIR_HU, CROP_SHAPE_XYZ, ROI_SHAPE_XYZ, ROI_SPACING_MM, WINDOW_LEVEL_HU,
                         WINDOW_WIDTH_HU)
from ..errors import CenterOutsideScanError, InvalidImageError
from ..io import Volume
from .resample import grid_args

ROI_DIRECTION = np.eye(3)
_FREE_X, _FREE_Y = ROI_SHAPE_XYZ[0] - CROP_SHAPE_XYZ[0], ROI_SHAPE_XYZ[1] - CROP_SHAPE_XYZ[1]   # voxels of the ROI around the 128 x 128 crop


def roi_grid(center_lps, shape_xyz=ROI_SHAPE_XYZ, spacing=ROI_SPACING_MM) -> Volume:
    """An empty ROI grid (array of zeros is not allocated: shape only) centred on the point."""
    spacing = np.asarray(spacing, float)
    shape = np.asarray(shape_xyz, int)
    origin = np.asarray(center_lps, float) - (shape - 1) / 2.0 * spacing
    return Volume(np.empty((0, 0, 0), np.float32), spacing, origin, ROI_DIRECTION.copy())


def antialias_sigmas(volume: Volume, out_spacing=ROI_SPACING_MM) -> np.ndarray:
    """Gaussian sigma (in input voxels) per input index axis (i, j, k) matching area averaging."""
    out_spacing = np.asarray(out_spacing, float)
    sig = np.zeros(3)
    for a in range(3):
        u = volume.direction[:, a]
        step_mm = float(np.sqrt(np.sum((u * out_spacing) ** 2)))
        r = step_mm / volume.spacing[a]
        sig[a] = np.sqrt(max(r * r - 1.0, 0.0) / 12.0)
    return sig


def crop_roi(volume: Volume, center_lps, shape_xyz=ROI_SHAPE_XYZ, spacing=ROI_SPACING_MM,
             antialias: bool = True) -> Volume:
    """Resample a patient-axis-aligned box around ``center_lps`` (LPS mm) from ``volume``.

    Returns a float32 Volume of shape (32, 140, 140) = (z, y, x) with identity direction.
    Raises ``CenterOutsideScanError`` when the centre is outside the scan.
    """
    import SimpleITK as sitk
    from scipy.ndimage import gaussian_filter

    center = np.asarray(center_lps, float).reshape(3)
    if not np.all(np.isfinite(center)):
        raise CenterOutsideScanError(volume.source, f"ROI centre {tuple(center)} is not a finite point")
    if not volume.contains(center):
        raise CenterOutsideScanError(
            volume.source, f"ROI centre (LPS {center[0]:.1f}, {center[1]:.1f}, {center[2]:.1f}) mm lies outside the scan")
    grid = roi_grid(center, shape_xyz, spacing)
    shape = np.asarray(shape_xyz, int)

    sig = antialias_sigmas(volume, spacing) if antialias else np.zeros(3)
    n = np.asarray(volume.size_xyz, int)
    corners = np.array([[a, b, c] for a in (0, shape[0] - 1) for b in (0, shape[1] - 1) for c in (0, shape[2] - 1)], float)
    ijk = volume.physical_to_index(grid.index_to_physical(corners))
    margin = np.ceil(4 * sig) + 2
    lo = np.clip(np.floor(ijk.min(axis=0) - margin).astype(int), 0, n - 1)
    hi = np.clip(np.ceil(ijk.max(axis=0) + margin).astype(int), 0, n - 1)
    sub = volume.array[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1].astype(np.float32)
    if np.any(sig > 0):
        sub = gaussian_filter(sub, sigma=sig[::-1], mode="nearest", truncate=4.0)
    sub_img = sitk.GetImageFromArray(sub)
    sub_img.SetSpacing(tuple(map(float, volume.spacing)))
    sub_img.SetOrigin(tuple(map(float, volume.index_to_physical(lo))))
    sub_img.SetDirection(tuple(map(float, volume.direction.reshape(-1))))
    out = sitk.Resample(sub_img, [int(s) for s in shape], sitk.Transform(), sitk.sitkLinear,
                        *grid_args(grid), float(AIR_HU), sitk.sitkFloat32)
    # The sub-block reaches the scan's own edge wherever the box leaves the scan, so the
    # resampler's default value fills exactly the part of the box outside the scan.
    return Volume(sitk.GetArrayFromImage(out), grid.spacing, grid.origin, grid.direction, volume.source)


def window(hu: np.ndarray, level: float = WINDOW_LEVEL_HU, width: float = WINDOW_WIDTH_HU) -> np.ndarray:
    """Map HU to [0, 1] with the release's window: (HU - (level - width / 2)) / width, clipped."""
    lo = level - width / 2.0
    return np.clip((np.asarray(hu, np.float32) - np.float32(lo)) / np.float32(width), 0.0, 1.0)


def window_torch(hu, level: float = WINDOW_LEVEL_HU, width: float = WINDOW_WIDTH_HU):
    """``window`` for a torch tensor of any dtype, on its device (float32 result)."""
    lo = level - width / 2.0
    x = hu.float()
    x = x.clone() if x is hu else x
    return x.sub_(lo).div_(width).clamp_(0.0, 1.0)


def to_model_input(roi: Volume, crop: str = "center", rng: np.random.Generator | None = None) -> np.ndarray:
    """Windowed 128 x 128 x 32 crop of an ROI as float32 (1, 32, 128, 128) in (z, x, y) order.

    ``crop="center"`` (inference) takes voxels 6..133 in x and y; ``crop="random"`` (training)
    draws the offset uniformly from 0..12 in each of x and y with ``rng``.
    """
    return np.ascontiguousarray(window(crop_hu(roi, crop, rng)), dtype=np.float32)


def crop_hu(roi: Volume, crop: str = "center", rng: np.random.Generator | None = None) -> np.ndarray:
    """``to_model_input`` before the window: the crop in HU, (1, 32, 128, 128) in (z, x, y) order, in
    the ROI's own dtype (int16 from the ROI cache: half the bytes of the float32 input, and windowed
    on the device by ``window_torch``)."""
    arr = roi.array if isinstance(roi, Volume) else np.asarray(roi)
    expected = tuple(reversed(ROI_SHAPE_XYZ))
    if arr.shape != expected:
        raise InvalidImageError(getattr(roi, "source", None),
                                f"ROI has shape {arr.shape} (z, y, x); expected {expected}")
    if crop == "center":
        return np.ascontiguousarray(crop_xy(arr[None]))
    if crop == "random":
        rng = rng if rng is not None else np.random.default_rng()
        return np.ascontiguousarray(crop_xy(arr[None], int(rng.integers(0, _FREE_X + 1)), int(rng.integers(0, _FREE_Y + 1))))
    raise ValueError(f"crop must be 'center' or 'random', not {crop!r}")


def crop_xy(x, x0: int = _FREE_X // 2, y0: int = _FREE_Y // 2):
    """The 128 x 128 crop starting at (``x0``, ``y0``) of ROIs ``(..., z, y, x)`` (numpy or torch),
    axes swapped to ``(..., z, x, y)``; the default start is the centre crop (voxels 6..133)."""
    cx, cy, _ = CROP_SHAPE_XYZ
    return x[..., y0:y0 + cy, x0:x0 + cx].swapaxes(-1, -2)
