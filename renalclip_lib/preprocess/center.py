"""Where to centre the ROI: the primary lesion (analysis, fine-tuning) or each kidney (pre-training).

Lesion mode follows the paper: the primary lesion is the largest connected tumour (label 2),
else the largest connected cyst (label 3); on the axial slice where its cross-section is largest,
the centre is the geometric centre (centroid) of that cross-section. "Axial" is the index axis
closest to the patient's superior direction, so the rule also holds for coronal or oblique scans.
Kidney mode returns the centroid of each kidney's foreground (kidney + masses), keyed by patient side.

Usage::

    c = lesion_center(seg)                     # np.ndarray LPS (3,)
    sides = lesion_center(seg, mode="kidney")  # {"left": (3,), "right": (3,)}
"""
from __future__ import annotations

import numpy as np

from ..constants import LABEL_NAMES, LESION_LABEL_PRIORITY
from ..errors import EmptySegmentationError
from ..io import Volume

MIN_KIDNEY_ML = 10.0
_STRUCTURE_26 = np.ones((3, 3, 3), bool)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import label

    lab, n = label(mask, structure=_STRUCTURE_26)
    if n <= 1:
        return mask
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == int(np.argmax(counts))


def axial_axis(volume: Volume) -> int:
    """Index axis (0=i, 1=j, 2=k) whose direction is closest to patient superior-inferior."""
    return int(np.argmax(np.abs(volume.direction[2, :])))


def _lesion_center(labels: Volume) -> np.ndarray:
    arr = labels.array
    for lab in LESION_LABEL_PRIORITY:
        mask = arr == lab
        if mask.any():
            break
    else:
        names = " or ".join(f"{LABEL_NAMES[l]} ({l})" for l in LESION_LABEL_PRIORITY)
        raise EmptySegmentationError(labels.source, f"segmentation holds no {names} voxel")
    comp = _largest_component(mask)
    axis_ijk = axial_axis(labels)
    axis_np = 2 - axis_ijk
    other = tuple(a for a in range(3) if a != axis_np)
    areas = comp.sum(axis=other)
    best = np.flatnonzero(areas == areas.max())
    # Ties: the slice nearest the middle of the tied run keeps the choice symmetric.
    s = int(best[len(best) // 2])
    zyx = np.argwhere(np.take(comp, s, axis=axis_np)).astype(float)
    cen_2d = zyx.mean(axis=0)
    idx_np = np.insert(cen_2d, axis_np, float(s))
    return labels.index_to_physical(idx_np[::-1])


def _kidney_centers(labels: Volume) -> dict[str, np.ndarray]:
    from scipy.ndimage import label

    fg = labels.array > 0
    lab, n = label(fg, structure=_STRUCTURE_26)
    if n == 0:
        raise EmptySegmentationError(labels.source, "segmentation holds no kidney voxel")
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    voxel_ml = float(np.prod(labels.spacing)) / 1000.0
    order = [int(c) for c in np.argsort(counts)[::-1] if counts[c] > 0][:2]
    keep = [c for c in order if counts[c] * voxel_ml >= MIN_KIDNEY_ML] or order[:1]
    cents = []
    for c in keep:
        ijk = np.argwhere(lab == c).mean(axis=0)[::-1]
        cents.append(labels.index_to_physical(ijk))
    if len(cents) == 2:
        left, right = (cents[0], cents[1]) if cents[0][0] > cents[1][0] else (cents[1], cents[0])
        return {"left": left, "right": right}
    midline_x = labels.corners_physical()[:, 0].mean()
    return {"left" if cents[0][0] > midline_x else "right": cents[0]}


def lesion_center(labels: Volume, mode: str = "lesion"):
    """Physical LPS centre from a label map (1 kidney, 2 tumour, 3 cyst); see module docstring."""
    if mode == "lesion":
        return _lesion_center(labels)
    if mode == "kidney":
        return _kidney_centers(labels)
    raise ValueError(f"mode must be 'lesion' or 'kidney', not {mode!r}")
