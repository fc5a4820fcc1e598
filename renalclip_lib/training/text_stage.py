"""Stage "text": LLM2Vec text-encoder pre-training, MNTP then unsupervised SimCSE, both as LoRA.

Supplementary Data Tables 37-38 (llm2vec's recipe, whose training scripts are not in the
package, so the two loops are here):

- MNTP (masked next-token prediction): a bidirectional Llama/Mistral with its LM head
  (``llm2vec.models.LlamaBiForMNTP``); 20 % of the tokens are selected (never special tokens),
  of which 80 % become the mask token ``_``, 10 % a random token, 10 % stay; the token at
  position i is predicted from the output at position i - 1 (the causal LM shift). LoRA (rank 16,
  alpha 32, dropout 0.05) on every attention and MLP projection; AdamW, linear decay, 1,000 steps
  of 32 reports.
- SimCSE: the MNTP adapter merged, a new LoRA adapter; attention dropout 0.2 makes two passes of
  the same report differ; mean-pooled features, InfoNCE over in-batch negatives with cosine /
  0.05 (llm2vec's ``HardNegativeNLLLoss``, scale 20); 1,000 steps of 128.

The paper runs MNTP on MIMIC-CXR and SimCSE on its pre-training reports; here both use the
reports of ``data.pretrain_cohorts`` (training split) formatted as the release formats them. On a
GPU: bf16 and gradient checkpointing. ``text.base: tiny`` builds a small random Llama with the
Mistral 32k tokenizer (``models.tiny_llama``) so the stage runs on a CPU.

Writes ``RUN/text/``: ``base/`` (tiny only), ``mntp/`` and ``simcse/`` (PEFT adapter folders,
written atomically), ``metrics.jsonl`` (loss every step), ``encoder.json`` (the spec
``load_text_encoder`` reads: base + both adapters) and ``finished.json``. A finished phase is not
run again; an interrupted phase restarts from its beginning.

Usage: ``run_text(cfg, "run")`` or ``renalclip train text --config demo.yaml --out run``
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write_json, atomic_write_text, jsonable
from ..config import TextPhaseOptions, TrainConfig
from ..errors import ConfigError
from ..text.reports import has_report, kidney_report

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MASK_TOKEN = "_"
EMBED_MARK = "!@#$%^&*()"          # llm2vec's separator: what follows is the text that is pooled


def training_reports(cfg: TrainConfig) -> list[str]:
    """Distinct per-kidney reports of the pre-training cohorts' training split, as released."""
    from ..data.manifest import read_manifest

    if not cfg.data.manifest:
        raise ConfigError(cfg.source, "'data.manifest' is not set: the text stage trains on the manifest's reports")
    table = read_manifest(cfg.data.manifest, on_error=cfg.data.on_bad_row, check_files=False)
    pre = set(cfg.data.pretrain_cohorts)
    texts = []
    for rows in table.by_patient().values():
        r0 = rows[0]
        if r0.cohort not in pre or r0.split in ("val", "test"):
            continue
        lesion = next((r["lesion_side"] for r in rows if r["lesion_side"]), "")
        for side in ("left", "right"):
            report = next((r.report(side) for r in rows if has_report(*r.report(side))), None)
            if report is not None:
                texts.append(kidney_report(report[0], report[1], side, lesion == side))
    texts = sorted(set(texts))
    if len(texts) < 2:
        raise ConfigError(cfg.data.manifest, f"only {len(texts)} distinct reports in the pre-training cohorts: "
                                             "the text stage needs more")
    return texts


def _save_dir_atomic(save, dest: Path) -> Path:
    tmp = dest.parent / f".tmp-{dest.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    save(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def _lora(cfg: TrainConfig):
    from ..models.peft_support import import_peft

    peft = import_peft()

    return peft.LoraConfig(r=cfg.text.lora_r, lora_alpha=cfg.text.lora_alpha, lora_dropout=cfg.text.lora_dropout,
                      target_modules=LORA_TARGETS, bias="none")


def _linear_decay(optimizer, steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / max(1, steps)))


def _batches(n: int, batch_size: int, steps: int, seed: int):
    """``steps`` index batches drawn as shuffled passes over ``n`` items (seeded)."""
    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(n), 0
    for _ in range(steps):
        take = []
        while len(take) < min(batch_size, n):
            if pos == n:
                order, pos = rng.permutation(n), 0
            take.append(int(order[pos]))
            pos += 1
        yield take


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, mask_id: int, vocab: int, p: float,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking: (masked inputs, labels with -100 where nothing is predicted)."""
    labels = input_ids.clone()
    chosen = (torch.rand(input_ids.shape, generator=gen) < p) & ~special
    labels[~chosen] = -100
    inputs = input_ids.clone()
    u = torch.rand(input_ids.shape, generator=gen)
    inputs[chosen & (u < 0.8)] = mask_id
    rand = chosen & (u >= 0.8) & (u < 0.9)
    inputs[rand] = torch.randint(vocab, input_ids.shape, generator=gen)[rand]
    return inputs, labels


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def _log_step(records: list, phase: str, step: int, loss: float, lr: float, t0: float, log) -> None:
    rec = {"phase": phase, "step": step, "loss": loss, "lr": lr, "seconds": round(time.time() - t0, 2)}
    records.append(rec)
    if log and (step == 1 or step % 10 == 0):
        log(json.dumps(jsonable(rec)))


def train_mntp(cfg: TrainConfig, base: Path, texts: list[str], out: Path, records: list, log=None) -> Path:
    from llm2vec.models import LlamaBiForMNTP, MistralBiForMNTP
    from transformers import AutoConfig, AutoTokenizer

    from ..models.peft_support import import_peft

    peft = import_peft()

    ph: TextPhaseOptions = cfg.text.mntp
    device = _device(cfg)
    dtype = torch.bfloat16 if device.type == "cuda" and cfg.text.amp == "bf16" else torch.float32
    mclass = MistralBiForMNTP if AutoConfig.from_pretrained(base).model_type == "mistral" else LlamaBiForMNTP
    torch.manual_seed(cfg.text.seed)
    model = mclass.from_pretrained(base, torch_dtype=dtype)
    model.set_model_for_peft(peft.get_peft_model(model.get_model_for_peft(), _lora(cfg)))
    if device.type == "cuda" and cfg.text.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.to(device).train()
    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    mask_id = tok.convert_tokens_to_ids(MASK_TOKEN)
    if mask_id is None or mask_id == tok.unk_token_id:
        raise ConfigError(base, f"the tokenizer has no '{MASK_TOKEN}' token for MNTP masking")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=ph.lr, betas=tuple(ph.betas), weight_decay=ph.weight_decay)
    sched = _linear_decay(opt, ph.steps)
    gen = torch.Generator().manual_seed(cfg.text.seed)
    t0 = time.time()
    for step, idx in enumerate(_batches(len(texts), ph.batch_size, ph.steps, cfg.text.seed), start=1):
        enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=cfg.text.max_length,
                  return_tensors="pt", return_special_tokens_mask=True)
        special = enc["special_tokens_mask"].bool() | (enc["attention_mask"] == 0)
        inputs, labels = mask_tokens(enc["input_ids"], special, mask_id, len(tok), ph.mask_probability, gen)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = model(input_ids=inputs.to(device), attention_mask=enc["attention_mask"].to(device),
                         labels=labels.to(device)).loss
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            opt.step()
        sched.step()
        _log_step(records, "mntp", step, float(loss.detach()), sched.get_last_lr()[0], t0, log)
    return _save_dir_atomic(lambda d: model.save_peft_model(str(d)), out)


def train_simcse(cfg: TrainConfig, base: Path, mntp: Path, texts: list[str], out: Path, records: list, log=None) -> Path:
    from llm2vec import LLM2Vec
    from llm2vec.loss.HardNegativeNLLLoss import HardNegativeNLLLoss
    from ..models.peft_support import import_peft

    peft = import_peft()

    ph: TextPhaseOptions = cfg.text.simcse
    device = _device(cfg)
    dtype = torch.bfloat16 if device.type == "cuda" and cfg.text.amp == "bf16" else torch.float32
    torch.manual_seed(cfg.text.seed + 1)
    l2v = LLM2Vec.from_pretrained(str(base), peft_model_name_or_path=str(mntp), merge_peft=True, pooling_mode="mean",
                                  max_length=cfg.text.max_length, torch_dtype=dtype, attention_dropout=ph.dropout)
    l2v.model = peft.get_peft_model(l2v.model, _lora(cfg))
    if device.type == "cuda" and cfg.text.gradient_checkpointing:
        l2v.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        l2v.model.enable_input_require_grads()
    l2v.to(device).train()
    loss_fn = HardNegativeNLLLoss(scale=1.0 / ph.temperature)
    params = [p for p in l2v.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=ph.lr, betas=tuple(ph.betas), weight_decay=ph.weight_decay)
    sched = _linear_decay(opt, ph.steps)
    marked = [EMBED_MARK + t for t in texts]
    t0 = time.time()
    for step, idx in enumerate(_batches(len(texts), ph.batch_size, ph.steps, cfg.text.seed + 1), start=1):
        batch = [marked[i] for i in idx]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            q = l2v({k: v.to(device) for k, v in l2v.tokenize(batch).items()})
            d = l2v({k: v.to(device) for k, v in l2v.tokenize(batch).items()})
            loss = loss_fn(q.float(), d.float())
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            opt.step()
        sched.step()
        _log_step(records, "simcse", step, float(loss.detach()), sched.get_last_lr()[0], t0, log)
    return _save_dir_atomic(lambda d: l2v.model.save_pretrained(str(d)), out)


def run_text(cfg: TrainConfig, run_dir, log=None) -> dict:
    """MNTP then SimCSE into ``run_dir/text``; returns the encoder spec (see module doc)."""
    from ..models.text_encoder import check_model_folder

    out = Path(run_dir) / "text"
    if (out / "finished.json").exists() and (out / "encoder.json").exists():
        return {"skipped": str(out)}
    if not cfg.text.base:
        raise ConfigError(cfg.source, "'text.base' is not set (a local Llama/Mistral folder, or 'tiny')")
    out.mkdir(parents=True, exist_ok=True)
    texts = training_reports(cfg)
    if cfg.text.base == "tiny":
        from ..models.tiny_llama import write_tiny_llama

        base = out / "base"
        if not (base / "config.json").exists():
            _save_dir_atomic(lambda d: write_tiny_llama(d, cfg.text.tiny_hidden, cfg.text.tiny_layers,
                                                        cfg.text.tiny_heads, cfg.text.seed), base)
    else:
        base = check_model_folder(cfg.text.base, "language model")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    records: list = []
    log_path = out / "metrics.jsonl"
    if log_path.exists():
        records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    mntp, simcse = out / "mntp", out / "simcse"
    if not (mntp / "adapter_config.json").exists():
        records = [r for r in records if r["phase"] != "mntp"]
        train_mntp(cfg, base, texts, mntp, records, log)
        atomic_write_text(log_path, "".join(json.dumps(jsonable(r)) + "\n" for r in records))
    if not (simcse / "adapter_config.json").exists():
        records = [r for r in records if r["phase"] != "simcse"]
        train_simcse(cfg, base, mntp, texts, simcse, records, log)
        atomic_write_text(log_path, "".join(json.dumps(jsonable(r)) + "\n" for r in records))
    rel = lambda p: os.path.relpath(p, out)  # noqa: E731
    spec = {"kind": "llm2vec", "path": rel(base), "adapters": [rel(mntp), rel(simcse)], "max_length": cfg.text.max_length}
    atomic_write_json(out / "encoder.json", spec)
    losses = {ph: [r["loss"] for r in records if r["phase"] == ph] for ph in ("mntp", "simcse")}
    summary = {ph: {"first_loss": v[0] if v else None, "last_loss": float(np.mean(v[-5:])) if v else None,
                    "steps": len(v)} for ph, v in losses.items()}
    atomic_write_json(out / "finished.json", {"n_reports": len(texts), **summary})
    return {"encoder": str(out / "encoder.json"), "n_reports": len(texts), **summary,
            "finite": all(math.isfinite(x) for v in losses.values() for x in v)}
