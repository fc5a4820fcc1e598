"""Atomic file output: write under a temporary name in the target folder, then rename.

A reader never sees half a file, and a failed or interrupted write leaves nothing behind.

Usage::

    with atomic_path("out/roi.nii.gz") as tmp:
        write_something(tmp)
    atomic_write_text("out/done.json", "{}")
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _suffix(path: Path) -> str:
    name = path.name
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix


@contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix if suffix is not None else _suffix(path), dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            fh.write(text)
    return Path(path)


def atomic_save_npy(path, array) -> Path:
    import numpy as np

    with atomic_path(path, ".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)
    return Path(path)


def atomic_torch_save(obj, path) -> Path:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def jsonable(obj):
    """Plain JSON values: NaN and infinities become null, numpy scalars and arrays Python values."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_json(path, obj, indent: int | None = 2) -> Path:
    import json

    return atomic_write_text(path, json.dumps(jsonable(obj), indent=indent, allow_nan=False))
