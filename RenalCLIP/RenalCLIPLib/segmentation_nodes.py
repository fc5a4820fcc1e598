"""Label maps (1 kidney, 2 tumour, 3 cyst) <-> segmentation nodes with named, coloured segments.

nnU-Net writes a label map; the radiologist reviews and corrects it as a segmentation node in the
Segment Editor; the lesion centre is then computed from the corrected segments. Label values and
names come from ``renalclip_lib.constants`` (what ``renalclip segmentation predict`` writes after
mapping the model's dataset.json labels); only the display colours live here.

Usage::

    seg = segmentation_from_label_volume(labels, slicer.mrmlScene, reference_node=art)
    labels = label_volume_from_segmentation(seg, art)      # LPS Volume, uint8, on art's grid
"""
from __future__ import annotations

import numpy as np

from renalclip_lib.constants import LABEL_BACKGROUND, LABEL_CYST, LABEL_KIDNEY, LABEL_NAMES, LABEL_TUMOR
from renalclip_lib.io import Volume

from .mrml_volumes import node_from_volume, volume_from_node

SEGMENT_COLORS = {LABEL_KIDNEY: (0.86, 0.55, 0.45), LABEL_TUMOR: (0.95, 0.80, 0.10), LABEL_CYST: (0.30, 0.65, 0.95)}
# Where segments overlap after editing, the later label wins: lesions are painted over kidney.
PAINT_ORDER = (LABEL_KIDNEY, LABEL_CYST, LABEL_TUMOR)
# Segment names a radiologist may type for our labels, besides the names of LABEL_NAMES.
NAME_ALIASES = {"tumour": LABEL_TUMOR, "kidneys": LABEL_KIDNEY, "renal cyst": LABEL_CYST, "tumor": LABEL_TUMOR}


def segment_name(label: int) -> str:
    """Display name of a label value: "Kidney", "Tumor", "Cyst", or "Label 7" for others."""
    return LABEL_NAMES[label].capitalize() if label in LABEL_NAMES else f"Label {label}"


def label_of_segment_name(name: str) -> int | None:
    """Our label value for a segment name (case-insensitive), or None for an unrelated segment."""
    key = " ".join(str(name).lower().replace("_", " ").split())
    for value, label_name in LABEL_NAMES.items():
        if value != LABEL_BACKGROUND and key == label_name:
            return value
    return NAME_ALIASES.get(key)


def _segments_logic():
    import slicer

    return slicer.vtkSlicerSegmentationsModuleLogic


def segmentation_from_label_node(label_node, scene, segmentation_node=None, reference_node=None,
                                 name: str = "RenalCLIP segmentation"):
    """Fill (or create) a segmentation node from a labelmap volume node: one named, coloured segment per label.

    Existing segments of ``segmentation_node`` are replaced. Returns the segmentation node.
    """
    labels = np.unique(np.asarray(_array(label_node)))
    labels = [int(v) for v in labels if v != LABEL_BACKGROUND]
    if segmentation_node is None:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    seg = segmentation_node.GetSegmentation()
    seg.RemoveAllSegments()
    if reference_node is not None:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    if not labels:
        return segmentation_node
    if not _segments_logic().ImportLabelmapToSegmentationNode(label_node, segmentation_node):
        raise RuntimeError(f"cannot import label map '{label_node.GetName()}' into a segmentation")
    # Imported segments come in increasing label order, one per non-zero value.
    for i, value in enumerate(labels):
        segment = seg.GetNthSegment(i)
        segment.SetName(segment_name(value))
        if value in SEGMENT_COLORS:
            segment.SetColor(*SEGMENT_COLORS[value])
    return segmentation_node


def _reference_extent() -> int:
    import slicer

    return slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY


def _array(node):
    import slicer

    return slicer.util.arrayFromVolume(node)


def segmentation_from_label_volume(labels, scene, segmentation_node=None, reference_node=None,
                                   name: str = "RenalCLIP segmentation"):
    """A segmentation node from an LPS label ``Volume`` (e.g. read from nnU-Net's output file)."""
    temp = node_from_volume(labels, "RenalCLIP labels (temporary)", scene, labelmap=True)
    try:
        return segmentation_from_label_node(temp, scene, segmentation_node, reference_node, name)
    finally:
        display = temp.GetDisplayNode()
        scene.RemoveNode(temp)
        if display is not None and display.GetScene() is not None:
            scene.RemoveNode(display)


def label_volume_from_segmentation(segmentation_node, reference_node):
    """The segments named kidney / tumor / cyst as one LPS label ``Volume`` (uint8) on the reference grid.

    Segments with other names are ignored; overlaps resolve in ``PAINT_ORDER`` (lesions on top).
    """
    import vtk

    scene = reference_node.GetScene()
    seg = segmentation_node.GetSegmentation()
    geometry = volume_from_node(reference_node, with_voxels=False)
    out = np.zeros(geometry.array.shape, np.uint8)
    by_label: dict[int, list[str]] = {}
    for i in range(seg.GetNumberOfSegments()):
        value = label_of_segment_name(seg.GetNthSegment(i).GetName())
        if value is not None:
            by_label.setdefault(value, []).append(seg.GetNthSegmentID(i))
    temp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "RenalCLIP export (temporary)")
    try:
        for value in PAINT_ORDER:
            if value not in by_label:
                continue
            ids = vtk.vtkStringArray()
            for sid in by_label[value]:
                ids.InsertNextValue(sid)
            if not _segments_logic().ExportSegmentsToLabelmapNode(segmentation_node, ids, temp, reference_node,
                                                                  _reference_extent()):
                raise RuntimeError(f"cannot export segment '{segment_name(value)}' of '{segmentation_node.GetName()}'")
            mask = np.asarray(_array(temp)) > 0
            if mask.shape != out.shape:
                raise RuntimeError(f"exported segment '{segment_name(value)}' has shape {mask.shape}, "
                                   f"reference grid {out.shape}")
            out[mask] = value
    finally:
        display = temp.GetDisplayNode()
        scene.RemoveNode(temp)
        if display is not None and display.GetScene() is not None:
            scene.RemoveNode(display)
    return Volume(out, geometry.spacing, geometry.origin, geometry.direction, segmentation_node.GetName())
