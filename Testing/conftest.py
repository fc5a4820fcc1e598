"""Shared helpers for the CT geometry tests (io, preprocess, ``renalclip roi``).

Everything here builds small synthetic volumes from first principles, independently of the code
under test: a voxel ``(i, j, k)`` of a grid sits at ``origin + direction @ (spacing * (i, j, k))``
(LPS mm, the documented convention), and the array is stored ``[k, j, i]``.

The ``geo`` fixture exposes the helpers as attributes::

    def test_something(geo):
        vol = geo.volume((40, 40, 20), (1, 1, 2.5), origin=(0, 0, 0), direction=geo.rot("x", 20),
                         fn=geo.ball(center=(10, 5, 20), radius=5))
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from renalclip_lib.io import Volume

# Where the requested centre lands in the ROI array, (z, y, x): midway between voxels 15/16 in z
# and 69/70 in y and x (the ROI is 32 x 140 x 140 with voxel centres at centre + (idx - (n-1)/2) * sp).
ROI_CENTRE_ZYX = np.array([15.5, 69.5, 69.5])
ROI_SHAPE_ZYX = (32, 140, 140)
ROI_SPACING_XYZ = np.array([1.0, 1.0, 5.0])


def rot(axis: str, degrees: float) -> np.ndarray:
    """Right-handed rotation matrix about a patient axis 'x', 'y' or 'z'."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    raise ValueError(axis)


def grid_points(shape_xyz, spacing, origin, direction=np.eye(3)) -> np.ndarray:
    """LPS points of every voxel centre, shape (nz, ny, nx, 3), from the documented convention."""
    nx, ny, nz = (int(n) for n in shape_xyz)
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).astype(float) * np.asarray(spacing, float)
    return np.asarray(origin, float) + ijk @ np.asarray(direction, float).T


def volume(shape_xyz, spacing, origin=(0.0, 0.0, 0.0), direction=np.eye(3), fn=None, fill=0.0,
           dtype=np.float32, source=None) -> Volume:
    """A Volume whose voxel (i, j, k) holds ``fn(point_lps)`` (vectorised over (..., 3)) or ``fill``."""
    nx, ny, nz = (int(n) for n in shape_xyz)
    if fn is None:
        arr = np.full((nz, ny, nx), fill, dtype)
    else:
        arr = np.asarray(fn(grid_points(shape_xyz, spacing, origin, direction)), dtype)
    return Volume(arr, np.asarray(spacing, float), np.asarray(origin, float), np.asarray(direction, float), source)


def ball(center, radius=5.0, inside=1000.0, outside=-100.0):
    """A bright ball with a one-millimetre linear edge (partial volume), so its centroid is sharp."""
    center = np.asarray(center, float)

    def f(p):
        r = np.linalg.norm(p - center, axis=-1)
        frac = np.clip(radius + 0.5 - r, 0.0, 1.0)
        return outside + (inside - outside) * frac

    return f


def ramp(a=(2.0, -3.0, 1.5), b=25.0):
    """A linear intensity f(p) = a . p + b of the LPS point p (mm)."""
    a = np.asarray(a, float)
    return lambda p: p @ a + b


def centroid(arr, background=-100.0) -> np.ndarray:
    """Intensity-weighted centroid (z, y, x) of what is brighter than ``background``."""
    w = np.clip(np.asarray(arr, float) - background, 0.0, None)
    idx = np.indices(w.shape).reshape(3, -1).astype(float)
    return (idx * w.reshape(-1)).sum(axis=1) / w.sum()


def roi_points(center_lps) -> np.ndarray:
    """LPS points of the ROI voxel centres, (32, 140, 140, 3), from the published definition."""
    nz, ny, nx = ROI_SHAPE_ZYX
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([i, j, k], axis=-1).astype(float)
    n = np.array([nx, ny, nz], float)
    return np.asarray(center_lps, float) + (idx - (n - 1) / 2.0) * ROI_SPACING_XYZ


def lps_to_index(point, spacing, origin, direction=np.eye(3)) -> np.ndarray:
    """Continuous (i, j, k) of an LPS point on a grid (solves the convention; no library code)."""
    return np.linalg.solve(np.asarray(direction, float), np.asarray(point, float) - np.asarray(origin, float)) / np.asarray(spacing, float)


@pytest.fixture(scope="session")
def geo() -> SimpleNamespace:
    return SimpleNamespace(rot=rot, grid_points=grid_points, volume=volume, ball=ball, ramp=ramp,
                           centroid=centroid, roi_points=roi_points, lps_to_index=lps_to_index,
                           ROI_CENTRE_ZYX=ROI_CENTRE_ZYX, ROI_SHAPE_ZYX=ROI_SHAPE_ZYX)


@pytest.fixture(scope="session")
def memorise():
    """``memorise(tokenizer, reports, steps) -> (generator, last loss)``: a tiny ReportGenerator
    (one-layer Mistral, 4-d features, 2 image tokens) trained to write ``reports`` from zero
    features, one sample per report, so a report listed twice is twice as likely. For the decoding
    tests, whose expectation is the memorised text itself."""
    def fit(tok, reports, steps):
        import torch

        from renalclip_lib.models.report_generator import ReportGenerator
        from renalclip_lib.models.tiny_mistral import build_mistral, tiny_mistral_config

        torch.manual_seed(0)
        llm = build_mistral(tiny_mistral_config(hidden_size=48, num_layers=1, num_heads=2, num_kv_heads=1,
                                                intermediate_size=96), seed=0)
        gen = ReportGenerator(llm, tok, 4, n_image_tokens=2, max_report_tokens=64)
        feats = torch.zeros(len(reports), 4)
        opt = torch.optim.AdamW(gen.parameters(), lr=1e-2)
        for _ in range(steps):
            opt.zero_grad()
            loss = gen(feats, list(reports))
            loss.backward()
            opt.step()
        return gen, loss.item()
    return fit
