"""Turn a simulated case into voxels: one int16 HU image and one uint8 label map per phase.

Each phase has its own grid (spacing, origin, extent) and its own rigid misregistration shift.
The z-invariant trunk (table, skin, fat, abdominal wall, colon) is painted once as a 2D slice and
broadcast; every other shape is painted only inside its bounding box with a one-voxel
partial-volume edge (``shapes.paint``). The scanner's calibration offset is added, then
correlated noise: a small bank of smoothed Gaussian noise slices (the reconstruction kernel's
texture), each output slice taking a randomly chosen and shifted window of the bank, scaled to
the patient's noise level. Labels: 1 kidney, 2 tumour (mass and tumour thrombus), 3 cyst.

Usage::

    hu, lab = render_phase(case, "A")      # int16 (nz, ny, nx), uint8 (nz, ny, nx)
"""
from __future__ import annotations

import numpy as np

from .shapes import F32, Grid, paint

HU_MIN, HU_MAX = -1024, 3071
NOISE_BANK_SLICES = 24
NOISE_PAD = 32


def _value(layer, tissue_hu: dict, phase: str):
    if layer.hu is not None:
        return layer.hu[phase]
    return tissue_hu[layer.tissue][phase]


def _texture(layer, phase: str):
    if layer.texture is None or not layer.texture_hu:
        return None
    amp = float(layer.texture_hu.get(phase, 0.0))
    if amp <= 0:
        return None
    field_ = layer.texture
    return lambda xs, ys, zs: field_(xs, ys, zs) * F32(amp)


def noise_bank(rng: np.random.Generator, ny: int, nx: int, kernel_sigma_px: float) -> np.ndarray:
    """Unit-variance, in-plane correlated noise slices (n, ny + pad, nx + pad), float32."""
    from scipy.ndimage import gaussian_filter

    bank = rng.standard_normal((NOISE_BANK_SLICES, ny + NOISE_PAD, nx + NOISE_PAD), dtype=np.float32)
    if kernel_sigma_px > 0:
        bank = gaussian_filter(bank, sigma=(0, kernel_sigma_px, kernel_sigma_px), mode="wrap")
    bank /= F32(bank.std())
    return bank


def render_phase(case, phase: str, bank: np.ndarray | None = None, rng: np.random.Generator | None = None):
    """HU image (int16) and label map (uint8) of ``phase`` of a ``SimulatedCase`` on its own grid."""
    grid: Grid = case.grids[phase]
    nz, ny, nx = grid.shape_zyx
    tissue_hu = case.tissue_hu
    layers = case.layers()

    template = np.full((1, ny, nx), F32(-1000.0), dtype=np.float32)
    tgrid = Grid(grid.origin, grid.spacing, (1, ny, nx), grid.shift)
    for layer in layers:
        if layer.in_template:
            paint(template, tgrid, layer.shape, _value(layer, tissue_hu, phase))
    hu = np.empty((nz, ny, nx), np.float32)
    hu[:] = template
    labels = np.zeros((nz, ny, nx), np.uint8)
    for layer in layers:
        if layer.in_template:
            continue
        paint(hu, grid, layer.shape, _value(layer, tissue_hu, phase), labels=labels, label=layer.label,
              clip_to=layer.clip_to, texture=_texture(layer, phase))

    if case.hu_offset:
        hu += F32(case.hu_offset)
    if rng is None:
        rng = np.random.default_rng(case.noise_seed + (1 + "NAVD".index(phase)))
    if bank is None:
        bank = noise_bank(rng, ny, nx, case.kernel_sigma_px)
    sd = F32(case.noise_sd[phase])
    picks = rng.integers(0, bank.shape[0], nz)
    offs = rng.integers(0, NOISE_PAD + 1, (nz, 2))
    for k in range(nz):
        oy, ox = offs[k]
        hu[k] += bank[picks[k], oy:oy + ny, ox:ox + nx] * sd
    np.rint(hu, out=hu)
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    return hu.astype(np.int16), labels
