"""Read and write CT volumes with their exact physical geometry.

A ``Volume`` is a voxel array plus the geometry that places it in the patient: spacing, origin and
direction cosines, in ITK's LPS convention (x to patient Left, y to Posterior, z to Superior).
The array is indexed ``[k, j, i]`` (slice, row, column), as SimpleITK's numpy view; voxel
``(i, j, k)`` sits at ``origin + direction @ (spacing * (i, j, k))``. Slicer's RAS appears only at the
Slicer edge (the modules convert); everything in this library is LPS.

Usage::

    vol = read_volume("case_0001_A.nii.gz")      # or a DICOM folder, or a list of DICOM files
    write_volume(vol, "copy.nrrd")               # atomic: a temporary name, then a rename
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from .atomic import atomic_path
from .errors import InvalidImageError, MissingFileError, UnreadableFileError

PathLike = Union[str, os.PathLike]
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Volume:
    """A 3D scalar image in physical (LPS) space.

    ``array`` has shape (nz, ny, nx); ``spacing`` and ``origin`` are (x, y, z) in mm;
    ``direction`` is a 3x3 matrix whose column ``c`` is the LPS direction of index axis ``c``.
    ``source`` names the file it came from, for error messages.
    """

    array: np.ndarray
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    source: str | None = None

    def __post_init__(self):
        self.spacing = np.asarray(self.spacing, dtype=float).reshape(3)
        self.origin = np.asarray(self.origin, dtype=float).reshape(3)
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        """Number of voxels along index axes i, j, k."""
        nz, ny, nx = self.array.shape
        return nx, ny, nz

    def index_to_physical(self, ijk) -> np.ndarray:
        """LPS point(s) in mm of continuous index (i, j, k); accepts shape (3,) or (n, 3)."""
        ijk = np.asarray(ijk, dtype=float)
        return self.origin + (ijk * self.spacing) @ self.direction.T

    def physical_to_index(self, point_lps) -> np.ndarray:
        """Continuous index (i, j, k) of LPS point(s); accepts shape (3,) or (n, 3)."""
        p = np.asarray(point_lps, dtype=float) - self.origin
        return (p @ np.linalg.inv(self.direction).T) / self.spacing

    def contains(self, point_lps, margin_voxels: float = 0.5) -> bool:
        """Whether the point lies inside the scan's voxel extent (voxel centres +- half a voxel)."""
        ijk = self.physical_to_index(point_lps)
        hi = np.asarray(self.size_xyz, dtype=float) - 1 + margin_voxels
        return bool(np.all(ijk >= -margin_voxels) and np.all(ijk <= hi))

    def corners_physical(self) -> np.ndarray:
        """The 8 corner voxel centres in LPS, shape (8, 3)."""
        n = np.asarray(self.size_xyz) - 1
        corners = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])], float)
        return self.index_to_physical(corners)

    def with_array(self, array: np.ndarray) -> "Volume":
        """A volume on the same grid holding another array (same shape)."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} does not match the grid {self.array.shape}")
        return Volume(array, self.spacing.copy(), self.origin.copy(), self.direction.copy(), self.source)

    def to_sitk(self):
        """The equivalent SimpleITK image (shares no memory with the array)."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetSpacing(tuple(float(s) for s in self.spacing))
        img.SetOrigin(tuple(float(o) for o in self.origin))
        img.SetDirection(tuple(float(d) for d in self.direction.reshape(-1)))
        return img

    @classmethod
    def from_sitk(cls, img, source: str | None = None) -> "Volume":
        import SimpleITK as sitk

        return cls(
            sitk.GetArrayFromImage(img),
            np.array(img.GetSpacing()),
            np.array(img.GetOrigin()),
            np.array(img.GetDirection()).reshape(3, 3),
            source,
        )


def read_volume(path: PathLike | Sequence[PathLike], series_uid: str | None = None) -> Volume:
    """Read a 3D CT: NIfTI, NRRD, MHA/MHD file; a DICOM folder; or a list of DICOM files.

    For a folder the series with most slices is read unless ``series_uid`` names one. DICOM
    rescale slope/intercept are applied, so the array is in HU. Raises a ``RenalCLIPError``
    subclass naming the file for a missing, unreadable, non-3D or invalid image.
    """
    if isinstance(path, (list, tuple)):
        files = [os.fspath(p) for p in path]
        if not files:
            raise MissingFileError("<empty file list>", "no DICOM files given")
        for f in files:
            if not os.path.isfile(f):
                raise MissingFileError(f, "file not found")
        source = os.path.dirname(files[0]) or files[0]
        img = _read_dicom_files(files, source)
    else:
        source = os.fspath(path)
        if not os.path.exists(source):
            raise MissingFileError(source, "file not found")
        if os.path.isdir(source):
            img = _read_dicom_folder(source, series_uid)
        else:
            img = _read_image_file(source)
    vol = _validated(img, source)
    return vol


def _read_image_file(source: str):
    import SimpleITK as sitk

    if os.path.getsize(source) == 0:
        raise UnreadableFileError(source, "file is empty")
    if _suffix(source) in (".nii", ".nii.gz"):
        _check_nifti_payload(source)
    try:
        return sitk.ReadImage(source)
    except RuntimeError as exc:
        raise UnreadableFileError(source, f"cannot read image ({_first_reason(exc)})") from None


def _check_nifti_payload(source: str) -> None:
    """Check a NIfTI file's voxel data before ITK reads it.

    ITK's NIfTI reader accepts a file cut short (the missing voxels read as 0) and silently turns
    NaN and infinite float voxels into 0, so neither problem would be visible afterwards. Streams
    the (decompressed) payload once, in chunks, to count its bytes and non-finite values.
    """
    import gzip
    import zlib

    import nibabel as nib

    try:
        proxy = nib.load(source).dataobj
        offset, dtype = int(proxy.offset), np.dtype(proxy.dtype)
        nbytes = int(np.prod(proxy.shape, dtype=np.int64)) * dtype.itemsize
    except Exception:  # noqa: BLE001 - not a header nibabel understands: ITK reports the problem
        return
    check_finite = dtype.kind in "fc"
    chunk = max(dtype.itemsize, (1 << 24) // dtype.itemsize * dtype.itemsize)
    opener = gzip.open if source.lower().endswith(".gz") else open
    got = bad = 0
    try:
        with opener(source, "rb") as fh:
            fh.seek(offset)
            while got < nbytes:
                buf = fh.read(min(chunk, nbytes - got))
                if not buf:
                    break
                if check_finite:
                    vals = np.frombuffer(buf, dtype, count=len(buf) // dtype.itemsize)
                    bad += int(vals.size - np.count_nonzero(np.isfinite(vals)))
                got += len(buf)
    except (EOFError, OSError, zlib.error) as exc:
        raise UnreadableFileError(source, f"truncated or corrupt NIfTI ({exc})") from None
    if got < nbytes:
        raise UnreadableFileError(source, f"truncated NIfTI: expected {nbytes} bytes of voxel data, found {got}")
    if bad:
        raise InvalidImageError(source, f"{bad} voxels are NaN or infinite")


def _read_dicom_folder(folder: str, series_uid: str | None):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    # ITK prints "No Series were found" straight to stderr; that case is reported below instead.
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        uids = reader.GetGDCMSeriesIDs(folder) or ()
        counts = {u: len(reader.GetGDCMSeriesFileNames(folder, u)) for u in uids}
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    if not uids:
        raise UnreadableFileError(folder, "folder holds no DICOM series")
    if series_uid is not None:
        if series_uid not in uids:
            raise UnreadableFileError(folder, f"no DICOM series with SeriesInstanceUID {series_uid}")
        chosen = series_uid
    else:
        chosen = max(uids, key=counts.__getitem__)
    files = list(reader.GetGDCMSeriesFileNames(folder, chosen))
    return _read_dicom_files(files, folder, sort=False)


def _read_dicom_files(files: list[str], source: str, sort: bool = True):
    import SimpleITK as sitk

    if sort:
        files = _sort_dicom_files(files, source)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise UnreadableFileError(source, f"cannot read DICOM series ({_first_reason(exc)})") from None


def _sort_dicom_files(files: list[str], source: str) -> list[str]:
    """Order files along the slice normal (ImagePositionPatient projected on it)."""
    import SimpleITK as sitk

    keyed = []
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        try:
            r.ReadImageInformation()
        except RuntimeError as exc:
            raise UnreadableFileError(f, f"not a readable DICOM file ({_first_reason(exc)})") from None
        d = np.array(r.GetDirection()).reshape(3, 3)
        keyed.append((float(np.dot(np.array(r.GetOrigin()), d[:, 2])), f))
    keyed.sort()
    return [f for _, f in keyed]


def _first_reason(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "Description:" in ln:
            return ln.split("Description:", 1)[1].strip()
    return lines[-1] if lines else type(exc).__name__


def _validated(img, source: str) -> Volume:
    import SimpleITK as sitk

    dim = img.GetDimension()
    if dim == 4 and img.GetSize()[3] == 1:
        img = sitk.Extract(img, list(img.GetSize()[:3]) + [0], [0, 0, 0, 0])
        dim = 3
    if dim != 3:
        raise InvalidImageError(source, f"expected a 3D image, found a {dim}D image of size {img.GetSize()}")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidImageError(source, f"expected a scalar image, found {img.GetNumberOfComponentsPerPixel()} components per voxel")
    if min(img.GetSize()) < 2:
        raise InvalidImageError(source, f"expected a 3D image, found a single slice (size {img.GetSize()})")
    spacing = np.array(img.GetSpacing())
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InvalidImageError(source, f"voxel spacing must be positive, found {tuple(spacing.round(4))}")
    direction = np.array(img.GetDirection()).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or abs(abs(np.linalg.det(direction)) - 1) > 1e-3:
        raise InvalidImageError(source, "direction cosines are not an orthonormal matrix")
    vol = Volume.from_sitk(img, source)
    if np.issubdtype(vol.array.dtype, np.floating) and not np.all(np.isfinite(vol.array)):
        bad = int(np.size(vol.array) - np.count_nonzero(np.isfinite(vol.array)))
        raise InvalidImageError(source, f"{bad} voxels are NaN or infinite")
    return vol


def _suffix(path: str) -> str:
    name = path.lower()
    for s in IMAGE_SUFFIXES:
        if name.endswith(s):
            return s
    return ""


def write_volume(volume: Volume, path: PathLike, compress: bool = True) -> Path:
    """Write a NIfTI, NRRD or MHA file atomically (temporary name in the same folder, then rename)."""
    import SimpleITK as sitk

    path = Path(path)
    suffix = _suffix(str(path))
    if suffix not in (".nii", ".nii.gz", ".nrrd", ".mha"):
        raise UnreadableFileError(str(path), "unsupported output format (use .nii.gz, .nii, .nrrd or .mha)")
    with atomic_path(path, suffix) as tmp:
        sitk.WriteImage(volume.to_sitk(), tmp, compress and suffix != ".nii")
    return path


def write_dicom_series(volume: Volume, folder: PathLike, series_description: str = "RenalCLIP",
                       series_uid: str | None = None, study_uid: str | None = None,
                       patient_id: str | None = None) -> Path:
    """Write an int16 CT DICOM series (one file per slice, values in HU, slope 1, intercept 0) atomically.

    The folder is built under a temporary name and renamed into place, so a reader never sees half a
    series. Geometry (spacing, origin, oblique direction cosines) round-trips through ``read_volume``.
    """
    import SimpleITK as sitk
    import time

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    img = volume.to_sitk()
    # Round to the nearest HU (a plain cast would truncate towards zero, biasing every value).
    img = sitk.Cast(sitk.Round(sitk.Clamp(sitk.Cast(img, sitk.sitkFloat64), lowerBound=-1024, upperBound=31743)),
                    sitk.sitkInt16)
    d = volume.direction
    uid_root = "1.2.826.0.1.3680043.2.1125." + time.strftime("%Y%m%d%H%M%S")
    series_uid = series_uid or f"{uid_root}.{os.getpid()}.{id(volume) % 100000}.1"
    study_uid = study_uid or f"{uid_root}.{os.getpid()}.2"
    orientation = "\\".join(f"{v:.10g}" for v in (*d[:, 0], *d[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    try:
        for k in range(img.GetDepth()):
            sl = img[:, :, k]
            pos = volume.index_to_physical([0, 0, k])
            tags = {
                "0008|0060": "CT",
                "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
                "0008|0018": f"{series_uid}.{k + 1}",
                "0020|000d": study_uid,
                "0020|000e": series_uid,
                "0008|103e": series_description,
                "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{v:.10g}" for v in pos),
                "0020|0037": orientation,
                "0018|0050": f"{volume.spacing[2]:.10g}",
                "0028|0030": f"{volume.spacing[1]:.10g}\\{volume.spacing[0]:.10g}",
                "0028|1052": "0",
                "0028|1053": "1",
            }
            if patient_id is not None:
                tags["0010|0020"] = patient_id
            for key, value in tags.items():
                sl.SetMetaData(key, value)
            writer.SetFileName(str(tmpdir / f"slice_{k:04d}.dcm"))
            writer.Execute(sl)
        if folder.exists():
            raise FileExistsError(f"{folder} already exists")
        os.replace(tmpdir, folder)
    finally:
        if tmpdir.exists():
            import shutil

            shutil.rmtree(tmpdir, ignore_errors=True)
    return folder
