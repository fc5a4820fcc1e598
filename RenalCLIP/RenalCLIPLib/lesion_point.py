"""The "Lesion centre" markups point and the ROI box (140 x 140 x 160 mm) that follows it.

The point lives in Slicer's world RAS; the library receives its LPS image through
``renalclip_lib.coordinates`` (the one conversion), so the point the radiologist sees is the
physical point the model's ROI is centred on. The box is a markups ROI aligned with the patient
axes (the ROI's axes are L, P, S whatever the scan's orientation), locked, and moved with the point.

Usage::

    point = ensure_lesion_point(slicer.mrmlScene)
    propose_lesion_point(segmentation_node, arterial_node, point)   # centre of the primary lesion
    follower = RoiFollower(point, ensure_roi_box(slicer.mrmlScene))  # box tracks the point
    lesion_point_lps(point)                                          # np.array LPS (3,)
"""
from __future__ import annotations

import numpy as np

from renalclip_lib.constants import ROI_SIZE_MM
from renalclip_lib.coordinates import lps_to_ras, ras_to_lps

LESION_POINT_NAME = "Lesion centre"
ROI_BOX_NAME = "RenalCLIP ROI"
POINT_COLOR = (1.0, 0.35, 0.1)
ROI_COLOR = (0.2, 0.8, 1.0)


def _named_node(scene, class_name: str, name: str, color):
    """The first ``class_name`` node called ``name``, else a new one with display nodes and ``color``."""
    for i in range(scene.GetNumberOfNodesByClass(class_name)):
        n = scene.GetNthNodeByClass(i, class_name)
        if n.GetName() == name:
            return n
    node = scene.AddNewNodeByClass(class_name, name)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(*color)
    return node


def ensure_lesion_point(scene, node=None):
    """The markups point node holding the lesion centre (at most one control point); created if needed."""
    node = node or _named_node(scene, "vtkMRMLMarkupsFiducialNode", LESION_POINT_NAME, POINT_COLOR)
    node.SetMaximumNumberOfControlPoints(1)
    return node


def set_lesion_point_lps(node, center_lps) -> None:
    """Place (or move) the single control point at an LPS position (mm)."""
    ras = [float(v) for v in lps_to_ras(np.asarray(center_lps, float).reshape(3))]
    if node.GetNumberOfControlPoints() < 1:
        node.AddControlPointWorld(*ras, LESION_POINT_NAME)
    else:
        node.SetNthControlPointPositionWorld(0, *ras)
        node.SetNthControlPointLabel(0, LESION_POINT_NAME)


def lesion_point_ras(node) -> np.ndarray | None:
    """World RAS of the first defined control point, or None if none is placed."""
    if node is None or node.GetNumberOfDefinedControlPoints() < 1:
        return None
    for i in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointPositionStatus(i) == node.PositionDefined:
            ras = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(i, ras)
            return np.asarray(ras, float)
    return None


def lesion_point_lps(node) -> np.ndarray:
    """LPS of the lesion centre; ValueError if the point is not placed."""
    ras = lesion_point_ras(node)
    if ras is None:
        raise ValueError("place the lesion centre point (or propose it from the segmentation)")
    return ras_to_lps(ras)


def propose_lesion_point(segmentation_node, reference_node, point_node):
    """Move the point to the primary lesion's centre (largest axial cross-section); returns the LPS centre.

    Raises ``EmptySegmentationError`` when no segment named tumor or cyst holds a voxel.
    """
    from renalclip_lib.preprocess import lesion_center

    from .segmentation_nodes import label_volume_from_segmentation

    labels = label_volume_from_segmentation(segmentation_node, reference_node)
    center = lesion_center(labels)
    set_lesion_point_lps(point_node, center)
    return np.asarray(center, float)


def ensure_roi_box(scene, node=None):
    """The locked markups ROI box of the model's field of view (size from ``ROI_SIZE_MM``)."""
    if node is None:
        node = _named_node(scene, "vtkMRMLMarkupsROINode", ROI_BOX_NAME, ROI_COLOR)
        display = node.GetDisplayNode()
        if display is not None:
            display.SetFillOpacity(0.05)
    node.SetSize(*map(float, ROI_SIZE_MM))
    node.SetLocked(True)
    return node


def roi_box_center_ras(roi_node) -> np.ndarray:
    c = [0.0, 0.0, 0.0]
    roi_node.GetCenterWorld(c)
    return np.asarray(c, float)


class RoiFollower:
    """Keeps the ROI box centred on the lesion point: moves it whenever the point moves.

    ``stop()`` removes the observers (call it when the widget closes or the nodes change).
    """

    EVENTS = ("PointModifiedEvent", "PointPositionDefinedEvent", "PointAddedEvent", "PointRemovedEvent")

    def __init__(self, point_node, roi_node):
        self.point_node = point_node
        self.roi_node = roi_node
        self._tags = [point_node.AddObserver(getattr(point_node, e), self._on_point) for e in self.EVENTS]
        self.update()

    def _on_point(self, caller=None, event=None):
        self.update()

    def update(self) -> None:
        ras = lesion_point_ras(self.point_node)
        display = self.roi_node.GetDisplayNode()
        if ras is None:
            if display is not None:
                display.SetVisibility(False)
            return
        self.roi_node.SetCenterWorld(*map(float, ras))
        if display is not None:
            display.SetVisibility(True)

    def stop(self) -> None:
        for tag in self._tags:
            self.point_node.RemoveObserver(tag)
        self._tags = []
