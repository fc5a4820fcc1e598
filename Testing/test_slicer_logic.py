"""The Slicer edge on real MRML (slicer-core, headless): RAS nodes <-> LPS Volumes, ROI logic."""
import os
import sys

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML) is not installed")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "RenalCLIP"))

from RenalCLIPLib.mrml_volumes import node_from_volume, ras_to_lps, volume_from_node  # noqa: E402
from RenalCLIPLib.roi_logic import extract_roi_node  # noqa: E402
from renalclip_lib.io import Volume  # noqa: E402


@pytest.fixture()
def scene():
    sc = slicer.vtkMRMLScene()
    slicer.mrmlScene = sc
    yield sc
    sc.Clear(1)


def _oblique():
    a = np.deg2rad(25)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    b = np.deg2rad(12)
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def test_node_geometry_is_the_volume_geometry_in_ras(scene):
    rng = np.random.default_rng(0)
    vol = Volume(rng.integers(-1000, 1000, (7, 9, 11)).astype(np.int16), (0.7, 0.8, 2.5), (10.0, -20.0, 30.0), _oblique())
    node = node_from_volume(vol, "ct", scene)
    # Slicer's own IJK->RAS must send each voxel to the RAS image of our LPS point.
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    for ijk in ([0, 0, 0], [10, 8, 6], [3, 5, 2]):
        ras = m.MultiplyPoint([*map(float, ijk), 1.0])[:3]
        np.testing.assert_allclose(ras_to_lps(ras), vol.index_to_physical(ijk), atol=1e-9)
    back = volume_from_node(node)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-9)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-9)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-9)


def test_roi_logic_centres_a_clicked_marker(scene):
    vol = Volume(np.full((40, 120, 120), -100, np.int16), (1.5, 1.5, 4.0), (-90.0, -90.0, -80.0), _oblique())
    center_lps = vol.index_to_physical([60.3, 58.7, 20.2])
    ii, jj, kk = np.meshgrid(np.arange(120), np.arange(120), np.arange(40), indexing="ij")
    pts = vol.index_to_physical(np.stack([ii, jj, kk], -1).reshape(-1, 3)).reshape(120, 120, 40, 3)
    ball = np.linalg.norm(pts - center_lps, axis=-1) < 8.0
    vol.array[ball.transpose(2, 1, 0)] = 1000
    ct = node_from_volume(vol, "ct", scene)
    point = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "centre")
    point.AddControlPointWorld(*map(float, ras_to_lps(center_lps)))  # LPS->RAS is the same flip
    roi_node = extract_roi_node(ct, point, scene)
    arr = slicer.util.arrayFromVolume(roi_node).astype(float)
    assert arr.shape == (32, 140, 140)
    w = np.clip(arr + 100.0, 0, None)
    idx = np.argwhere(w > 0)
    centroid = (idx * w[w > 0][:, None]).sum(0) / w.sum()
    np.testing.assert_allclose(centroid, [15.5, 69.5, 69.5], atol=0.3)


def test_roi_logic_requires_a_point(scene):
    vol = Volume(np.zeros((4, 5, 6), np.int16), (1, 1, 1), (0, 0, 0))
    ct = node_from_volume(vol, "ct", scene)
    empty = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "none")
    with pytest.raises(ValueError, match="place a point"):
        extract_roi_node(ct, empty, scene)
