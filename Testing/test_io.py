"""read_volume / write_volume / write_dicom_series: geometry, values and bad input.

Geometry is checked against references that do not go through the code under test: nibabel's
affine for NIfTI (RAS, converted with LPS = diag(-1, -1, 1) @ RAS), hand-written NRRD headers, the
DICOM definition of ImagePositionPatient / ImageOrientationPatient, and a bright marker that must
land at the centre of an ROI cut around its known physical point.
"""
from __future__ import annotations

import random

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from renalclip_lib.errors import (InvalidImageError, MissingFileError, RenalCLIPError,
                                  UnreadableFileError)
from renalclip_lib.io import Volume, read_volume, write_dicom_series, write_volume
from renalclip_lib.preprocess import crop_roi

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def _marker_lands_at_centre(geo, vol, point):
    roi = crop_roi(vol, point)
    assert roi.array.shape == geo.ROI_SHAPE_ZYX
    c = geo.centroid(roi.array)
    np.testing.assert_allclose(c, geo.ROI_CENTRE_ZYX, atol=0.3)


# --------------------------------------------------------------------------- NIfTI stored RAS

@pytest.mark.parametrize("oblique", [False, True], ids=["axis-aligned", "oblique"])
def test_ras_nifti_geometry_agrees_with_nibabel_and_marker_is_centred(tmp_path, geo, oblique):
    sp = np.array([0.8, 0.9, 2.5])
    shape = (90, 80, 28)
    rot = geo.rot("z", 18) @ geo.rot("x", -22) if oblique else np.eye(3)
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(sp)        # +i towards patient Right, +j Anterior (RAS storage)
    affine[:3, 3] = (-25.0, 40.0, -60.0)
    # The marker: the LPS point of a non-integer voxel position well inside the scan.
    ijk_marker = np.array([41.3, 37.6, 13.2])
    marker_lps = LPS_FROM_RAS @ (affine @ np.append(ijk_marker, 1.0))[:3]

    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ras = np.stack([i, j, k, np.ones_like(i)], -1).astype(float) @ affine.T
    lps = ras[..., :3] @ LPS_FROM_RAS.T
    data = geo.ball(marker_lps, radius=5.0)(lps).astype(np.float32)  # nibabel order (i, j, k)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path = tmp_path / "ras.nii.gz"
    nib.save(img, path)

    vol = read_volume(path)
    ref = nib.load(path)
    assert vol.array.shape == shape[::-1]
    np.testing.assert_array_equal(vol.array, np.asarray(ref.dataobj).transpose(2, 1, 0))
    np.testing.assert_allclose(vol.spacing, sp, rtol=1e-5)
    # Physical points of arbitrary voxels agree with nibabel's affine converted to LPS.
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 1, (20, 3)) * (np.array(shape) - 1)
    expect = (np.c_[pts, np.ones(len(pts))] @ ref.affine.T)[:, :3] @ LPS_FROM_RAS.T
    np.testing.assert_allclose(vol.index_to_physical(pts), expect, atol=1e-3)
    if not oblique:
        np.testing.assert_allclose(vol.direction, np.diag([-1.0, -1.0, 1.0]), atol=1e-6)
    _marker_lands_at_centre(geo, vol, marker_lps)


def test_write_volume_nifti_affine_is_lps_converted_to_ras(tmp_path, geo):
    d = geo.rot("y", 25) @ geo.rot("x", 15)
    vol = geo.volume((12, 10, 8), (0.7, 0.8, 3.0), origin=(5.0, -7.0, 100.0), direction=d,
                     fn=geo.ramp())
    out = write_volume(vol, tmp_path / "sub" / "v.nii.gz")
    ref = nib.load(out)
    expect = np.eye(4)
    expect[:3, :3] = LPS_FROM_RAS @ d @ np.diag([0.7, 0.8, 3.0])
    expect[:3, 3] = LPS_FROM_RAS @ np.array([5.0, -7.0, 100.0])
    np.testing.assert_allclose(ref.affine, expect, atol=1e-4)
    np.testing.assert_allclose(np.asarray(ref.dataobj), vol.array.transpose(2, 1, 0), rtol=1e-6)
    assert [p.name for p in out.parent.iterdir()] == ["v.nii.gz"]     # no temporary left behind


# --------------------------------------------------------------------------- NRRD, MHA

def _write_nrrd(path, arr_zyx, spacing, origin, direction, space="left-posterior-superior", extra=""):
    nz, ny, nx = arr_zyx.shape
    cols = np.asarray(direction, float) * np.asarray(spacing, float)   # column c = axis c step vector
    vec = " ".join("(" + ",".join(f"{v:.12g}" for v in cols[:, c]) + ")" for c in range(3))
    header = (f"NRRD0004\ntype: float\ndimension: 3\nspace: {space}\nsizes: {nx} {ny} {nz}\n"
              f"space directions: {vec}\nkinds: domain domain domain\nendian: little\n"
              f"encoding: raw\nspace origin: ({','.join(f'{v:.12g}' for v in origin)})\n{extra}\n")
    path.write_bytes(header.encode() + np.ascontiguousarray(arr_zyx, "<f4").tobytes())


def test_hand_written_oblique_nrrd_geometry_and_marker(tmp_path, geo):
    d = geo.rot("x", 20) @ geo.rot("y", -28)
    sp, origin, shape = np.array([0.7, 0.8, 3.0]), np.array([-40.0, -35.0, -20.0]), (110, 100, 26)
    marker = origin + d @ (sp * np.array([55.2, 48.7, 12.6]))
    arr = geo.volume(shape, sp, origin, d, fn=geo.ball(marker)).array
    path = tmp_path / "oblique.nrrd"
    _write_nrrd(path, arr, sp, origin, d)

    vol = read_volume(path)
    np.testing.assert_allclose(vol.spacing, sp, atol=1e-6)
    np.testing.assert_allclose(vol.origin, origin, atol=1e-6)
    np.testing.assert_allclose(vol.direction, d, atol=1e-6)
    np.testing.assert_array_equal(vol.array, arr)
    _marker_lands_at_centre(geo, vol, marker)


def test_nrrd_in_ras_space_is_converted_to_lps(tmp_path, geo):
    sp, shape = np.array([1.5, 1.25, 2.0]), (6, 5, 4)
    arr = np.arange(120, dtype=np.float32).reshape(4, 5, 6)
    _write_nrrd(tmp_path / "ras.nrrd", arr, sp, (10.0, 20.0, 30.0), np.eye(3), space="right-anterior-superior")
    vol = read_volume(tmp_path / "ras.nrrd")
    ijk = np.array([[0, 0, 0], [5, 4, 3], [2.5, 1, 3]], float)
    expect_ras = np.array([10.0, 20.0, 30.0]) + ijk * sp
    np.testing.assert_allclose(vol.index_to_physical(ijk), expect_ras @ LPS_FROM_RAS.T, atol=1e-6)
    np.testing.assert_array_equal(vol.array, arr)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii.gz", ".nii"])
def test_write_read_round_trip_keeps_geometry_values_and_marker(tmp_path, geo, suffix):
    d = geo.rot("z", -17) @ geo.rot("x", 24)
    sp, origin = np.array([0.7, 0.8, 3.0]), np.array([12.0, -50.0, 300.0])
    marker = origin + d @ (sp * np.array([50.5, 45.1, 11.7]))
    vol = geo.volume((100, 95, 24), sp, origin, d, fn=geo.ball(marker), dtype=np.int16)
    back = read_volume(write_volume(vol, tmp_path / f"v{suffix}"))
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing, sp, atol=1e-5)
    np.testing.assert_allclose(back.origin, origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, d, atol=1e-5)
    assert back.source == str(tmp_path / f"v{suffix}")
    _marker_lands_at_centre(geo, back, marker)


def test_negative_mha_spacing_means_a_flipped_axis(tmp_path):
    """MetaIO's ElementSpacing -2 along y: ITK reads |spacing| with a flipped direction; the voxel
    positions must be those the header literally states (y decreases by 2 mm per row)."""
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = sitk.GetImageFromArray(arr)
    sitk.WriteImage(img, str(tmp_path / "a.mha"))
    data = (tmp_path / "a.mha").read_bytes()
    assert b"ElementSpacing = 1 1 1" in data
    (tmp_path / "neg.mha").write_bytes(data.replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 -2 1"))
    vol = read_volume(tmp_path / "neg.mha")
    assert np.all(vol.spacing > 0)
    np.testing.assert_allclose(vol.index_to_physical([[0, 3, 0], [2, 4, 1]]), [[0, -6, 0], [2, -8, 1]], atol=1e-9)


def test_4d_with_one_timepoint_reads_as_3d(tmp_path):
    data = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4, 1)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 2.0, 3.0, 1.0])), tmp_path / "t1.nii.gz")
    vol = read_volume(tmp_path / "t1.nii.gz")
    assert vol.array.shape == (4, 5, 6)
    np.testing.assert_array_equal(vol.array, data[..., 0].transpose(2, 1, 0))


# --------------------------------------------------------------------------- DICOM

def _dicom_geometry(direction, spacing, origin):
    return np.asarray(direction, float), np.asarray(spacing, float), np.asarray(origin, float)


def write_series_sitk(folder, arr_zyx, spacing, origin, direction, series_uid, study_uid="1.2.3.4",
                      names=None):
    """An independent DICOM writer: one 2D file per slice with IPP/IOP from the DICOM definition."""
    folder.mkdir(parents=True, exist_ok=True)
    d, sp, o = _dicom_geometry(direction, spacing, origin)
    iop = "\\".join(f"{v:.10f}" for v in (*d[:, 0], *d[:, 1]))   # row (i) then column (j) direction
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    for k in range(arr_zyx.shape[0]):
        sl = sitk.GetImageFromArray(arr_zyx[k].astype(np.int16))
        sl.SetSpacing((float(sp[0]), float(sp[1])))             # GDCM writes PixelSpacing from the image
        ipp = o + d[:, 2] * sp[2] * k                              # centre of the first voxel
        tags = {
            "0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}", "0020|000d": study_uid, "0020|000e": series_uid,
            "0020|0013": str(k + 1), "0020|0032": "\\".join(f"{v:.10f}" for v in ipp),
            "0020|0037": iop, "0028|0030": f"{sp[1]:.10f}\\{sp[0]:.10f}",
            "0018|0050": f"{sp[2]:.10f}", "0028|1052": "0", "0028|1053": "1",
        }
        for key, val in tags.items():
            sl.SetMetaData(key, val)
        p = folder / (names[k] if names else f"s{k:03d}.dcm")
        writer.SetFileName(str(p))
        writer.Execute(sl)
        paths.append(p)
    return paths


def _assert_same_geometry(vol, arr, sp, origin, d):
    np.testing.assert_allclose(vol.spacing, sp, atol=1e-4)
    np.testing.assert_allclose(vol.origin, origin, atol=1e-4)
    np.testing.assert_allclose(vol.direction, d, atol=1e-4)
    np.testing.assert_array_equal(vol.array, arr)


@pytest.mark.parametrize("oblique", [False, True], ids=["axial", "oblique"])
def test_dicom_written_by_library_round_trips(tmp_path, geo, oblique):
    d = geo.rot("x", 20) @ geo.rot("z", 27) if oblique else np.eye(3)
    sp, origin = np.array([0.7, 0.8, 3.0]), np.array([-120.5, 33.25, -400.0])
    arr = (np.arange(9 * 12 * 14).reshape(9, 12, 14) * 7 - 1000).astype(np.int16)
    vol = Volume(arr, sp, origin, d)
    folder = write_dicom_series(vol, tmp_path / "series")
    assert folder == tmp_path / "series"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]   # temporary folder renamed away
    back = read_volume(folder)
    _assert_same_geometry(back, arr, sp, origin, d)
    assert back.source == str(folder)


def test_dicom_left_handed_volume_keeps_every_voxel_at_its_physical_point(tmp_path, geo):
    """DICOM frames are right-handed (slice normal = row x column), so a volume stored with slices
    running inferior comes back re-stacked; every value must still sit at the same LPS point."""
    d = geo.rot("z", 10) @ np.diag([1.0, 1.0, -1.0])
    sp, origin = np.array([0.7, 0.8, 3.0]), np.array([1.0, 2.0, 3.0])
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    back = read_volume(write_dicom_series(Volume(arr, sp, origin, d), tmp_path / "lh"))
    np.testing.assert_allclose(np.linalg.det(back.direction), 1.0, atol=1e-6)
    np.testing.assert_allclose(back.spacing, sp, atol=1e-4)
    k, j, i = np.indices(arr.shape).reshape(3, -1)
    pts = origin + (np.c_[i, j, k] * sp) @ d.T
    q = np.stack([geo.lps_to_index(p, back.spacing, back.origin, back.direction) for p in pts])
    np.testing.assert_allclose(q, np.rint(q), atol=1e-4)
    q = np.rint(q).astype(int)
    np.testing.assert_array_equal(back.array[q[:, 2], q[:, 1], q[:, 0]], arr[k, j, i])


def test_dicom_writer_rounds_float_hu_to_nearest(tmp_path):
    hu = np.array([12.7, -12.7, 0.4, -0.6, 99.6, -99.4, 1500.2, -1000.0], np.float32).reshape(2, 2, 2)
    back = read_volume(write_dicom_series(Volume(hu, (1, 1, 1), (0, 0, 0)), tmp_path / "s"))
    np.testing.assert_array_equal(back.array, np.rint(hu))


@pytest.mark.parametrize("oblique", [False, True], ids=["axial", "oblique"])
def test_dicom_written_independently_reads_back_from_folder_and_shuffled_list(tmp_path, geo, oblique):
    d = geo.rot("y", -19) @ geo.rot("x", 26) if oblique else np.eye(3)
    sp, origin = np.array([0.75, 0.6, 2.5]), np.array([80.0, -10.0, 55.5])
    arr = (np.random.default_rng(3).integers(-1000, 1500, (11, 10, 13))).astype(np.int16)
    # File names that sort in an order unrelated to the slice position.
    names = [f"IM{n:04d}.dcm" for n in random.Random(5).sample(range(1000), 11)]
    paths = write_series_sitk(tmp_path / "dcm", arr, sp, origin, d, "1.2.826.0.1.99.1", names=names)

    _assert_same_geometry(read_volume(tmp_path / "dcm"), arr, sp, origin, d)
    shuffled = [str(p) for p in paths]
    random.Random(11).shuffle(shuffled)
    assert shuffled != [str(p) for p in paths]
    _assert_same_geometry(read_volume(shuffled), arr, sp, origin, d)


def test_dicom_folder_with_two_series_picks_largest_unless_uid_given(tmp_path):
    sp, origin, d = np.array([1.0, 1.0, 2.0]), np.zeros(3), np.eye(3)
    small = np.full((6, 8, 8), 100, np.int16)
    large = np.full((9, 8, 8), -300, np.int16)
    write_series_sitk(tmp_path / "mixed", small, sp, origin, d, "1.2.826.0.1.99.6", names=[f"a{k}.dcm" for k in range(6)])
    write_series_sitk(tmp_path / "mixed", large, sp, origin, d, "1.2.826.0.1.99.9", names=[f"b{k}.dcm" for k in range(9)])

    default = read_volume(tmp_path / "mixed")
    np.testing.assert_array_equal(default.array, large)
    chosen = read_volume(tmp_path / "mixed", series_uid="1.2.826.0.1.99.6")
    np.testing.assert_array_equal(chosen.array, small)
    with pytest.raises(UnreadableFileError) as exc:
        read_volume(tmp_path / "mixed", series_uid="9.9.9")
    assert str(tmp_path / "mixed") in str(exc.value)


def test_dicom_bad_inputs_name_the_file(tmp_path):
    (tmp_path / "notdicom").mkdir()
    (tmp_path / "notdicom" / "readme.txt").write_text("no images here\n", encoding="utf-8")
    with pytest.raises(UnreadableFileError) as exc:
        read_volume(tmp_path / "notdicom")
    assert str(tmp_path / "notdicom") in str(exc.value)

    paths = write_series_sitk(tmp_path / "dcm", np.zeros((3, 4, 4), np.int16), (1, 1, 1), (0, 0, 0), np.eye(3), "1.2.3.9")
    gone = tmp_path / "dcm" / "gone.dcm"
    with pytest.raises(MissingFileError) as exc:
        read_volume([*map(str, paths), str(gone)])
    assert str(gone) in str(exc.value)

    junk = tmp_path / "dcm" / "junk.dcm"
    junk.write_text("not a dicom file\n", encoding="utf-8")
    with pytest.raises(UnreadableFileError) as exc:
        read_volume([*map(str, paths), str(junk)])
    assert str(junk) in str(exc.value)

    with pytest.raises(MissingFileError):
        read_volume([])


# --------------------------------------------------------------------------- bad files

def _nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def _mha_with_spacing(tmp_path, spacing_text: bytes):
    img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
    sitk.WriteImage(img, str(tmp_path / "ok.mha"))
    data = (tmp_path / "ok.mha").read_bytes()
    assert b"ElementSpacing = 1 1 1" in data
    out = tmp_path / "zero_spacing.mha"
    out.write_bytes(data.replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = " + spacing_text))
    return out


def _truncated_nifti_gz(tmp_path):
    data = (np.random.default_rng(0).normal(size=(40, 40, 40)) * 100).astype(np.int16)
    full = _nifti(tmp_path / "full.nii.gz", data)
    raw = full.read_bytes()
    out = tmp_path / "truncated.nii.gz"
    out.write_bytes(raw[: len(raw) // 2])
    return out


def _truncated_nifti_raw(tmp_path):
    full = _nifti(tmp_path / "full.nii", np.ones((30, 30, 30), np.float32))
    raw = full.read_bytes()
    out = tmp_path / "truncated.nii"
    out.write_bytes(raw[: len(raw) // 2])
    return out


def _put(path, data: bytes):
    path.write_bytes(data)
    return path


def _nan_volume(kind):
    arr = np.zeros((6, 7, 8), np.float32)
    arr[2, 3, 4] = np.nan if kind == "nan" else np.inf
    return arr


BAD_FILES = {
    # name: (builder(tmp_path) -> path, expected error classes, words the message must contain)
    "missing": (lambda t: t / "no_such.nii.gz", MissingFileError, "not found"),
    "empty": (lambda t: _put(t / "empty.nii.gz", b""), UnreadableFileError, "empty"),
    "truncated-nii.gz": (_truncated_nifti_gz, UnreadableFileError, "truncated"),
    "truncated-nii": (_truncated_nifti_raw, UnreadableFileError, "truncated"),
    "text-as-nii": (lambda t: _put(t / "notes.nii", b"patient notes, not an image\n" * 20), UnreadableFileError, "cannot read"),
    "2d": (lambda t: _nifti(t / "flat.nii.gz", np.zeros((20, 30), np.float32)), InvalidImageError, "2D"),
    "single-slice": (lambda t: _nifti(t / "slice.nii.gz", np.zeros((20, 30, 1), np.float32)), InvalidImageError, "slice"),
    "4d": (lambda t: _nifti(t / "dynamic.nii.gz", np.zeros((6, 5, 4, 3), np.float32)), InvalidImageError, "4D"),
    # ITK refuses zero spacing while reading, so the reader's error (naming the spacing) is the
    # one that comes back; the validator's own spacing check is the second line of defence.
    "zero-spacing-mha": (lambda t: _mha_with_spacing(t, b"1 0 1"), (UnreadableFileError, InvalidImageError), "spacing"),
    "zero-spacing-nrrd": (lambda t: _write_nrrd(t / "zero.nrrd", np.zeros((4, 5, 6), np.float32), (1.0, 0.0, 1.0),
                                                (0, 0, 0), np.eye(3)) or t / "zero.nrrd",
                          (UnreadableFileError, InvalidImageError), "spacing"),
    "nan-nrrd": (lambda t: _write_nrrd(t / "nan.nrrd", _nan_volume("nan"), (1, 1, 1), (0, 0, 0), np.eye(3)) or t / "nan.nrrd",
                 InvalidImageError, "NaN"),
    "nan-nifti": (lambda t: _nifti(t / "nan.nii.gz", _nan_volume("nan").transpose(2, 1, 0)), InvalidImageError, "NaN"),
    "inf-nifti": (lambda t: _nifti(t / "inf.nii", _nan_volume("inf").transpose(2, 1, 0)), InvalidImageError, "infinite"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_raises_named_error(tmp_path, case):
    build, errors, words = BAD_FILES[case]
    path = build(tmp_path)
    with pytest.raises(RenalCLIPError) as exc:
        read_volume(path)
    assert isinstance(exc.value, errors), f"{case}: got {type(exc.value).__name__}: {exc.value}"
    msg = str(exc.value)
    assert msg.startswith(str(path) + ": "), msg
    assert words.lower() in msg.lower(), msg
    assert "\n" not in msg


def test_unsupported_output_format_is_rejected_and_leaves_nothing(tmp_path):
    vol = Volume(np.zeros((2, 2, 2), np.float32), (1, 1, 1), (0, 0, 0))
    with pytest.raises(UnreadableFileError) as exc:
        write_volume(vol, tmp_path / "out.png")
    assert "out.png" in str(exc.value)
    assert list(tmp_path.iterdir()) == []
