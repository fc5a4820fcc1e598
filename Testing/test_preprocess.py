"""The geometry pipeline: crop_roi, resample_to_reference / register_phases, lesion_center,
to_model_input.

Expectations are analytic: a bright ball at a known LPS point must land at the ROI centre; a
linear ramp f(p) = a.p + b is reproduced exactly by trilinear resampling (and by Gaussian
anti-aliasing, which leaves a linear function unchanged); label shapes whose largest axial
cross-section is known give that cross-section's centroid; a window and a crop of known numbers.
"""
from __future__ import annotations

import numpy as np
import pytest

from renalclip_lib.errors import (CenterOutsideScanError, EmptySegmentationError, InvalidImageError,
                                  PhaseOverlapError)
from renalclip_lib.io import Volume
from renalclip_lib.preprocess import (crop_roi, lesion_center, register_phases, resample_to_reference,
                                      to_model_input, window)


# =========================================================================== crop_roi: the marker

GRIDS = {
    # name: (direction builder, spacing, shape_xyz)
    "identity": (lambda g: np.eye(3), (0.8, 0.8, 2.5), (110, 110, 40)),
    "oblique-x20-y-25": (lambda g: g.rot("x", 20) @ g.rot("y", -25), (0.8, 0.8, 2.5), (110, 110, 40)),
    "oblique-z30-x15": (lambda g: g.rot("z", 30) @ g.rot("x", 15), (0.9, 0.9, 2.0), (100, 100, 45)),
    "anisotropic": (lambda g: np.eye(3), (0.7, 0.8, 3.0), (120, 110, 30)),
    "anisotropic-oblique": (lambda g: g.rot("y", 18) @ g.rot("z", -22), (0.7, 0.8, 3.0), (120, 110, 30)),
    # Left-handed: slices stored superior-to-inferior (common after DICOM-to-NIfTI conversion).
    "left-handed-oblique": (lambda g: g.rot("x", 15) @ np.diag([1.0, 1.0, -1.0]), (0.8, 0.7, 2.5), (110, 115, 40)),
}


def _scan_with_marker(geo, grid, marker_lps, centre_index=(0.5, 0.5, 0.5)):
    """A scan on the named grid whose continuous index ``centre_index * (n - 1)`` sits at
    ``marker_lps`` shifted by a non-grid amount, holding a 1000 HU ball of radius 5 mm at the marker."""
    dir_fn, sp, shape = GRIDS[grid]
    d = dir_fn(geo)
    sp = np.asarray(sp, float)
    # Put the marker at a deliberately non-integer voxel position.
    ijk = np.asarray(centre_index) * (np.asarray(shape) - 1) + np.array([0.37, -0.21, 0.43])
    origin = np.asarray(marker_lps, float) - d @ (sp * ijk)
    return geo.volume(shape, sp, origin, d, fn=geo.ball(marker_lps, radius=5.0))


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("antialias", [True, False], ids=["antialias", "no-antialias"])
def test_marker_at_requested_point_lands_at_roi_centre(geo, grid, antialias):
    marker = np.array([31.0, 12.5, -140.0])
    vol = _scan_with_marker(geo, grid, marker)
    roi = crop_roi(vol, marker, antialias=antialias)
    assert roi.array.shape == (32, 140, 140) and roi.array.dtype == np.float32
    np.testing.assert_allclose(geo.centroid(roi.array), geo.ROI_CENTRE_ZYX, atol=0.3)
    # The ROI is patient-axis aligned, 1 x 1 x 5 mm, centred on the point.
    np.testing.assert_allclose(roi.direction, np.eye(3))
    np.testing.assert_allclose(roi.spacing, [1.0, 1.0, 5.0])
    np.testing.assert_allclose(roi.index_to_physical([69.5, 69.5, 15.5]), marker, atol=1e-9)


@pytest.mark.parametrize("grid", ["identity", "oblique-x20-y-25", "anisotropic-oblique", "left-handed-oblique"])
def test_roi_axes_follow_patient_left_posterior_superior(geo, grid):
    """A marker 12 mm left, 7 mm anterior and 20 mm superior of the ROI centre appears at
    +12 voxels in x, -7 in y and +4 slices in z, whatever the scan's orientation."""
    centre = np.array([-15.0, 40.0, 250.0])
    offset = np.array([12.0, -7.0, 20.0])
    vol = _scan_with_marker(geo, grid, centre + offset)
    roi = crop_roi(vol, centre)
    expect = geo.ROI_CENTRE_ZYX + np.array([offset[2] / 5.0, offset[1], offset[0]])
    np.testing.assert_allclose(geo.centroid(roi.array), expect, atol=0.3)


# =========================================================================== crop_roi: padding

def _inside_band(idx, shape_xyz, band):
    """-1: clearly outside the scan, +1: clearly inside, 0: within ``band`` (index units) of its edge."""
    lo = idx + 0.5                      # distance past the low voxel edge, per axis
    hi = np.asarray(shape_xyz) - 0.5 - idx
    m = np.minimum(lo, hi)              # signed distance to the nearest edge, per axis
    worst = np.min(m / band, axis=-1)
    return np.where(worst > 1, 1, np.where(worst < -1, -1, 0))


def test_padding_near_scan_border_identity(geo):
    """Centre near the low-x, high-y and high-z corner: outside the scan exactly -1000 HU, inside
    the scan's value, the change where the scan ends (within one ROI voxel)."""
    sp, shape, origin = np.array([0.8, 0.9, 2.5]), (120, 110, 50), np.array([-50.0, -40.0, 10.0])
    vol = geo.volume(shape, sp, origin, fill=40.0)
    centre = origin + sp * np.array([15.0, 100.0, 45.0])
    roi = crop_roi(vol, centre).array
    pts = geo.roi_points(centre)
    idx = (pts - origin) / sp                          # identity direction: index from physical
    state = _inside_band(idx, shape, band=np.array([1.0, 1.0, 5.0]) / sp)   # one ROI voxel
    assert (state == -1).sum() > 100_000 and (state == 1).sum() > 100_000
    assert np.all(roi[state == -1] == -1000.0)
    np.testing.assert_allclose(roi[state == 1], 40.0, atol=1e-3)
    assert np.all((roi[state == 0] >= -1000.0) & (roi[state == 0] <= 40.0 + 1e-3))
    # The edge along x, on a line through the ROI centre: first in-scan ROI voxel is where the
    # scan's low x edge (origin - half a voxel) falls.
    line = roi[15, 69, :]
    x_edge = origin[0] - sp[0] / 2.0
    first_inside = int(np.argmax(line > -1000.0))
    x_of_first = pts[15, 69, first_inside, 0]
    assert x_edge - 1.0 <= x_of_first <= x_edge + 1.0


def test_padding_near_scan_border_oblique_ramp(geo):
    """Oblique scan holding a ramp: beyond its edges -1000 HU; inside, the ramp's exact value."""
    d = geo.rot("x", 25) @ geo.rot("z", 20)
    sp, shape = np.array([1.0, 1.1, 2.0]), (100, 100, 60)
    origin = np.array([10.0, -20.0, 30.0])
    f = geo.ramp(a=(1.5, -2.0, 0.75), b=-40.0)
    vol = geo.volume(shape, sp, origin, d, fn=f)
    centre = origin + d @ (sp * np.array([8.0, 90.0, 30.0]))
    roi = crop_roi(vol, centre, antialias=False).array
    pts = geo.roi_points(centre)
    idx = np.linalg.solve(d, (pts - origin).reshape(-1, 3).T).T.reshape(pts.shape) / sp
    state = _inside_band(idx, shape, band=np.full(3, 5.0) / sp)   # the ROI's largest voxel side
    assert (state == -1).sum() > 50_000 and (state == 1).sum() > 50_000
    assert np.all(roi[state == -1] == -1000.0)
    want = f(pts[state == 1])
    np.testing.assert_allclose(roi[state == 1], want, rtol=1e-3, atol=1e-3 * np.ptp(want))


# =========================================================================== anti-aliasing


def test_antialias_matches_box_average_along_z(geo):
    """The release area-averages 1 mm slices into 5 mm ones; the Gaussian must have the variance of
    that box average along z and none along x, y (scan spacing 2 mm: no downsampling there). A
    quadratic in z tells: averaging (z - z0)^2 over the 5 slices at -2..2 mm adds exactly 2 mm^2."""
    sp, shape = np.array([2.0, 2.0, 1.0]), (90, 90, 200)
    origin = np.array([-90.0, -90.0, -100.0])
    z0 = 3.0
    vol = geo.volume(shape, sp, origin, fn=lambda p: (p[..., 2] - z0) ** 2 + 0.5 * p[..., 0])
    centre = np.array([1.0, -1.0, 0.5])           # puts every ROI slice on a scan slice
    roi = crop_roi(vol, centre).array
    pts = geo.roi_points(centre)
    zs = pts[..., 2][..., None] + np.arange(-2, 3)  # the 5 scan slices an ROI slice covers
    box = ((zs - z0) ** 2).mean(axis=-1) + 0.5 * pts[..., 0]
    np.testing.assert_allclose(roi, box, atol=0.05)
    assert np.abs(roi - ((pts[..., 2] - z0) ** 2 + 0.5 * pts[..., 0])).min() > 1.9   # it is smoothed


# =========================================================================== linear ramps

@pytest.mark.parametrize("antialias", [False, True], ids=["no-antialias", "antialias"])
def test_crop_roi_reproduces_linear_ramp_at_roi_voxel_centres(geo, antialias):
    d = geo.rot("z", 22) @ geo.rot("x", -17)
    sp, shape = np.array([1.4, 1.3, 2.5]), (220, 220, 130)
    f = geo.ramp(a=(2.0, -3.0, 1.5), b=25.0)
    centre = np.array([5.0, -8.0, 12.0])
    origin = centre - d @ (sp * (np.asarray(shape) - 1) / 2.0)
    vol = geo.volume(shape, sp, origin, d, fn=f)
    roi = crop_roi(vol, centre, antialias=antialias).array
    want = f(geo.roi_points(centre))
    assert roi.min() > -1000.0                       # the ROI lies wholly inside this scan
    np.testing.assert_allclose(roi, want, rtol=1e-3, atol=1e-3 * np.ptp(want))


def test_resample_to_reference_is_exact_for_a_ramp_inside_and_air_outside(geo):
    f = geo.ramp(a=(3.0, 1.0, -2.0), b=100.0)
    dm = geo.rot("z", 20) @ geo.rot("x", 15)
    spm, nm, om = np.array([1.2, 1.1, 2.0]), (60, 60, 40), np.array([-30.0, -30.0, -40.0])
    moving = geo.volume(nm, spm, om, dm, fn=f, source="moving.nii.gz")
    dr = geo.rot("y", -12)
    spr, nr = np.array([1.7, 1.5, 2.6]), (45, 40, 35)
    centre_m = om + dm @ (spm * (np.asarray(nm) - 1) / 2.0)
    orr = centre_m + np.array([25.0, -10.0, 15.0]) - dr @ (spr * (np.asarray(nr) - 1) / 2.0)
    reference = geo.volume(nr, spr, orr, dr, fill=0.0, source="reference.nii.gz")

    out = resample_to_reference(moving, reference)
    assert out.array.shape == reference.array.shape and out.array.dtype == np.float32
    np.testing.assert_allclose(out.spacing, spr)
    np.testing.assert_allclose(out.origin, orr)
    np.testing.assert_allclose(out.direction, dr)

    pts = geo.grid_points(nr, spr, orr, dr)
    q = np.linalg.solve(dm, (pts - om).reshape(-1, 3).T).T.reshape(pts.shape) / spm
    inside = np.all((q >= 0.5) & (q <= np.asarray(nm) - 1.5), axis=-1)
    outside = np.any((q < -1.5) | (q > np.asarray(nm) + 0.5), axis=-1)
    assert inside.sum() > 5000 and outside.sum() > 5000
    want = f(pts[inside])
    np.testing.assert_allclose(out.array[inside], want, rtol=1e-3, atol=1e-3 * np.ptp(want))
    assert np.all(out.array[outside] == -1000.0)


def test_resample_nearest_keeps_labels_and_dtype(geo):
    labels = np.zeros((10, 12, 14), np.uint8)
    labels[3:6, 4:8, 5:9] = 2
    labels[6:8, 2:4, 1:3] = 1
    moving = Volume(labels, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    # The reference grid is the same grid shifted by (+2, -1, +1) voxels.
    ref = Volume(np.zeros((10, 12, 14), np.uint8), (1.0, 1.0, 2.0), (2.0, -1.0, 2.0))
    out = resample_to_reference(moving, ref, default_value=0, interpolator="nearest")
    assert out.array.dtype == np.uint8
    expect = np.zeros_like(labels)
    expect[:-1, 1:, :-2] = labels[1:, :-1, 2:]      # ref (i, j, k) sits at moving (i + 2, j - 1, k + 1)
    np.testing.assert_array_equal(out.array, expect)


def _phase(geo, d, sp, shape, centre, f, name, dtype=np.float32):
    origin = np.asarray(centre, float) - d @ (np.asarray(sp) * (np.asarray(shape) - 1) / 2.0)
    return geo.volume(shape, sp, origin, d, fn=f, dtype=dtype, source=f"{name}.nii.gz")


def test_register_phases_uses_arterial_grid_and_keeps_keys(geo):
    f = geo.ramp(a=(2.0, 1.0, -1.0), b=0.0)
    a = _phase(geo, geo.rot("x", 10), (1.0, 1.0, 2.0), (50, 50, 30), (0, 0, 0), f, "A", dtype=np.int16)
    v = _phase(geo, np.eye(3), (1.5, 1.5, 3.0), (50, 50, 30), (3, -2, 5), f, "V")
    n = _phase(geo, geo.rot("z", -15), (0.8, 0.8, 2.5), (70, 70, 30), (-2, 4, -3), f, "N")
    out = register_phases({"V": v, "N": n, "A": a})
    assert set(out) == {"A", "V", "N"}
    for key, vol in out.items():
        assert vol.array.dtype == np.float32, key
        assert vol.array.shape == a.array.shape, key
        np.testing.assert_allclose(vol.spacing, a.spacing)
        np.testing.assert_allclose(vol.origin, a.origin)
        np.testing.assert_allclose(vol.direction, a.direction)
    np.testing.assert_array_equal(out["A"].array, a.array.astype(np.float32))
    # The other phases hold the same ramp at the arterial voxel centres (central block).
    pts = geo.grid_points((50, 50, 30), a.spacing, a.origin, a.direction)[8:22, 12:38, 12:38]
    for key in ("V", "N"):
        np.testing.assert_allclose(out[key].array[8:22, 12:38, 12:38], f(pts), atol=0.05)


def test_register_phases_falls_back_to_venous_then_first_present(geo):
    f = geo.ramp()
    v = _phase(geo, np.eye(3), (1.5, 1.5, 3.0), (30, 30, 20), (0, 0, 0), f, "V")
    n = _phase(geo, geo.rot("z", 10), (1.0, 1.0, 2.0), (40, 40, 25), (1, 1, 1), f, "N")
    d = _phase(geo, np.eye(3), (1.2, 1.2, 2.5), (40, 40, 25), (2, 0, -1), f, "D")
    out = register_phases({"N": n, "V": v, "D": d, "A": None})
    assert set(out) == {"N", "V", "D"}
    for vol in out.values():
        assert vol.array.shape == v.array.shape
        np.testing.assert_allclose(vol.origin, v.origin)
        np.testing.assert_allclose(vol.spacing, v.spacing)
    out = register_phases({"D": d, "N": n})
    for vol in out.values():
        np.testing.assert_allclose(vol.origin, n.origin)
        np.testing.assert_allclose(vol.direction, n.direction)


def test_register_phases_rejects_unknown_key_and_disjoint_phases(geo):
    a = geo.volume((20, 20, 10), (1, 1, 2), (0, 0, 0), source="/data/case1_A.nii.gz")
    far = geo.volume((20, 20, 10), (1, 1, 2), (0, 0, 500.0), source="/data/case1_V.nii.gz")
    with pytest.raises(PhaseOverlapError) as exc:
        register_phases({"A": a, "V": far})
    assert "/data/case1_V.nii.gz" in str(exc.value)
    with pytest.raises(InvalidImageError) as exc:
        register_phases({"A": a, "X": a})
    assert "X" in str(exc.value)


# =========================================================================== lesion_center

def _mushroom(shape_zyx=(24, 48, 64), label=2):
    """A tumour whose largest axial cross-section (slice k = 13, i 18..29, j 30..38) is off the
    3D centroid: expected centre index (i, j, k) = (23.5, 34, 13)."""
    arr = np.zeros(shape_zyx, np.uint8)
    arr[10:13, 31:36, 22:27] = label          # 5 x 5 on slices 10-12
    arr[13, 30:39, 18:30] = label             # 12 x 9 on slice 13 (largest)
    arr[14:17, 34:38, 25:31] = label          # 6 x 4 on slices 14-16
    return arr, np.array([23.5, 34.0, 13.0])


def _phys(origin, d, sp, ijk):
    return np.asarray(origin, float) + np.asarray(d, float) @ (np.asarray(sp, float) * np.asarray(ijk, float))


def test_lesion_center_is_centroid_of_largest_axial_cross_section(geo):
    arr, ijk = _mushroom()
    sp, origin = np.array([0.8, 0.7, 3.0]), np.array([-20.0, 15.0, -300.0])
    c = lesion_center(Volume(arr, sp, origin))
    np.testing.assert_allclose(c, _phys(origin, np.eye(3), sp, ijk), atol=1e-9)


def test_lesion_center_box_tumour_is_box_centre(geo):
    arr = np.zeros((20, 30, 40), np.uint8)
    arr[5:12, 10:17, 20:31] = 2               # 7 slices (odd: the middle one wins the tie)
    sp, origin = np.array([1.0, 1.0, 2.0]), np.array([0.0, 0.0, 0.0])
    c = lesion_center(Volume(arr, sp, origin))
    np.testing.assert_allclose(c, _phys(origin, np.eye(3), sp, [25.0, 13.0, 8.0]), atol=1e-9)


def test_tumour_takes_precedence_over_larger_cyst_and_cyst_alone_is_used(geo):
    arr, ijk = _mushroom()
    arr[2:9, 5:25, 40:60] = 3                 # cyst: 7 x 20 x 20 voxels, far larger than the tumour
    arr[4, 5:25, 40:64] = 3                   # its largest slice (k = 4): i 40..63, j 5..24
    sp, origin = np.array([1.0, 1.0, 2.5]), np.array([10.0, 20.0, 30.0])
    vol = Volume(arr, sp, origin)
    np.testing.assert_allclose(lesion_center(vol), _phys(origin, np.eye(3), sp, ijk), atol=1e-9)
    only_cyst = Volume(np.where(arr == 2, 1, arr).astype(np.uint8), sp, origin)   # tumour relabelled kidney
    np.testing.assert_allclose(lesion_center(only_cyst), _phys(origin, np.eye(3), sp, [51.5, 14.5, 4.0]), atol=1e-9)


def test_two_tumour_components_the_larger_wins(geo):
    arr, ijk = _mushroom()
    arr[9:14, 2:5, 2:5] = 2                   # a smaller tumour, earlier in raster order, also on slice 13
    arr[20:23, 2:12, 50:62] = 1               # kidney voxels do not count
    sp, origin = np.array([1.0, 1.0, 2.0]), np.zeros(3)
    np.testing.assert_allclose(lesion_center(Volume(arr, sp, origin)), _phys(origin, np.eye(3), sp, ijk), atol=1e-9)


def test_lesion_center_on_coronal_grid_uses_the_superior_index_axis(geo):
    """Coronal acquisition: index j runs inferior, k posterior; the 'axial' slices are j-slices."""
    axial, (i0, j0, k0) = _mushroom()
    arr = np.ascontiguousarray(axial.transpose(1, 0, 2))       # stacking axis (old k) becomes j
    d = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])   # i->L, j->I, k->P
    sp, origin = np.array([0.8, 3.0, 0.9]), np.array([5.0, -60.0, 80.0])
    c = lesion_center(Volume(arr, sp, origin, d))
    np.testing.assert_allclose(c, _phys(origin, d, sp, [i0, k0, j0]), atol=1e-9)


def test_lesion_center_ellipsoid_on_oblique_grid(geo):
    """An ellipsoid with axes along L, P, S centred on a voxel of an oblique grid: the largest
    section of an ellipsoid by parallel planes is the central one, centred on the ellipsoid centre."""
    d = geo.rot("x", 20) @ geo.rot("z", 12)
    sp, shape = np.array([0.8, 0.8, 2.5]), (70, 70, 24)
    centre = np.array([40.0, -25.0, 110.0])
    ijk0 = np.array([33, 36, 11])
    origin = centre - d @ (sp * ijk0)
    semi = np.array([12.0, 9.0, 6.0])
    vol = geo.volume(shape, sp, origin, d, dtype=np.uint8,
                     fn=lambda p: np.where((((p - centre) / semi) ** 2).sum(-1) <= 1.0, 2, 0))
    assert (vol.array == 2).sum() > 500
    np.testing.assert_allclose(lesion_center(vol), centre, atol=1e-6)


def _two_kidneys(direction, fragment=True):
    arr = np.zeros((20, 30, 60), np.uint8)
    arr[5:15, 10:20, 5:15] = 1                # low i
    arr[4:14, 12:22, 40:50] = 1               # high i
    arr[6:9, 14:17, 44:47] = 2                # tumour and cyst inside the high-i kidney
    arr[10:12, 18:20, 41:43] = 3
    if fragment:
        arr[18, 2, 30:33] = 1                 # a three-voxel speck: not a kidney
    sp = np.array([2.0, 2.0, 3.0])            # 10 x 10 x 10 voxels = 12 mL per kidney
    origin = np.array([-60.0, -30.0, -30.0])
    low = _phys(origin, direction, sp, [9.5, 14.5, 9.5])
    high = _phys(origin, direction, sp, [44.5, 16.5, 8.5])
    return Volume(arr, sp, origin, direction, "seg.nii.gz"), low, high


@pytest.mark.parametrize("storage", ["LPS", "RAS"])
def test_kidney_mode_keys_by_patient_side(storage):
    """LPS +x is patient left: with LPS storage the high-i kidney is the left one, with RAS storage
    (i towards patient right) the low-i kidney is."""
    d = np.eye(3) if storage == "LPS" else np.diag([-1.0, -1.0, 1.0])
    vol, low, high = _two_kidneys(d)
    sides = lesion_center(vol, mode="kidney")
    assert set(sides) == {"left", "right"}
    left, right = (high, low) if storage == "LPS" else (low, high)
    np.testing.assert_allclose(sides["left"], left, atol=1e-9)
    np.testing.assert_allclose(sides["right"], right, atol=1e-9)
    assert sides["left"][0] > sides["right"][0]


@pytest.mark.parametrize("storage", ["LPS", "RAS"])
def test_kidney_mode_single_kidney(storage):
    d = np.eye(3) if storage == "LPS" else np.diag([-1.0, -1.0, 1.0])
    vol, low, _ = _two_kidneys(d)
    arr = vol.array.copy()
    arr[:, :, 36:] = 0                          # keep only the low-i kidney and the speck (i 30..32)
    assert arr[18, 2, 30:33].all()
    sides = lesion_center(vol.with_array(arr), mode="kidney")
    side = "right" if storage == "LPS" else "left"
    assert list(sides) == [side]
    np.testing.assert_allclose(sides[side], low, atol=1e-9)


def test_lesion_center_empty_segmentation_names_the_file():
    empty = Volume(np.zeros((5, 6, 7), np.uint8), (1, 1, 1), (0, 0, 0), source="/seg/case9.nii.gz")
    with pytest.raises(EmptySegmentationError) as exc:
        lesion_center(empty)
    assert str(exc.value).startswith("/seg/case9.nii.gz: ")
    with pytest.raises(EmptySegmentationError) as exc:
        lesion_center(empty, mode="kidney")
    assert "/seg/case9.nii.gz" in str(exc.value)
    kidney = np.zeros((5, 6, 7), np.uint8)
    kidney[1:4, 1:4, 1:4] = 1
    kidney_only = empty.with_array(kidney)
    with pytest.raises(EmptySegmentationError) as exc:
        lesion_center(kidney_only)
    assert "tumor" in str(exc.value) and "cyst" in str(exc.value)
    with pytest.raises(ValueError):
        lesion_center(kidney_only, mode="organ")


# =========================================================================== to_model_input

def _roi(hu):
    return Volume(np.asarray(hu, np.float32), (1.0, 1.0, 5.0), (0.0, 0.0, 0.0))


@pytest.mark.parametrize("hu,expected", [(-1000, 0.0), (-200, 0.0), (-75, 0.25), (50, 0.5), (175, 0.75),
                                         (300, 1.0), (3000, 1.0)])
def test_window_values(hu, expected):
    x = to_model_input(_roi(np.full((32, 140, 140), hu)))
    assert x.shape == (1, 32, 128, 128) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x, expected, atol=1e-6)
    np.testing.assert_allclose(window(np.array([hu], np.float32)), [expected], atol=1e-6)


def test_tensor_order_is_z_x_y():
    hu = np.full((32, 140, 140), -1000.0)
    hu[7, 50, 30] = 300.0                      # ROI voxel x = 30, y = 50, z = 7 -> tensor (z, x-6, y-6)
    x = to_model_input(_roi(hu))
    assert x[0, 7, 24, 44] == 1.0
    assert np.count_nonzero(x) == 1


def _coded_roi():
    """HU that encode each voxel's (x, y): the window maps it to (x + 140 y) / 19600."""
    y, xx = np.mgrid[0:140, 0:140]
    plane = -200.0 + 500.0 * (xx + 140 * y) / 19600.0
    return _roi(np.broadcast_to(plane, (32, 140, 140)))


def _decode(t):
    code = np.rint(t * 19600.0).astype(int)
    return code % 140, code // 140                 # ROI x, ROI y


def test_centre_crop_takes_voxels_6_to_133():
    x = to_model_input(_coded_roi(), crop="center")
    rx, ry = _decode(x[0, 3])                      # tensor axes (x, y)
    a, b = np.mgrid[0:128, 0:128]
    np.testing.assert_array_equal(rx, a + 6)
    np.testing.assert_array_equal(ry, b + 6)


def test_random_crop_is_seeded_and_within_range():
    roi = _coded_roi()
    offsets = []
    for seed in range(150):
        t1 = to_model_input(roi, crop="random", rng=np.random.default_rng(seed))
        t2 = to_model_input(roi, crop="random", rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(t1, t2)
        rx, ry = _decode(t1[0, 0])
        x0, y0 = int(rx[0, 0]), int(ry[0, 0])
        a, b = np.mgrid[0:128, 0:128]
        np.testing.assert_array_equal(rx, a + x0)
        np.testing.assert_array_equal(ry, b + y0)
        offsets.append((x0, y0))
    xs, ys = zip(*offsets)
    assert set(xs) == set(range(13)) and set(ys) == set(range(13))
    assert any(x != y for x, y in offsets)         # x and y offsets are drawn independently


def test_to_model_input_rejects_wrong_shape_and_crop():
    with pytest.raises(InvalidImageError):
        to_model_input(Volume(np.zeros((32, 140, 139), np.float32), (1, 1, 5), (0, 0, 0), source="r.nii.gz"))
    with pytest.raises(ValueError):
        to_model_input(_roi(np.zeros((32, 140, 140))), crop="corner")


# =========================================================================== crop_roi bad input

def test_centre_outside_scan_names_the_file(geo):
    vol = geo.volume((40, 40, 20), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), fill=0.0, source="/ct/case3.nii.gz")
    for centre in ([20.0, 20.0, 45.0], [-5.0, 20.0, 20.0], [20.0, 40.5, 20.0], [np.nan, 0.0, 0.0]):
        with pytest.raises(CenterOutsideScanError) as exc:
            crop_roi(vol, centre)
        assert str(exc.value).startswith("/ct/case3.nii.gz: ")
    # Just inside the last voxel's half-voxel border is still inside.
    assert crop_roi(vol, [39.4, 20.0, 38.9]).array.shape == (32, 140, 140)
