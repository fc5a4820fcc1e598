"""Training augmentation of the paper's Supplementary Data Table 40, with MONAI transforms.

Applied to a windowed ROI (values in [0, 1], array (z, y, x) = 32 x 140 x 140), in the table's
order: translation along x and y (+-10 voxels), rotation about x, y and z (+-pi/10), scaling along
x and y (0.9-1.1) as one random affine; random 128 x 128 crop; horizontal flip along x (p 0.5,
fine-tuning only: pre-training keeps left and right); intensity scaling (0.9-1.1), intensity
shift (+-0.1), gamma contrast (0.5-2.0, p 0.5). The result is the network's (1, 32, 128, 128)
tensor in (z, x, y) order, like ``preprocess.to_model_input``.

Usage::

    aug = TrainAugment(flip=True, seed=0)
    x = aug(roi_hu)          # np (32, 140, 140) HU -> torch (1, 32, 128, 128)
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..constants import CROP_SHAPE_XYZ
from ..preprocess.roi import window


class TrainAugment:
    def __init__(self, flip: bool, seed: int | None = None, affine: bool = True, intensity: bool = True):
        from monai.transforms import (Compose, RandAdjustContrast, RandAffine, RandFlip, RandScaleIntensity,
                                      RandShiftIntensity, RandSpatialCrop)

        cx, cy, cz = CROP_SHAPE_XYZ
        spatial = []
        if affine:
            # Spatial dims of the (1, z, y, x) tensor are (z, y, x).
            spatial.append(RandAffine(prob=1.0, rotate_range=(math.pi / 10,) * 3, translate_range=(0, 10, 10),
                                      scale_range=(0.0, 0.1, 0.1), mode="bilinear", padding_mode="zeros"))
        spatial.append(RandSpatialCrop((cz, cy, cx), random_size=False))
        if flip:
            spatial.append(RandFlip(prob=0.5, spatial_axis=2))
        inten = [RandScaleIntensity(factors=0.1, prob=1.0), RandShiftIntensity(offsets=0.1, prob=1.0),
                 RandAdjustContrast(prob=0.5, gamma=(0.5, 2.0))] if intensity else []
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
