"""The picture of what the model saw: axial, coronal and sagittal planes through the ROI centre.

One row per phase, windowed for soft tissue, with the segmentation outlined (kidney green,
tumour red, cyst blue) when one is known, and the centre cross-hair.

Usage: ``save_assessment_panel({"A": roi_a, "V": roi_v}, "panel.png", seg_roi=labels_roi, title="...")``
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..constants import LABEL_CYST, LABEL_KIDNEY, LABEL_TUMOR, PHASE_NAMES

PREVIEW_WINDOW_HU = (-160.0, 240.0)
OUTLINE_COLOURS = {LABEL_KIDNEY: "#3cb44b", LABEL_TUMOR: "#e6194b", LABEL_CYST: "#4363d8"}


def _planes(a: np.ndarray, spacing) -> list[tuple[np.ndarray, float, str]]:
    nz, ny, nx = a.shape
    return [(a[nz // 2], 1.0, "axial"),
            (a[::-1, ny // 2, :], spacing[2] / spacing[0], "coronal"),
            (a[::-1, :, nx // 2], spacing[2] / spacing[1], "sagittal")]


def save_assessment_panel(rois: dict, path, seg_roi=None, title: str = "") -> Path:
    """Write the panel PNG atomically; ``rois`` maps phase -> ROI Volume (same box for all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = list(rois)
    fig, axes = plt.subplots(len(phases), 3, figsize=(7.5, 2.6 * len(phases)), squeeze=False)
    lo, hi = PREVIEW_WINDOW_HU
    seg_planes = None
    if seg_roi is not None:
        seg = np.rint(seg_roi.array).astype(np.int16)
        seg_planes = _planes(seg, seg_roi.spacing)
    for r, ph in enumerate(phases):
        roi = rois[ph]
        for c, (img, aspect, name) in enumerate(_planes(roi.array, roi.spacing)):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            if seg_planes is not None:
                plane = seg_planes[c][0]
                for lab, colour in OUTLINE_COLOURS.items():
                    if np.any(plane == lab):
                        ax.contour((plane == lab).astype(float), levels=[0.5], colors=colour, linewidths=0.6)
            ax.axhline(img.shape[0] / 2 - 0.5, color="#f2c14e", lw=0.4)
            ax.axvline(img.shape[1] / 2 - 0.5, color="#f2c14e", lw=0.4)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(PHASE_NAMES[ph], fontsize=9)
            if r == 0:
                ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return Path(path)
