"""``renalclip roi``: good input writes the ROI and the tensor; bad input exits 2 with one line.

Called in-process through ``renalclip_lib.cli.main`` (with file-descriptor capture, so messages
printed by ITK's C++ code would be seen too) and once each way through the installed script.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from renalclip_lib import cli

MARKER_LPS = np.array([12.0, -20.0, 35.0])


def _script() -> list[str]:
    exe = Path(sys.executable).parent / "renalclip"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "renalclip_lib.cli"]


@pytest.fixture(scope="module")
def good_ct(tmp_path_factory, geo) -> Path:
    """A small oblique CT (NIfTI) with a 1000 HU ball at MARKER_LPS on a -100 HU body."""
    d = geo.rot("z", 15) @ geo.rot("x", -20)
    sp, shape = np.array([2.0, 2.0, 4.0]), (70, 70, 40)
    origin = MARKER_LPS - d @ (sp * np.array([34.6, 35.2, 19.7]))
    vol = geo.volume(shape, sp, origin, d, fn=geo.ball(MARKER_LPS, radius=6.0), dtype=np.int16)
    from renalclip_lib.io import write_volume

    return write_volume(vol, tmp_path_factory.mktemp("ct") / "ct.nii.gz")


def _roi_args(image, out_dir, centre=MARKER_LPS, out_name="roi.nii.gz"):
    return ["roi", str(image), "--center-lps", *(f"{c:g}" for c in centre),
            "--out", str(out_dir / out_name), "--tensor", str(out_dir / "roi.npy")]


def _check_good_outputs(out_dir: Path, stdout: str, geo):
    assert sorted(os.listdir(out_dir)) == ["roi.nii.gz", "roi.npy"]      # nothing temporary left
    summary = json.loads(stdout)
    assert summary["shape_zyx"] == [32, 140, 140]
    roi = nib.load(out_dir / "roi.nii.gz")
    assert roi.shape == (140, 140, 32)
    np.testing.assert_allclose(roi.header.get_zooms(), (1.0, 1.0, 5.0))
    # The marker sits at the ROI centre (nibabel order is (i, j, k); centroid wants (z, y, x)).
    data = np.asarray(roi.dataobj, float).transpose(2, 1, 0)
    np.testing.assert_allclose(geo.centroid(data), geo.ROI_CENTRE_ZYX, atol=0.3)
    # The ROI centre in physical space: nibabel's RAS affine, converted to LPS, is the marker.
    ras = roi.affine @ np.array([69.5, 69.5, 15.5, 1.0])
    np.testing.assert_allclose(np.diag([-1.0, -1.0, 1.0]) @ ras[:3], MARKER_LPS, atol=1e-3)
    tensor = np.load(out_dir / "roi.npy")
    assert tensor.shape == (1, 32, 128, 128) and tensor.dtype == np.float32
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0
    # The tensor is the windowed centre crop of the ROI in (z, x, y) order.
    expect = np.clip((data[:, 6:134, 6:134] + 200.0) / 500.0, 0.0, 1.0).transpose(0, 2, 1)
    np.testing.assert_allclose(tensor[0], expect, atol=1e-5)


def test_roi_in_process_good_input(tmp_path, capfd, good_ct, geo):
    out_dir = tmp_path / "out"
    rc = cli.main(_roi_args(good_ct, out_dir))
    captured = capfd.readouterr()
    assert rc == 0, captured.err
    assert captured.err == ""
    _check_good_outputs(out_dir, captured.out, geo)


def test_roi_script_good_input(tmp_path, good_ct, geo):
    out_dir = tmp_path / "out"
    proc = subprocess.run(_script() + _roi_args(good_ct, out_dir), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    _check_good_outputs(out_dir, proc.stdout, geo)


# --------------------------------------------------------------------------- bad input

def _put(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _nifti(path: Path, data) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4)), path)
    return path


def _truncated(t: Path) -> Path:
    full = _nifti(t / "full.nii.gz", (np.random.default_rng(0).normal(size=(40, 40, 40)) * 100).astype(np.int16))
    raw = full.read_bytes()
    return _put(t / "cut.nii.gz", raw[: len(raw) // 2])


def _zero_spacing_mha(t: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16)), str(t / "ok.mha"))
    data = (t / "ok.mha").read_bytes()
    return _put(t / "zero.mha", data.replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 0 1"))


def _nan_nrrd(t: Path) -> Path:
    arr = np.zeros((6, 7, 8), "<f4")
    arr[3, 3, 3] = np.nan
    header = (b"NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 8 7 6\n"
              b"space directions: (1,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\nendian: little\n"
              b"encoding: raw\nspace origin: (0,0,0)\n\n")
    return _put(t / "nan.nrrd", header + arr.tobytes())


def _nan_nifti(t: Path) -> Path:
    arr = np.zeros((8, 7, 6), np.float32)
    arr[2, 2, 2] = np.nan
    return _nifti(t / "nan.nii.gz", arr)


def _no_dicom_folder(t: Path) -> Path:
    (t / "dicom").mkdir()
    (t / "dicom" / "notes.txt").write_text("nothing here\n", encoding="utf-8")
    return t / "dicom"


BAD_INPUTS = {
    # name: builder(tmp) -> image path
    "missing": lambda t: t / "absent.nii.gz",
    "empty": lambda t: _put(t / "empty.nii.gz", b""),
    "truncated-nifti": _truncated,
    "text-as-nifti": lambda t: _put(t / "report.nii", b"this is a radiology report, not a CT\n" * 30),
    "2d": lambda t: _nifti(t / "flat.nii.gz", np.zeros((30, 20), np.float32)),
    "4d": lambda t: _nifti(t / "dyn.nii.gz", np.zeros((8, 7, 6, 2), np.float32)),
    "zero-spacing": _zero_spacing_mha,
    "nan-nrrd": _nan_nrrd,
    "nan-nifti": _nan_nifti,
    "no-dicom-series": _no_dicom_folder,
}


def _assert_one_error_line(err: str, name: str):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("renalclip: error:"), err
    assert name in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_roi_bad_input_exits_2_with_one_line(tmp_path, capfd, case):
    (tmp_path / "in").mkdir()
    image = BAD_INPUTS[case](tmp_path / "in")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc = cli.main(_roi_args(image, out_dir, centre=(0.0, 0.0, 0.0)))
    captured = capfd.readouterr()
    assert rc == 2
    _assert_one_error_line(captured.err, str(image))
    assert captured.out == ""
    assert os.listdir(out_dir) == []


def test_roi_centre_outside_scan_exits_2(tmp_path, capfd, good_ct):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc = cli.main(_roi_args(good_ct, out_dir, centre=MARKER_LPS + np.array([0.0, 0.0, 500.0])))
    captured = capfd.readouterr()
    assert rc == 2
    _assert_one_error_line(captured.err, str(good_ct))
    assert "outside" in captured.err
    assert os.listdir(out_dir) == []


def test_roi_unsupported_output_format_exits_2(tmp_path, capfd, good_ct):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc = cli.main(_roi_args(good_ct, out_dir, out_name="roi.png"))
    captured = capfd.readouterr()
    assert rc == 2
    _assert_one_error_line(captured.err, str(out_dir / "roi.png"))
    assert os.listdir(out_dir) == []


def test_roi_script_bad_input(tmp_path):
    image = _truncated(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.run(_script() + _roi_args(image, out_dir), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    _assert_one_error_line(proc.stderr, str(image))
    assert proc.stdout == ""
    assert os.listdir(out_dir) == []
