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
from .training.report_options import ReportOptions


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
    class_weighted: bool = False    # weight each question's classes by inverse training frequency
    lesion_view: float = 0.0        # probability that training reads a lesion kidney's lesion-centred ROI (0 = as released)
    repeat_threshold: float = 0.0   # > 0: repeat-factor sampling of kidneys with rare answers (0 = uniform, as released)

    def validate(self, source=None, where: str = "attributes") -> "AttributesOptions":
        if self.optim.head_only_epochs:
            raise ConfigError(source, f"{where}: optim.head_only_epochs must be 0 (every parameter of this stage is trained together)")
        if not 0.0 <= self.lesion_view <= 1.0:
            raise ConfigError(source, f"{where}: lesion_view must be in [0, 1]")
        if not 0.0 <= self.repeat_threshold <= 1.0:
            raise ConfigError(source, f"{where}: repeat_threshold must be in [0, 1]")
        return self


def _frozen_with_head_only(options, source, where: str) -> None:
    if options.freeze_encoder and options.optim.head_only_epochs:
        raise ConfigError(source, f"{where}: freeze_encoder and optim.head_only_epochs exclude each other")


@dataclass
class FinetuneOptions:
    init: str = "attributes"        # random | attributes | clip | a checkpoint path
    tasks: list = field(default_factory=lambda: ["renal_R", "renal_E", "renal_N", "renal_A", "renal_L",
                                                 "malignancy", "aggressiveness"])
    joint: bool = False             # one model with every head (fast) instead of one model per task
    freeze_encoder: bool = False
    class_balanced: bool = True
    flip: bool = True
    head_init: str = "random"       # random (as released) | attributes: start heads from the matching question's head
    optim: OptimOptions = field(default_factory=lambda: OptimOptions(select_metric="val_auc", select_mode="max"))

    def validate(self, source=None, where: str = "finetune") -> "FinetuneOptions":
        _frozen_with_head_only(self, source, where)
        if self.head_init not in ("random", "attributes"):
            raise ConfigError(source, f"{where}: head_init must be 'random' or 'attributes', not '{self.head_init}'")
        return self


@dataclass
class SurvivalOptions:
    init: str = "finetune"          # the encoder the Cox head sits on
    endpoint: str = "rfs"
    freeze_encoder: bool = False
    optim: OptimOptions = field(default_factory=lambda: OptimOptions(select_metric="val_cindex", select_mode="max"))

    def validate(self, source=None, where: str = "survival") -> "SurvivalOptions":
        _frozen_with_head_only(self, source, where)
        return self


@dataclass
class DataEfficiencyOptions:
    fractions: list = field(default_factory=lambda: [0.1, 0.2, 0.4, 0.8, 1.0])
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    inits: list = field(default_factory=lambda: ["random", "attributes"])


@dataclass
class CompareOptions:
    """``renalclip train compare``: fine-tuning and survival repeated over these seeds (the
    pre-trained encoder is shared), reported as mean and standard deviation; empty = one run with
    the configured seeds."""
    seeds: list = field(default_factory=list)

    def validate(self, source=None, where: str = "compare") -> "CompareOptions":
        bad = [s for s in self.seeds if type(s) is not int]
        if bad or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(source, f"{where}.seeds must be distinct integers, found {self.seeds!r}")
        return self


@dataclass
class EvaluationOptions:
    """The pipeline's evaluation stage (``renalclip evaluate`` on the joined predictions)."""
    bootstrap: int = 1000
    seed: int = 0

    def validate(self, source=None, where: str = "evaluation") -> "EvaluationOptions":
        if self.bootstrap < 0:
            raise ConfigError(source, f"{where}.bootstrap must be >= 0")
        return self


@dataclass
class TextPhaseOptions:
    """One phase of the text stage (MNTP or SimCSE), Supplementary Data Tables 37-38."""
    steps: int = 1000
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    mask_probability: float = 0.2     # MNTP: share of tokens masked
    dropout: float = 0.2              # SimCSE: dropout that makes the two views differ
    temperature: float = 0.05         # SimCSE: cosine / temperature (llm2vec's scale 20)

    def validate(self, source=None, where: str = "text") -> "TextPhaseOptions":
        checks = [(self.steps >= 1, "steps must be >= 1"), (self.batch_size >= 2, "batch_size must be >= 2"),
                  (self.lr > 0, "lr must be > 0"), (self.weight_decay >= 0, "weight_decay must be >= 0"),
                  (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas must be two numbers in [0, 1)"),
                  (0 < self.mask_probability < 1, "mask_probability must be in (0, 1)"),
                  (0 <= self.dropout < 1, "dropout must be in [0, 1)"), (self.temperature > 0, "temperature must be > 0")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(source, f"{where}: {message}")
        return self


@dataclass
class TextOptions:
    """Stage "text": LLM2Vec MNTP then unsupervised SimCSE, both as LoRA, on the training reports."""
    base: str = ""                    # local Llama/Mistral folder, or "tiny": a small Llama from a config
    tiny_hidden: int = 64             # the "tiny" model: width, layers, heads (Mistral 32k tokenizer)
    tiny_layers: int = 2
    tiny_heads: int = 4
    max_length: int = 224
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    amp: str = "bf16"                 # on GPU; CPU runs stay fp32
    gradient_checkpointing: bool = True
    seed: int = 0
    mntp: TextPhaseOptions = field(default_factory=lambda: TextPhaseOptions(batch_size=32, lr=5e-5))
    simcse: TextPhaseOptions = field(default_factory=lambda: TextPhaseOptions(batch_size=128, lr=3e-5))


@dataclass
class ClipOptions:
    """Stage "clip": contrastive alignment (Supplementary Data Table 39) and its outputs."""
    init: str = "attributes"          # image encoder: random | attributes | a checkpoint path
    text_encoder: str = "text"        # text (the text stage's encoder) | minilm | a model folder | an encoder.json
    text_kind: str = "llm2vec"        # for a model folder: llm2vec | bert
    text_adapters: list = field(default_factory=list)
    text_max_length: int = 224
    text_batch_size: int = 32
    n_shuffles: int = 4
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    flip: bool = False
    lesion_view: float = 0.0          # probability that training reads a lesion kidney's lesion-centred ROI (0 = as released)
    fuse_phases: bool = False         # retrieval and zero-shot outputs: embeddings averaged over a patient's phases (False = as released)
    prompts: str = ""                 # zero-shot prompt file; "" = Resources/prompts/zeroshot_prompt.json
    prompt_pairs: int = 1000
    prompt_pair_seed: int = 42
    optim: OptimOptions = field(default_factory=lambda: OptimOptions(
        epochs=100, batch_size=1024, lr=1e-5, head_lr=5e-4, weight_decay=1e-2, betas=(0.9, 0.98), warmup_ratio=0.1,
        grad_clip=0.2, select_metric="val_recall@5", select_mode="max"))

    def validate(self, source=None, where: str = "clip") -> "ClipOptions":
        checks = [(0 < self.init_temperature < 1, "init_temperature must be in (0, 1)"),
                  (self.max_logit_scale > 1, "max_logit_scale must be > 1"),
                  (self.n_shuffles >= 0, "n_shuffles must be >= 0"), (self.text_max_length >= 8, "text_max_length must be >= 8"),
                  (self.text_batch_size >= 1, "text_batch_size must be >= 1"), (self.prompt_pairs >= 1, "prompt_pairs must be >= 1"),
                  (0.0 <= self.lesion_view <= 1.0, "lesion_view must be in [0, 1]"),
                  (self.optim.batch_size >= 2, "optim.batch_size must be >= 2 (contrastive pairs need negatives)")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(source, f"{where}: {message}")
        return self


@dataclass
class AblationOptions:
    """``renalclip train ablation``: the text encoders of the four pre-training variants (section 4.4.7)."""
    domain_text_encoder: str = "text"     # text (the text stage's LLM2Vec) | a model folder | an encoder.json
    general_text_encoder: str = "minilm"  # the paper's BioClinicalBERT: a BERT-style folder | minilm
    finetune: bool = False                # also fine-tune the seven tasks from each variant's encoder


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
    compare: CompareOptions = field(default_factory=CompareOptions)
    evaluation: EvaluationOptions = field(default_factory=EvaluationOptions)
    text: TextOptions = field(default_factory=TextOptions)
    clip: ClipOptions = field(default_factory=ClipOptions)
    report: ReportOptions = field(default_factory=ReportOptions)
    ablation: AblationOptions = field(default_factory=AblationOptions)
    device: str = "auto"
    source: str = ""


_CHOICES = {
    "data.on_bad_row": ("fail", "skip"),
    "survival.endpoint": ("rfs", "dss", "os"),
    "text.amp": ("bf16", "fp32"),
    "clip.text_kind": ("llm2vec", "bert"),
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
    if hasattr(obj, "validate"):
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


_DATA_PATH_KEYS = ("data.manifest", "data.cache")


def load_config(path, overrides: dict | None = None) -> TrainConfig:
    """Read and validate a YAML config. Relative data paths (``data.manifest``, ``data.cache``) written
    in the file resolve against the config's folder; those given in ``overrides`` (``--set``) against
    the working directory, as any command-line path does."""
    import yaml

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(path, "config file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    for k, v in (overrides or {}).items():
        if k in _DATA_PATH_KEYS and isinstance(v, str) and v and not os.path.isabs(v):
            v = os.path.abspath(v)
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
