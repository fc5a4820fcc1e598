"""Convert between Slicer volume nodes (RAS) and renalclip_lib ``Volume`` objects (LPS).

Slicer's RAS meets the library's LPS here, with the one conversion of
``renalclip_lib.coordinates``: every other part of the extension hands ``Volume`` objects (LPS) to
renalclip_lib. Works on real Slicer and on slicer-core's
headless MRML (no Qt needed).

Usage::

    vol = volume_from_node(slicer.util.getNode("CT arterial"))
    node = node_from_volume(roi, "ROI", slicer.mrmlScene)
    center_lps = ras_to_lps(markups_node.GetNthControlPointPositionWorld(0))
"""
from __future__ import annotations

import numpy as np

from renalclip_lib.coordinates import RAS_TO_LPS, lps_to_ras, ras_to_lps

__all__ = ["RAS_TO_LPS", "lps_to_ras", "node_from_volume", "ras_to_lps", "volume_from_node"]


def _ijk_to_ras(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_from_node(node, with_voxels: bool = True):
    """The node's voxels (array (k, j, i), a copy) and geometry as an LPS ``Volume``.

    ``with_voxels=False`` gives the geometry only (a read-only zero-size-in-memory array of the
    right shape), for overlap checks without copying a large scan. A parent transform, if any,
    must be hardened first: the library works in world coordinates.
    """
    import slicer
    from renalclip_lib.io import Volume

    if node.GetParentTransformNode() is not None:
        raise ValueError(f"volume '{node.GetName()}' is under a transform: harden it first")
    m = _ijk_to_ras(node)
    lin = RAS_TO_LPS @ m[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    direction = lin / spacing
    origin = RAS_TO_LPS @ m[:3, 3]
    if node.GetImageData() is None:
        raise ValueError(f"volume '{node.GetName()}' holds no image data")
    if with_voxels:
        array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    else:
        i, j, k = node.GetImageData().GetDimensions()
        array = np.broadcast_to(np.zeros((), np.float32), (k, j, i))
    return Volume(array, spacing, origin, direction, source=node.GetName())


def node_from_volume(volume, name: str, scene, node=None, labelmap: bool = False):
    """A scalar (or labelmap) volume node in ``scene`` holding ``volume``; reuses ``node`` if given."""
    import slicer
    import vtk

    if node is None:
        cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
        node = scene.AddNewNodeByClass(cls, name)
        node.CreateDefaultDisplayNodes()
    ras_dir = RAS_TO_LPS @ volume.direction
    m = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            m.SetElement(r, c, ras_dir[r, c])
    node.SetIJKToRASDirectionMatrix(m)
    node.SetSpacing(*map(float, volume.spacing))
    node.SetOrigin(*map(float, RAS_TO_LPS @ volume.origin))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    return node
