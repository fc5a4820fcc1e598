"""Errors for bad input: each carries one line that names the file and the problem.

The command line prints that line and exits with ``EXIT_BAD_INPUT``; the Slicer modules show it in
the status bar. Anything else that escapes is a bug and exits with ``EXIT_INTERNAL``.

Usage: ``raise UnreadableFileError(path, "truncated NIfTI (expected 8 MB, found 2 MB)")``
"""
from __future__ import annotations

import os

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2


class RenalCLIPError(Exception):
    """Base class: a problem with the user's input, reported as ``<file>: <problem>``."""

    def __init__(self, source, problem: str):
        self.source = None if source is None else os.fspath(source) if not isinstance(source, str) else source
        self.problem = " ".join(str(problem).split())
        super().__init__(self.problem if self.source is None else f"{self.source}: {self.problem}")


class MissingFileError(RenalCLIPError):
    """The path does not exist."""


class UnreadableFileError(RenalCLIPError):
    """The file exists but cannot be read as an image (unknown format, truncated, corrupt)."""


class InvalidImageError(RenalCLIPError):
    """The image was read but cannot be used: not 3D, multi-component, bad spacing, NaN voxels."""


class CenterOutsideScanError(RenalCLIPError):
    """A requested ROI centre lies outside the physical extent of the scan."""


class PhaseOverlapError(RenalCLIPError):
    """Two phases of one study do not overlap in physical space."""


class EmptySegmentationError(RenalCLIPError):
    """A label map holds no voxel of the labels asked for."""


class ManifestError(RenalCLIPError):
    """A cohort manifest (CSV) is malformed: missing column, bad value, missing file in a row."""


class ConfigError(RenalCLIPError):
    """A configuration file has unknown keys, wrong types or names missing files."""
