"""Training configuration: YAML files validated against typed dataclasses on load.

``Resources/configs/paper.yaml`` carries the paper's hyperparameters (Supplementary Data Tables
36-40); ``demo.yaml`` a small setting for the synthetic cohort on 2 CPU cores. Unknown keys, wrong
types and missing files are one ``ConfigError`` line naming the file and the key path.

Usage::

    cfg = load_config("Resources/configs/demo.yaml", overrides={"finetune.optim.epochs": 2})
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, MissingFileError
from .training.options import OptimOptions


@dataclass
class ModelOptions:
    width: int = 64                 # 64 = the published encoder; 16 for quick CPU runs
    embed_dim: int = 4096


@dataclass
class AttributesOptions:
    optim: OptimOptions = field(default_factory=lambda: OptimOptions(epochs=200, batch_size=300, lr=5e-4,
                                                                      weight_decay=5e-3, select_metric="val_macro_auc",
                                                                      select_mode="max"))
    flip: bool = False


@dataclass
class FinetuneOptions:
    init: str = "attributes"        # random | attributes | clip | a checkpoint path
    tasks: list = field(default_factory=lambda: ["renal_R", "renal_E", "renal_N", "renal_A", "renal_L",
                                                 "malignancy", "aggressiveness"])
    joint: bool = False             # one model with every head (fast) instead of one model per task
    freeze_encoder: bool = False
    class_balanced: bool = True
    flip: bool = True
    optim: OptimOptions = field(default_factory=lambda: OptimOptions(select_metric="val_auc", select_mode="max"))


@dataclass
class SurvivalOptions:
    init: str = "finetune"          # the encoder the Cox head sits on
    endpoint: str = "rfs"
    freeze_encoder: bool = False
    optim: OptimOptions = field(default_factory=lambda: OptimOptions(select_metric="val_cindex", select_mode="max"))


@dataclass
class DataEfficiencyOptions:
    fractions: list = field(default_factory=lambda: [0.1, 0.2, 0.4, 0.8, 1.0])
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    inits: list = field(default_factory=lambda: ["random", "attributes"])


@dataclass
class DataOptions:
    manifest: str = ""
    cache: str = ""
    train_cohorts: list = field(default_factory=lambda: ["internal"])
    pretrain_cohorts: list = field(default_factory=lambda: ["pretrain"])
    on_bad_row: str = "fail"        # fail | skip


@dataclass
class TrainConfig:
    data: DataOptions = field(default_factory=DataOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    attributes: AttributesOptions = field(default_factory=AttributesOptions)
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)
    survival: SurvivalOptions = field(default_factory=SurvivalOptions)
    data_efficiency: DataEfficiencyOptions = field(default_factory=DataEfficiencyOptions)
    device: str = "auto"
    source: str = ""


_CHOICES = {
    "data.on_bad_row": ("fail", "skip"),
    "survival.endpoint": ("rfs", "dss", "os"),
}


def _build(cls, raw, path: str, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(path, f"'{where or '<top>'}' must be a mapping, found {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - {"source"}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(path, f"unknown key '{_join(where, unknown[0])}' (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, path, _join(where, name))
    obj = cls(**kwargs)
    if cls is OptimOptions:
        obj.validate(path, where)
    return obj


def _coerce(hint, value, path: str, key: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path, key)
    if origin is typing.Union or str(origin) == "types.UnionType":
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(inner, value, path, key)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"'{key}' must be a list, found {value!r}")
        return list(value) if hint is list or origin is list else tuple(value)
    if hint in (int, str, bool) and not (type(value) is hint or (hint is int and type(value) is int)):
        raise ConfigError(path, f"'{key}' must be {hint.__name__}, found {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(path, f"'{key}' must be one of {_CHOICES[key]}, found {value!r}")
    return value


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _set(raw: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def load_config(path, overrides: dict | None = None) -> TrainConfig:
    """Read and validate a YAML config; relative data paths resolve against the config's folder."""
    import yaml

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(path, "config file not found")
    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    for k, v in (overrides or {}).items():
        _set(raw, k, v)
    cfg = _build(TrainConfig, raw, path, "")
    base = Path(path).resolve().parent
    for attr in ("manifest", "cache"):
        value = getattr(cfg.data, attr)
        if value and not os.path.isabs(value):
            setattr(cfg.data, attr, str((base / value).resolve()))
    cfg.source = path
    return cfg


def require_file(cfg: TrainConfig, key: str) -> Path:
    """The file a dotted key names, which must exist (a ConfigError naming the key otherwise)."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    if not value or not os.path.exists(value):
        raise ConfigError(cfg.source, f"'{key}' names a missing file: {value or '<empty>'}")
    return Path(value)
