"""Training augmentation of the paper's Supplementary Data Table 40, with MONAI transforms.

Applied to a windowed ROI (values in [0, 1], array (z, y, x) = 32 x 140 x 140), in the table's
order: translation along x and y (+-10 voxels), rotation about x, y and z (+-pi/10), scaling along
x and y (0.9-1.1) as one random affine; random 128 x 128 crop; horizontal flip along x (p 0.5,
fine-tuning only: pre-training keeps left and right); intensity scaling (0.9-1.1), intensity
shift (+-0.1), gamma contrast (0.5-2.0, p 0.5). The result is the network's (1, 32, 128, 128)
tensor in (z, x, y) order, like ``preprocess.to_model_input``.

``rotate="z"`` keeps the rotation to the axial plane. On the 1 x 1 x 5 mm grid the table's
rotations about x and y act on voxel indices, as MONAI applies them: a shear of up to 20 slices at
the edge of the crop, which slows a short CPU training most (the demo config turns them off).

Two implementations of the same table:

- ``TrainAugment``: MONAI's random transforms, one ROI at a time, in the DataLoader workers (CPU);
- ``DeviceAugment``: the workers only draw each ROI's parameters; the training loop applies them to
  the whole batch on the training device in one resampling (MONAI's affine matrices, torch
  ``grid_sample`` exactly as MONAI's ``Resample`` calls it). ``train_augment`` picks this one by
  default: on a GPU the per-ROI affine in CPU workers is the bottleneck (about 60 ms per ROI per
  core), and on a 2-core CPU MONAI in the workers takes the network's cores (the batched one costs
  about 5 ms per ROI with the axial rotation, 18 ms with Table 40's three axes, on 2 cores).

Usage::

    aug = TrainAugment(flip=True, seed=0)
    x = aug(roi_hu)          # np (32, 140, 140) HU -> torch (1, 32, 128, 128)

    dev = DeviceAugment(flip=True)
    p = dev.draw(np.random.default_rng(0))                     # (14,) parameters of one ROI
    x = dev(torch.as_tensor(roi_hu)[None, None], torch.as_tensor(p)[None])   # (1, 1, 32, 128, 128)
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..constants import AUGMENT_ON, AUGMENT_ROTATE, CROP_SHAPE_XYZ, ROI_SHAPE_XYZ
from ..preprocess.roi import window, window_torch

ROTATE_RANGE = math.pi / 10          # about each of z, y and x
TRANSLATE_RANGE = (0.0, 10.0, 10.0)  # voxels along z, y, x
SCALE_RANGE = (0.0, 0.1, 0.1)        # scale 1 +- this along z, y, x
INTENSITY_SCALE, INTENSITY_SHIFT = 0.1, 0.1
GAMMA_RANGE, GAMMA_PROB, FLIP_PROB = (0.5, 2.0), 0.5, 0.5


def rotate_ranges(rotate: str) -> tuple:
    """Rotation ranges about the (z, y, x) axes of the ROI for ``rotate`` ("xyz" or "z")."""
    if rotate not in AUGMENT_ROTATE:
        raise ValueError(f"rotate must be one of {AUGMENT_ROTATE}, not {rotate!r}")
    return tuple(ROTATE_RANGE if axis in rotate else 0.0 for axis in "zyx")


class TrainAugment:
    def __init__(self, flip: bool, seed: int | None = None, affine: bool = True, intensity: bool = True,
                 rotate: str = "xyz"):
        from monai.transforms import (Compose, RandAdjustContrast, RandAffine, RandFlip, RandScaleIntensity,
                                      RandShiftIntensity, RandSpatialCrop)

        cx, cy, cz = CROP_SHAPE_XYZ
        spatial = []
        if affine:
            # Spatial dims of the (1, z, y, x) tensor are (z, y, x).
            spatial.append(RandAffine(prob=1.0, rotate_range=rotate_ranges(rotate), translate_range=TRANSLATE_RANGE,
                                      scale_range=SCALE_RANGE, mode="bilinear", padding_mode="zeros"))
        spatial.append(RandSpatialCrop((cz, cy, cx), random_size=False))
        if flip:
            spatial.append(RandFlip(prob=FLIP_PROB, spatial_axis=2))
        inten = [RandScaleIntensity(factors=INTENSITY_SCALE, prob=1.0), RandShiftIntensity(offsets=INTENSITY_SHIFT, prob=1.0),
                 RandAdjustContrast(prob=GAMMA_PROB, gamma=GAMMA_RANGE)] if intensity else []
        self.transform = Compose(spatial + inten)
        if seed is not None:
            self.transform.set_random_state(seed=seed)

    def set_seed(self, seed: int) -> None:
        self.transform.set_random_state(seed=seed)

    def __call__(self, roi_hu: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(window(roi_hu)[None], dtype=torch.float32)
        x = self.transform(x)
        x = torch.as_tensor(x).float()
        return x.permute(0, 1, 3, 2).contiguous()


class DeviceAugment:
    """Table 40 on a whole batch on the training device, from parameters drawn per ROI in the workers.

    The parameters of one ROI (``draw``) are 14 numbers: rotation about z, y, x; translation along
    y, x; scale along y, x; crop start in y, x; flip; intensity factor; intensity offset; gamma on;
    gamma. ``__call__`` applies them in the table's order (window, affine, crop, flip, intensity
    scale, shift, gamma contrast) with MONAI's conventions: the affine is MONAI's rotate @ translate @
    scale on the centred voxel grid, resampled by ``grid_sample`` (trilinear, zero padding,
    ``align_corners=False``) as MONAI's ``Resample`` does; the contrast is MONAI's ``AdjustContrast``.
    """

    on_device = True
    n_params = 14

    def __init__(self, flip: bool, affine: bool = True, intensity: bool = True, rotate: str = "xyz"):
        self.flip, self.affine, self.intensity = flip, affine, intensity
        self.rotate_ranges = np.asarray(rotate_ranges(rotate), np.float32)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """The parameters of one ROI, from ``rng`` (the dataset's per-item stream)."""
        (cx, cy, _), (rx, ry, _) = CROP_SHAPE_XYZ, ROI_SHAPE_XYZ
        p = np.zeros(self.n_params, np.float32)
        p[5:7] = 1.0
        if self.affine:
            p[0:3] = rng.uniform(-1.0, 1.0, 3) * self.rotate_ranges
            p[3:5] = [rng.uniform(-t, t) for t in TRANSLATE_RANGE[1:]]
            p[5:7] = [1.0 + rng.uniform(-s, s) for s in SCALE_RANGE[1:]]
        p[7] = rng.integers(0, ry - cy + 1)
        p[8] = rng.integers(0, rx - cx + 1)
        if self.flip:
            p[9] = rng.uniform() < FLIP_PROB
        if self.intensity:
            p[10] = rng.uniform(-INTENSITY_SCALE, INTENSITY_SCALE)
            p[11] = rng.uniform(-INTENSITY_SHIFT, INTENSITY_SHIFT)
            p[12] = rng.uniform() < GAMMA_PROB
            p[13] = rng.uniform(*GAMMA_RANGE)
        return p

    @staticmethod
    def matrices(params: torch.Tensor) -> torch.Tensor:
        """MONAI's 4 x 4 affines (rotate @ translate @ scale, z-y-x axes) of a batch of parameters,
        (B, 14) -> (B, 4, 4) float64: ``create_rotate(3, p[0:3]) @ create_translate(3, (0, p[3], p[4]))
        @ create_scale(3, (1, p[5], p[6]))`` for every ROI at once."""
        p = params.double()
        b = p.shape[0]
        eye = torch.eye(4, dtype=p.dtype, device=p.device).expand(b, 4, 4)
        out = eye.clone()
        for axis, a in zip("xyz", p[:, 0:3].unbind(1)):    # MONAI's intrinsic "XYZ" order
            c, s = torch.cos(a), torch.sin(a)
            r = eye.clone()
            (i, j), sign = {"x": ((1, 2), 1.0), "y": ((0, 2), -1.0), "z": ((0, 1), 1.0)}[axis]
            r[:, i, i], r[:, j, j] = c, c
            r[:, i, j], r[:, j, i] = -sign * s, sign * s
            out = out @ r
        translate_scale = eye.clone()
        translate_scale[:, 1, 1], translate_scale[:, 2, 2] = p[:, 5], p[:, 6]
        translate_scale[:, 1, 3], translate_scale[:, 2, 3] = p[:, 3], p[:, 4]
        return out @ translate_scale

    def sampling_affines(self, params: torch.Tensor, shape_zyx: tuple) -> torch.Tensor:
        """(B, 14) parameters -> (B, 3, 4) ``affine_grid`` matrices that resample the windowed ROI of
        ``shape_zyx`` straight into the network's cropped, flipped (z, x, y) grid.

        Composes, per ROI, normalised output position -> centred voxel of the crop (crop offset,
        flip, the (z, x, y) order) -> MONAI's affine -> normalised input position. For one output
        voxel this is the coordinate MONAI's ``Resample`` would sample, without building the grid
        in voxel units first."""
        nz, ny, nx = shape_zyx
        cx, cy, _ = CROP_SHAPE_XYZ
        p = params.double()
        b = p.shape[0]
        out_to_centred = torch.zeros(b, 4, 4, dtype=p.dtype, device=p.device)   # columns: (y, x, z) of the output, 1
        out_to_centred[:, 0, 2] = nz / 2.0
        out_to_centred[:, 1, 0] = cy / 2.0
        out_to_centred[:, 1, 3] = (cy - ny) / 2.0 + p[:, 7].floor()
        out_to_centred[:, 2, 1] = torch.where(p[:, 9] > 0.5, -1.0, 1.0) * (cx / 2.0)
        out_to_centred[:, 2, 3] = (cx - nx) / 2.0 + p[:, 8].floor()
        out_to_centred[:, 3, 3] = 1.0
        centred_to_input = torch.zeros(3, 4, dtype=p.dtype, device=p.device)     # rows: x, y, z of the input
        centred_to_input[0, 2], centred_to_input[1, 1], centred_to_input[2, 0] = 2.0 / nx, 2.0 / ny, 2.0 / nz
        return (centred_to_input @ self.matrices(p) @ out_to_centred).float()

    def __call__(self, hu: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """(B, 1, 32, 140, 140) HU (any dtype) and (B, 14) parameters -> (B, 1, 32, 128, 128) in (z, x, y).

        With the rotation kept to the axial plane every slice stays on its own z, so the slices are
        resampled as channels of one bilinear 2D ``grid_sample`` (the same values as the trilinear
        3D one, at about a tenth of its cost on a CPU)."""
        x = window_torch(hu)
        b, _, nz, ny, nx = x.shape
        cx, cy, _ = CROP_SHAPE_XYZ
        theta = self.sampling_affines(params.detach().to(x.device), (nz, ny, nx))
        sample = dict(mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.rotate_ranges[1:].any():
            grid = torch.nn.functional.affine_grid(theta, [b, 1, nz, cx, cy], align_corners=False)
            out = torch.nn.functional.grid_sample(x, grid, **sample)
        else:
            grid = torch.nn.functional.affine_grid(theta[:, :2, [0, 1, 3]], [b, nz, cx, cy], align_corners=False)
            out = torch.nn.functional.grid_sample(x[:, 0], grid, **sample)[:, None]
        shape = (b, 1, 1, 1, 1)
        p = params.to(x.device).float()
        out = out.mul_(1.0 + p[:, 10].reshape(shape)).add_(p[:, 11].reshape(shape))
        if self.intensity:      # for every ROI, kept where drawn: no wait for the GPU to decide
            lo = out.amin(dim=(1, 2, 3, 4), keepdim=True)
            span = out.amax(dim=(1, 2, 3, 4), keepdim=True) - lo
            adjusted = ((out - lo) / (span + 1e-7)) ** p[:, 13].reshape(shape) * span + lo
            out = torch.where((p[:, 12] > 0.5).reshape(shape), adjusted, out)
        return out

    def apply_batch(self, batch: dict, device: torch.device) -> dict:
        """The loader's batch with ``image`` augmented on ``device`` (``aug`` holds the parameters)."""
        out = dict(batch)
        out["image"] = self(batch["image"].to(device, non_blocking=True), out.pop("aug"))
        return out


def train_augment(flip: bool, seed: int, augment_on: str, rotate: str = "xyz") -> "TrainAugment | DeviceAugment":
    """The training augmentation: ``augment_on`` is 'cpu' (MONAI per ROI in the loader workers),
    'device' (batched on the training device) or 'auto' (the batched one, measured the faster on
    a 2-core CPU and on a GPU alike: see benchmarks/bench_encoder.py); ``rotate`` the axes of the
    rotation ("xyz" as Table 40, "z" the axial plane only)."""
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {AUGMENT_ON}, not {augment_on!r}")
    if augment_on == "cpu":
        return TrainAugment(flip=flip, seed=seed, rotate=rotate)
    return DeviceAugment(flip=flip, rotate=rotate)
