"""LLaVA-style radiology report generator: image features -> projector -> image tokens -> causal LLM.

As released: a linear projector maps the frozen encoder's feature (512-d) to ``k = 8`` tokens of the
LLM's hidden size; the sequence is ``"<s>[INST] "`` + the image tokens + the instruction
(``Resources/prompts/report_instruction.txt``, paper section 4.4.4) + ``" [/INST]"`` + the report +
``</s>``, and the loss covers only the report tokens and ``</s>``. Stage A trains the projector with
the LLM frozen; stage B adds LoRA adapters on ``q_proj`` and ``v_proj`` (PEFT). Decoding: 4 beams,
repetition penalty 1.2, no repeated 3-gram, up to 256 new tokens, or greedy.

The LLM is any local Mistral or Llama folder (BioMistral-7B in the paper; the demo's tiny model).
A checkpoint never holds the frozen LLM: ``state_dict()`` is the projector and the adapters only,
and ``save(folder)`` writes ``report_generator.json``, ``projector.pt``, ``adapter/`` (PEFT),
``tokenizer/`` and, for small LLMs, a copy of the LLM folder as ``llm/`` (big ones are referenced
by path). ``ReportGenerator.load(folder)`` needs none of the training code.

Usage::

    gen = ReportGenerator.load("run/report/model")
    texts = gen.generate_from_features(torch.randn(2, 512))          # beams; greedy=True for speed
    findings, impression = split_report(texts[0])
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import MissingFileError, RenalCLIPError
from ..extraction.report_text import format_report, split_report  # noqa: F401  (re-exported)
from .decoding import DecodingOptions  # noqa: F401  (re-exported)
from .tokenizers import TokenizerError, check_special_tokens

CONFIG_FILE = "report_generator.json"
FORMAT = "renalclip-report-generator"
SUPPORTED_MODEL_TYPES = ("mistral", "llama")
PROMPT_PREFIX = "[INST] "          # after <s>
PROMPT_SUFFIX = " [/INST]"
IGNORE = -100
COPY_LLM_MAX_BYTES = 1 << 30      # LLM folders up to 1 GiB are copied into a saved bundle


class LLMFolderError(RenalCLIPError):
    """An LLM folder is missing, unreadable or of an architecture the generator cannot drive."""


def default_instruction() -> str:
    from ..resources import resource_path

    return resource_path("prompts", "report_instruction.txt").read_text(encoding="utf-8").strip()


def check_llm_folder(folder) -> dict:
    """The folder's ``config.json`` if it holds a Mistral/Llama causal LM; ``LLMFolderError`` otherwise."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not folder.is_dir():
        raise LLMFolderError(folder, "LLM folder not found")
    if not cfg_path.is_file():
        raise LLMFolderError(folder, "no config.json: not a Hugging Face model folder")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LLMFolderError(cfg_path, f"unreadable model config ({exc})") from None
    kind = cfg.get("model_type")
    if kind not in SUPPORTED_MODEL_TYPES:
        raise LLMFolderError(folder, f"model_type {kind!r} is not a Mistral or Llama causal language model "
                                     f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise LLMFolderError(folder, "no weight files (*.safetensors or *.bin)")
    return cfg


def load_llm(folder, device="cpu", dtype=None):
    """A Mistral/Llama ``*ForCausalLM`` from a local folder (bf16 on CUDA unless ``dtype`` is given)."""
    from transformers import AutoModelForCausalLM

    check_llm_folder(folder)
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    try:
        llm = AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True,
                                                   attn_implementation="sdpa")
    except (OSError, ValueError, KeyError) as exc:
        raise LLMFolderError(folder, f"cannot load the language model ({str(exc).splitlines()[0]})") from None
    return llm.to(device)


def load_tokenizer(folder):
    """A tokenizer saved with ``save_pretrained``; ``TokenizerError`` if unreadable or lacking special tokens."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True)
    except (OSError, ValueError, KeyError) as exc:
        raise TokenizerError(folder, f"cannot load the tokenizer ({str(exc).splitlines()[0]})") from None
    if tok.pad_token is None and tok.unk_token is not None:
        tok.pad_token = tok.unk_token
    check_special_tokens(tok, folder)
    tok.model_input_names = ["input_ids", "attention_mask"]
    return tok


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def feature_standardisation(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation (floored at 1e-6) of ``(n, F)`` image features."""
    f = np.asarray(features, np.float64)
    return f.mean(0).astype(np.float32), np.maximum(f.std(0), 1e-6).astype(np.float32)


@torch.no_grad()
def fold_standardisation(projector: nn.Linear, mean, std) -> None:
    """Make ``projector(x)`` equal what it gave on ``(x - mean) / std``, in place: training on
    standardised features is a preconditioner; the saved projector is the released plain
    ``Linear`` on raw encoder features."""
    w = projector.weight
    scale = torch.as_tensor(np.asarray(std), dtype=torch.float64, device=w.device)
    shift = torch.as_tensor(np.asarray(mean), dtype=torch.float64, device=w.device)
    w64 = w.double() / scale
    projector.bias.copy_((projector.bias.double() - w64 @ shift).to(w.dtype))
    w.copy_(w64.to(w.dtype))


def measurement_unit_ids(tokenizer) -> list[int]:
    """Token ids of " cm" as the tokenizer writes it after a number ("1 cm" minus "1"): Mistral's
    ``▁cm``, Llama-3's `` cm``."""
    with_unit = tokenizer("1 cm", add_special_tokens=False)["input_ids"]
    number = tokenizer("1", add_special_tokens=False)["input_ids"]
    if with_unit[:len(number)] != number or len(with_unit) == len(number):
        raise RenalCLIPError(None, f"the tokenizer does not write '1 cm' as '1' and a unit: {with_unit} / {number}")
    return with_unit[len(number):]


def measurement_constraint(tokenizer) -> dict:
    """``generate`` keyword arguments of ``DecodingOptions.require_measurement``: beam search must
    write the unit of ``measurement_unit_ids`` somewhere in the report."""
    return {"force_words_ids": [[measurement_unit_ids(tokenizer)]]}


class ReportGenerator(nn.Module):
    """Projector + causal LLM (+ optional LoRA). ``forward(features, reports)`` is the report-token loss."""

    def __init__(self, llm, tokenizer, feature_dim: int, n_image_tokens: int = 8, instruction: str | None = None,
                 decoding: DecodingOptions | None = None, max_report_tokens: int = 256, llm_source=None):
        super().__init__()
        check_special_tokens(tokenizer, getattr(tokenizer, "name_or_path", "tokenizer") or "tokenizer")
        self.llm = llm
        self.tokenizer = tokenizer
        self.feature_dim = int(feature_dim)
        self.n_image_tokens = int(n_image_tokens)
        self.hidden_size = int(self._causal_lm().config.hidden_size)
        self.instruction = instruction if instruction is not None else default_instruction()
        self.decoding = decoding or DecodingOptions()
        self.max_report_tokens = int(max_report_tokens)
        self.llm_source = None if llm_source is None else str(llm_source)
        self.lora: dict | None = None
        self.projector = nn.Linear(self.feature_dim, self.n_image_tokens * self.hidden_size)
        dtype = next(llm.parameters()).dtype
        self.projector.to(device=next(llm.parameters()).device, dtype=dtype)
        enc = lambda s: tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
        self.prefix_ids = [tokenizer.bos_token_id] + enc(PROMPT_PREFIX)
        self.suffix_ids = enc(self.instruction + PROMPT_SUFFIX)

    # ----- the LLM -----------------------------------------------------------------------------
    def _causal_lm(self):
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    @property
    def device(self) -> torch.device:
        return self.projector.weight.device

    def freeze_llm(self) -> None:
        for p in self.llm.parameters():
            p.requires_grad_(False)

    def add_lora(self, r: int = 4, alpha: int = 4, dropout: float = 0.2, targets=("q_proj", "v_proj")) -> None:
        """Wrap the (frozen) LLM with PEFT LoRA adapters; only they and the projector then train."""
        from .peft_support import import_peft

        peft = import_peft()
        self.freeze_llm()
        cfg = peft.LoraConfig(r=int(r), lora_alpha=int(alpha), lora_dropout=float(dropout), target_modules=list(targets),
                         bias="none", task_type="CAUSAL_LM")
        self.llm = peft.get_peft_model(self.llm, cfg)
        self.lora = {"r": int(r), "alpha": int(alpha), "dropout": float(dropout), "targets": list(targets)}

    # ----- checkpoints hold only what trains ----------------------------------------------------
    @staticmethod
    def _trainable_key(key: str) -> bool:
        return key.startswith("projector.") or "lora_" in key

    def state_dict(self, *args, **kwargs):
        full = super().state_dict(*args, **kwargs)
        for k in [k for k in full if not self._trainable_key(k)]:
            del full[k]
        return full

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        expected = set(self.state_dict())
        unexpected = sorted(set(state_dict) - expected)
        missing = sorted(expected - set(state_dict))
        if strict and (unexpected or missing):
            raise RuntimeError(f"report generator state mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
        return super().load_state_dict({k: v for k, v in state_dict.items() if k in expected}, strict=False,
                                       assign=assign)

    # ----- sequences ----------------------------------------------------------------------------
    @property
    def prompt_length(self) -> int:
        return len(self.prefix_ids) + self.n_image_tokens + len(self.suffix_ids)

    def report_ids(self, report: str) -> list[int]:
        ids = self.tokenizer(str(report), add_special_tokens=False).input_ids[:self.max_report_tokens]
        return ids + [self.tokenizer.eos_token_id]

    def image_tokens(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise RenalCLIPError(None, f"image features must have shape (batch, {self.feature_dim}), "
                                       f"found {tuple(features.shape)}")
        x = self.projector(features.to(self.device, self.projector.weight.dtype))
        return x.view(features.shape[0], self.n_image_tokens, self.hidden_size)

    def build_inputs(self, features: torch.Tensor, reports: list[str] | None = None) -> dict:
        """``inputs_embeds``, ``attention_mask`` and (with reports) ``labels`` (-100 off the report)."""
        b = features.shape[0]
        embed = self.llm.get_input_embeddings()
        dev = self.device
        pre = embed(torch.tensor(self.prefix_ids, device=dev)).unsqueeze(0).expand(b, -1, -1)
        suf = embed(torch.tensor(self.suffix_ids, device=dev)).unsqueeze(0).expand(b, -1, -1)
        img = self.image_tokens(features).to(pre.dtype)
        prompt = torch.cat([pre, img, suf], dim=1)
        if reports is None:
            return {"inputs_embeds": prompt, "attention_mask": torch.ones(b, prompt.shape[1], dtype=torch.long, device=dev)}
        ids = [self.report_ids(r) for r in reports]
        n = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        rep = torch.full((b, n), pad, dtype=torch.long, device=dev)
        rmask = torch.zeros((b, n), dtype=torch.long, device=dev)
        for i, x in enumerate(ids):
            rep[i, :len(x)] = torch.tensor(x, device=dev)
            rmask[i, :len(x)] = 1
        p = prompt.shape[1]
        labels = torch.full((b, p + n), IGNORE, dtype=torch.long, device=dev)
        labels[:, p:] = torch.where(rmask.bool(), rep, torch.full_like(rep, IGNORE))
        mask = torch.cat([torch.ones(b, p, dtype=torch.long, device=dev), rmask], dim=1)
        return {"inputs_embeds": torch.cat([prompt, embed(rep)], dim=1), "attention_mask": mask, "labels": labels}

    def forward(self, features: torch.Tensor, reports: list[str]) -> torch.Tensor:
        """Mean cross-entropy over the report tokens (and ``</s>``) of the batch."""
        batch = self.build_inputs(features, reports)
        lm = self._causal_lm()
        hidden = lm.model(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"],
                          use_cache=False).last_hidden_state
        target = batch["labels"][:, 1:]
        keep = target != IGNORE
        logits = lm.lm_head(hidden[:, :-1][keep])
        return nn.functional.cross_entropy(logits.float(), target[keep])

    # ----- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate_from_features(self, features: torch.Tensor, greedy: bool = False,
                               max_new_tokens: int | None = None) -> list[str]:
        """One report per feature row: beam search as released, or greedy decoding."""
        was_training = self.training
        self.eval()
        try:
            inputs = self.build_inputs(torch.as_tensor(features))
            d = self.decoding
            constraints = {"repetition_penalty": d.repetition_penalty, "no_repeat_ngram_size": d.no_repeat_ngram_size}
            if d.number_safe:
                from .number_safe_decoding import number_safe_processors

                constraints = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "logits_processor":
                               number_safe_processors(self.tokenizer, d.no_repeat_ngram_size, d.repetition_penalty)}
            if d.require_measurement and not greedy and d.num_beams > 1:
                constraints.update(measurement_constraint(self.tokenizer))
            out = self.llm.generate(
                inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
                max_new_tokens=int(max_new_tokens or d.max_new_tokens), do_sample=False,
                num_beams=1 if greedy else d.num_beams, early_stopping=not greedy and d.num_beams > 1, **constraints,
                bos_token_id=self.tokenizer.bos_token_id, eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id)
        finally:
            self.train(was_training)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    # ----- files --------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {"format": FORMAT, "version": 1, "feature_dim": self.feature_dim, "n_image_tokens": self.n_image_tokens,
                "hidden_size": self.hidden_size, "instruction": self.instruction, "decoding": asdict(self.decoding),
                "max_report_tokens": self.max_report_tokens, "lora": self.lora,
                "llm_model_type": self._causal_lm().config.model_type}

    def save(self, folder, copy_llm: bool | None = None) -> Path:
        """Write the bundle atomically (a temporary folder renamed into place).

        ``copy_llm``: copy the base LLM folder into ``llm/`` (default: when it is under 1 GiB);
        otherwise the JSON records its absolute path. An LLM built in memory is always saved.
        """
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
        try:
            cfg = self.config_dict()
            torch.save({k: v.detach().cpu() for k, v in self.projector.state_dict().items()}, tmp / "projector.pt")
            self.tokenizer.save_pretrained(str(tmp / "tokenizer"))
            source = Path(self.llm_source) if self.llm_source else None
            if source is None:
                base = self.llm
                if self.lora is not None:
                    import copy

                    base, cfg["lora"] = copy.deepcopy(self.llm).merge_and_unload(), None
                base.save_pretrained(str(tmp / "llm"), safe_serialization=True)
                cfg["llm"] = "llm"
            else:
                if copy_llm is None:
                    copy_llm = _folder_bytes(source) <= COPY_LLM_MAX_BYTES
                if copy_llm:
                    shutil.copytree(source, tmp / "llm")
                    cfg["llm"] = "llm"
                else:
                    cfg["llm"] = str(source.resolve())
            if cfg["lora"] is not None:
                self.llm.save_pretrained(str(tmp / "adapter"))
            (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2), encoding="utf-8")
            old = None
            if folder.exists():
                old = Path(tempfile.mkdtemp(prefix=".old-", dir=folder.parent))
                os.replace(folder, old / "x")
            os.replace(tmp, folder)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder, device="cpu") -> "ReportGenerator":
        """A saved bundle, adapters merged into the LLM for speed; bf16 on CUDA."""
        folder = Path(folder)
        cfg_path = folder / CONFIG_FILE
        if not cfg_path.is_file():
            raise MissingFileError(cfg_path, "not a saved report generator (no report_generator.json)")
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise LLMFolderError(cfg_path, f"unreadable generator config ({exc})") from None
        if cfg.get("format") != FORMAT:
            raise LLMFolderError(cfg_path, f"unknown format {cfg.get('format')!r} (expected {FORMAT})")
        llm_dir = Path(cfg["llm"]) if os.path.isabs(cfg["llm"]) else folder / cfg["llm"]
        llm = load_llm(llm_dir, device)
        if cfg.get("lora"):
            from .peft_support import import_peft

            llm = import_peft().PeftModel.from_pretrained(llm, str(folder / "adapter"), is_trainable=False).merge_and_unload()
        tok = load_tokenizer(folder / "tokenizer")
        gen = cls(llm, tok, cfg["feature_dim"], cfg["n_image_tokens"], cfg["instruction"],
                  DecodingOptions(**cfg.get("decoding", {})), cfg.get("max_report_tokens", 256),
                  llm_source=None if cfg.get("lora") else llm_dir)
        if gen.hidden_size != cfg["hidden_size"]:
            raise LLMFolderError(llm_dir, f"LLM hidden size {gen.hidden_size} differs from the projector's "
                                          f"{cfg['hidden_size']}")
        state = torch.load(folder / "projector.pt", map_location="cpu", weights_only=True)
        gen.projector.load_state_dict(state)
        gen.projector.to(device=gen.device, dtype=next(llm.parameters()).dtype)
        gen.eval()
        return gen
