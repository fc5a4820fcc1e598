"""Optimisation settings shared by every training stage (one dataclass, read from YAML).

Usage: ``OptimOptions(epochs=20, lr=5e-4, select_metric="val_auc", select_mode="max")``
"""
from __future__ import annotations

from dataclasses import dataclass

from ..constants import AUGMENT_ON, AUGMENT_ROTATE, DEVICE_CACHE
from ..errors import ConfigError

BACKBONE, HEADS = "backbone", "heads"     # names of the parameter groups that ``head_only_epochs`` tells apart


@dataclass
class OptimOptions:
    epochs: int = 10
    batch_size: int = 8
    lr: float = 5e-4
    head_lr: float | None = None          # None: same as lr
    head_only_epochs: int = 0             # LP-FT: the backbone's learning rate is 0 for the first N epochs
    weight_decay: float = 5e-3
    betas: tuple = (0.9, 0.999)
    warmup_ratio: float = 0.1
    grad_clip: float | None = None
    amp: str = "bf16"                     # "bf16" (on GPU; CPU runs stay fp32) or "fp32"
    seed: int = 0
    num_workers: int = 0
    augment_on: str = "auto"              # "auto" (batched on the training device), "cpu" (MONAI in loader workers), "device"
    augment_rotate: str = "xyz"           # "xyz": Table 40's rotation about every axis; "z": axial plane only
    device_cache: str = "auto"            # "auto" (the ROI cache on the GPU when it fits), "always", "never"
    select_metric: str = "val_loss"
    select_mode: str = "min"              # "min" or "max"
    progress: bool = True

    def validate(self, source: str | None = None, where: str = "optim") -> "OptimOptions":
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.head_lr is None or self.head_lr > 0, "head_lr must be > 0"),
            (0 <= self.head_only_epochs < self.epochs, "head_only_epochs must be >= 0 and below epochs"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas must be two numbers in [0, 1)"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.amp in ("bf16", "fp32"), "amp must be 'bf16' or 'fp32'"),
            (self.select_mode in ("min", "max"), "select_mode must be 'min' or 'max'"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.augment_on in AUGMENT_ON, f"augment_on must be one of {', '.join(AUGMENT_ON)}"),
            (self.augment_rotate in AUGMENT_ROTATE, f"augment_rotate must be one of {', '.join(AUGMENT_ROTATE)}"),
            (self.device_cache in DEVICE_CACHE, f"device_cache must be one of {', '.join(DEVICE_CACHE)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(source, f"{where}: {message}")
        return self
