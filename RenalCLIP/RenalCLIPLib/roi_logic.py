"""ROI extraction over MRML nodes: the module's Logic, usable without the widget.

Usage: ``roi_node = extract_roi_node(ct_node, markups_node, slicer.mrmlScene)``
"""
from __future__ import annotations

from .mrml_volumes import node_from_volume, ras_to_lps, volume_from_node


def extract_roi_node(volume_node, point_node, scene, name: str | None = None):
    """Crop the model ROI around the first control point of ``point_node`` (world RAS)."""
    from renalclip_lib.preprocess import crop_roi

    if volume_node is None:
        raise ValueError("select a CT volume")
    if point_node is None or point_node.GetNumberOfControlPoints() < 1:
        raise ValueError("place a point at the lesion centre")
    center_ras = [0.0, 0.0, 0.0]
    point_node.GetNthControlPointPositionWorld(0, center_ras)
    roi = crop_roi(volume_from_node(volume_node), ras_to_lps(center_ras))
    return node_from_volume(roi, name or f"{volume_node.GetName()} ROI", scene)
