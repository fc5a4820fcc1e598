"""Settings of the report-generation stage (the ``report:`` section of a training config).

Paper values (section 4.4.4, Supplementary Data Tables 41-42) are the defaults: 8 image tokens,
stage A (projector only) 20 epochs at lr 1e-3, stage B (projector lr 5e-4 as ``head_lr``, LoRA
r 4 / alpha 4 / dropout 0.2 on q_proj, v_proj at lr 2e-6) 2 epochs, batch 30, weight decay 0.05,
cosine with 10 % warm-up, best epoch by validation loss; decoding with 4 beams, repetition
penalty 1.2, no repeated 3-gram, 256 new tokens.

Usage: ``cfg.report.stage_b.head_lr`` (the projector's learning rate in stage B)
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..models.decoding import DecodingOptions
from .options import OptimOptions


def _optim(**kw) -> OptimOptions:
    base = dict(batch_size=30, weight_decay=5e-2, betas=(0.9, 0.999), warmup_ratio=0.1, select_metric="val_loss",
                select_mode="min")
    base.update(kw)
    return OptimOptions(**base)


@dataclass
class TinyLLMOptions:
    """The small Mistral built when ``report.llm`` is empty, and its language-model pre-training."""
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    image_conditioned: bool = True  # learn from (lesion ROI, report) pairs with the projector; False: text only
    extra_reports: int = 0          # text only: simulated reports (phantom text, no voxels) added to the corpus
    max_reports: int = 0            # text only: cap on corpus reports (0 = all)
    optim: OptimOptions = field(default_factory=lambda: _optim(epochs=3, batch_size=16, lr=3e-3, weight_decay=1e-2))


@dataclass
class LoraOptions:
    r: int = 4
    alpha: int = 4
    dropout: float = 0.2
    targets: list = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class DecodingConfig(DecodingOptions):
    """The generator's decoding settings plus ``greedy`` (one beam for the stage's predictions)."""
    greedy: bool = False


@dataclass
class ReportOptions:
    init: str = "clip"              # frozen image encoder: clip | attributes | random | a checkpoint path
    llm: str = ""                   # local Mistral/Llama folder (BioMistral-7B); "" = the tiny model, trained here
    image_tokens: int = 8
    max_report_tokens: int = 256
    align_cohorts: list = field(default_factory=lambda: ["pretrain"])   # stage A data (stage B: data.train_cohorts)
    standardize_features: bool = False   # train the projector on standardised features, fold them in at the end
    tiny: TinyLLMOptions = field(default_factory=TinyLLMOptions)
    lora: LoraOptions = field(default_factory=LoraOptions)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    stage_a: OptimOptions = field(default_factory=lambda: _optim(epochs=20, lr=1e-3))
    stage_b: OptimOptions = field(default_factory=lambda: _optim(epochs=2, lr=2e-6, head_lr=5e-4))
