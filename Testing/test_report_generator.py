"""Report generator: Mistral tokenizer ids, the loss mask, what each stage trains, the saved bundle,
bad LLM folders and tokenizers, and the stage end to end on a tiny cohort."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from renalclip_lib.models.report_generator import (IGNORE, LLMFolderError, ReportGenerator,  # noqa: E402
                                                   check_llm_folder, split_report)
from renalclip_lib.models.tiny_mistral import build_mistral, tiny_mistral_config  # noqa: E402
from renalclip_lib.models.tokenizers import TokenizerError, mistral_tokenizer  # noqa: E402

REPORTS = ["Findings: A 3.2 cm solid mass is seen in the upper pole of the left kidney.\nImpression: Left renal mass.",
           "Findings: A cyst in the right kidney.\nImpression: Right renal cyst.",
           "Findings: The right kidney is normal.\nImpression: Normal right kidney."]


@pytest.fixture(scope="module")
def tok():
    return mistral_tokenizer()


def _gen(tok, feature_dim=6, seed=0):
    torch.manual_seed(seed)
    llm = build_mistral(tiny_mistral_config(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                            intermediate_size=64), seed=seed)
    gen = ReportGenerator(llm, tok, feature_dim, n_image_tokens=8, max_report_tokens=64)
    gen.freeze_llm()
    return gen


def test_mistral_tokenizer_gives_the_published_ids(tok):
    # Mistral-7B's chat markers and "Hello" as every Mistral v1 tokenizer encodes them.
    assert tok("[INST]", add_special_tokens=False).input_ids == [733, 16289, 28793]
    assert tok("[/INST]", add_special_tokens=False).input_ids == [733, 28748, 16289, 28793]
    assert tok("Hello").input_ids == [1, 22557]
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id, len(tok)) == (1, 2, 0, 0, 32000)
    text = "Findings: A 3.2 x 2.9 cm mass (45 HU) — left kidney."
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


def test_loss_mask_covers_only_the_report(tok):
    gen = _gen(tok)
    feats = torch.randn(3, 6)
    batch = gen.build_inputs(feats, REPORTS)
    prompt = 1 + len(tok("[INST] ", add_special_tokens=False).input_ids) + 8 \
        + len(tok(gen.instruction + " [/INST]", add_special_tokens=False).input_ids)
    labels = batch["labels"]
    assert (labels[:, :prompt] == IGNORE).all()                     # <s>, [INST], image tokens, instruction
    for i, text in enumerate(REPORTS):
        want = tok(text, add_special_tokens=False).input_ids + [2]  # report + </s>
        got = labels[i, prompt:]
        assert got[:len(want)].tolist() == want
        assert (got[len(want):] == IGNORE).all()                    # padding
        assert batch["attention_mask"][i].sum() == prompt + len(want)
    # Our loss equals transformers' own causal-LM loss with those labels ...
    ours = gen(feats, REPORTS)
    ref = gen.llm(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"], labels=labels).loss
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    # ... and the image tokens get a gradient only through the report tokens' predictions.
    feats.requires_grad_(True)
    gen(feats, REPORTS).backward()
    assert feats.grad.abs().sum() > 0


def test_language_model_pretraining_learns_the_report_not_the_prompt(tok, tmp_path):
    """The tiny LLM's pre-training loss is the generator's report-token loss with the image tokens at
    zero; training changes every LLM weight it checkpoints, and never the (zero) projector."""
    from renalclip_lib.training.loop import fit
    from renalclip_lib.training.options import OptimOptions
    from renalclip_lib.training.report_stage import LanguageModelTask

    gen = _gen(tok)
    task = LanguageModelTask(gen)
    batch = {"text": REPORTS}
    loss, _ = task.loss(task.model, batch, torch.device("cpu"))
    inputs = gen.build_inputs(torch.zeros(3, gen.feature_dim), REPORTS)
    assert (inputs["inputs_embeds"][:, len(gen.prefix_ids):len(gen.prefix_ids) + 8] == 0).all()
    ref = gen.llm(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
                  labels=inputs["labels"]).loss
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    before = {k: v.clone() for k, v in gen.llm.state_dict().items()}
    data = [{"text": REPORTS[i % 3], "index": i} for i in range(6)]
    loader = torch.utils.data.DataLoader(data, batch_size=3)
    fit(task, loader, loader, tmp_path, OptimOptions(epochs=2, batch_size=3, lr=1e-2, amp="fp32", progress=False))
    last = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)["model"]
    assert set(last) == {f"llm.{k}" for k in before}          # the whole LLM resumes, not the projector
    changed = [k for k, v in gen.llm.state_dict().items() if not torch.equal(v, before[k])]
    assert "lm_head.weight" in changed and len(changed) >= len(before) - 1
    assert gen.projector.weight.abs().sum() == 0 and gen.projector.bias.abs().sum() == 0


def test_image_conditioned_language_model_learns_the_side_from_the_image(tok, tmp_path):
    """The stand-in LLM trained on (image, report) pairs checkpoints the LLM and the projector and
    learns to read its image tokens: on new images it prefers the report with the right side."""
    from renalclip_lib.training.loop import fit
    from renalclip_lib.training.options import OptimOptions
    from renalclip_lib.training.report_stage import ConditionedLanguageModelTask

    side = {1: "Findings: A mass in the left kidney.\nImpression: Left renal mass.",
            -1: "Findings: A mass in the right kidney.\nImpression: Right renal mass."}

    def pairs(n, seed):
        g = torch.Generator().manual_seed(seed)
        signs = torch.where(torch.rand(n, generator=g) < 0.5, 1, -1)
        feats = torch.randn(n, 6, generator=g) * 0.3
        feats[:, 0] += signs
        return feats, [int(s) for s in signs]

    torch.manual_seed(0)
    llm = build_mistral(tiny_mistral_config(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                                            intermediate_size=64), seed=0)
    gen = ReportGenerator(llm, tok, 6, n_image_tokens=8, max_report_tokens=64)
    task = ConditionedLanguageModelTask(gen)
    feats, signs = pairs(48, 0)
    loss, _ = task.loss(task.model, {"features": feats[:3], "report": [side[s] for s in signs[:3]]}, torch.device("cpu"))
    assert loss.item() == pytest.approx(gen(feats[:3], [side[s] for s in signs[:3]]).item(), rel=1e-6)
    llm_before = {k: v.clone() for k, v in gen.llm.state_dict().items()}
    proj_before = gen.projector.weight.detach().clone()
    data = [{"features": f, "report": side[s], "index": i} for i, (f, s) in enumerate(zip(feats, signs))]
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    fit(task, loader, loader, tmp_path, OptimOptions(epochs=40, batch_size=8, lr=1e-2, amp="fp32", progress=False))
    last = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)["model"]
    assert set(last) == {f"llm.{k}" for k in llm_before} | {"projector.weight", "projector.bias"}
    assert not torch.equal(proj_before, gen.projector.weight)
    assert not torch.equal(llm_before["lm_head.weight"], gen.llm.state_dict()["lm_head.weight"])
    test, test_signs = pairs(40, 1)
    gen.eval()
    with torch.no_grad():
        right = [gen(f[None], [side[s]]).item() < gen(f[None], [side[-s]]).item() for f, s in zip(test, test_signs)]
    assert sum(right) >= 36, sum(right)


def _fit(gen, lora, tmp_path, epochs=2):
    from renalclip_lib.training.loop import fit
    from renalclip_lib.training.options import OptimOptions
    from renalclip_lib.training.report_stage import ReportTask

    data = [{"features": torch.randn(6), "report": REPORTS[i % 3], "index": i} for i in range(6)]
    loader = torch.utils.data.DataLoader(data, batch_size=3)
    opt = OptimOptions(epochs=epochs, batch_size=3, lr=1e-2, head_lr=1e-2, amp="fp32", progress=False)
    return fit(ReportTask(gen, lora=lora), loader, loader, tmp_path, opt)


def _llm_base_state(gen):
    return {k.replace("base_model.model.", "").replace("base_layer.", ""): v.clone()
            for k, v in gen.llm.named_parameters() if "lora_" not in k}


def test_stage_a_trains_the_projector_only(tok, tmp_path):
    gen = _gen(tok)
    llm_before = {k: v.clone() for k, v in gen.llm.state_dict().items()}
    proj_before = gen.projector.weight.detach().clone()
    _fit(gen, lora=False, tmp_path=tmp_path)
    after = gen.llm.state_dict()
    assert all(torch.equal(llm_before[k], after[k]) for k in llm_before)
    assert not torch.equal(proj_before, gen.projector.weight)
    saved = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)["model"]
    assert set(saved) == {"projector.weight", "projector.bias"}    # the frozen LLM is never checkpointed


def test_stage_b_trains_adapters_and_projector_not_the_base(tok, tmp_path):
    gen = _gen(tok)
    base_before = _llm_base_state(gen)
    gen.add_lora(r=4, alpha=4, dropout=0.2, targets=["q_proj", "v_proj"])
    lora_b = {k: v.clone() for k, v in gen.llm.named_parameters() if "lora_B" in k}
    assert {k.split(".")[-4] for k in lora_b} == {"q_proj", "v_proj"}
    _fit(gen, lora=True, tmp_path=tmp_path)
    base_after = _llm_base_state(gen)
    assert base_before.keys() == base_after.keys()
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)
    assert any(not torch.equal(v, dict(gen.llm.named_parameters())[k]) for k, v in lora_b.items())


def test_save_load_round_trip_generates_the_same_text(tok, tmp_path):
    gen = _gen(tok)
    llm_dir = tmp_path / "llm"
    gen.llm.save_pretrained(llm_dir)
    gen.llm_source = str(llm_dir)
    gen.add_lora()
    with torch.no_grad():
        for n, p in gen.llm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)                                   # adapters that change the output
    feats = torch.randn(2, 6)
    before = gen.generate_from_features(feats, greedy=True, max_new_tokens=12)
    beams = gen.generate_from_features(feats, max_new_tokens=12)
    assert len(beams) == 2 and all(isinstance(t, str) for t in beams)
    gen.save(tmp_path / "bundle")
    names = {p.name for p in (tmp_path / "bundle").iterdir()}
    assert {"report_generator.json", "projector.pt", "adapter", "tokenizer", "llm"} <= names
    loaded = ReportGenerator.load(tmp_path / "bundle")
    assert loaded.generate_from_features(feats, greedy=True, max_new_tokens=12) == before
    cfg = json.loads((tmp_path / "bundle" / "report_generator.json").read_text(encoding="utf-8"))
    assert cfg["lora"]["targets"] == ["q_proj", "v_proj"] and cfg["n_image_tokens"] == 8


def test_bad_llm_folder_and_tokenizer_and_features(tok, tmp_path):
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    bert = tmp_path / "bert"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(bert)
    with pytest.raises(LLMFolderError, match="model_type 'bert' is not a Mistral or Llama"):
        check_llm_folder(bert)
    with pytest.raises(LLMFolderError, match="LLM folder not found"):
        check_llm_folder(tmp_path / "nowhere")
    bare = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer)     # no bos/eos/unk/pad declared
    with pytest.raises(TokenizerError, match="lacks the special token"):
        ReportGenerator(build_mistral(tiny_mistral_config(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                                          intermediate_size=64)), bare, 6)
    with pytest.raises(Exception, match=r"shape \(batch, 6\)"):
        _gen(tok).generate_from_features(torch.randn(2, 5))


def test_folded_projector_on_raw_features_is_the_trained_one_on_standardised_features():
    from renalclip_lib.models.report_generator import feature_standardisation, fold_standardisation

    rng = np.random.default_rng(0)
    raw = (rng.gamma(2.0, 1.0, (50, 12)) * rng.uniform(0.01, 30.0, 12)).astype(np.float32)   # post-ReLU-like scales
    mean, std = feature_standardisation(raw)
    np.testing.assert_allclose(mean, raw.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, raw.std(0), rtol=1e-5)
    torch.manual_seed(0)
    proj = torch.nn.Linear(12, 6)
    x = torch.from_numpy(raw)
    with torch.no_grad():
        expected = proj((x - torch.from_numpy(mean)) / torch.from_numpy(std))
        fold_standardisation(proj, mean, std)
        torch.testing.assert_close(proj(x), expected, rtol=1e-5, atol=1e-5)
    const = np.ones((4, 3), np.float32)                       # a dead feature: std floored, no division by 0
    assert np.all(np.isfinite(feature_standardisation(const)[1])) and feature_standardisation(const)[1].min() > 0


def test_split_report():
    assert split_report("Findings: A mass.\nImpression: RCC.") == ("A mass.", "RCC.")
    assert split_report("impression: Normal. ") == ("", "Normal.")
    assert split_report("A mass in the left kidney.") == ("A mass in the left kidney.", "")


@pytest.mark.slow
def test_report_stage_end_to_end(tmp_path, capsys):
    from renalclip_lib.cli import main
    from renalclip_lib.phantom import write_cohort

    manifest = write_cohort(tmp_path / "cohort", n_patients=14, seed=3, matrix=64,
                            cohorts={"pretrain": 0.3, "internal": 0.5, "external_noisy": 0.2})
    assert main(["preprocess", "--manifest", str(manifest), "--out", str(tmp_path / "cache"), "--kind", "lesion",
                 "--quiet"]) == 0
    quick = ["model.width=4", "model.embed_dim=16", "report.init=random", "report.tiny.hidden_size=32",
             "report.tiny.intermediate_size=64", "report.tiny.num_layers=1", "report.tiny.optim.epochs=1",
             "report.stage_a.epochs=1", "report.stage_b.epochs=1", "report.decoding.max_new_tokens=16",
             f"data.cache={tmp_path / 'cache'}", f"data.manifest={manifest}"]
    args = ["train", "report", "--config", "Resources/configs/demo.yaml", "--out", str(tmp_path / "run"), "--quiet"]
    for q in quick:
        args += ["--set", q]
    assert main(args) == 0
    out = tmp_path / "run" / "report"
    rows = list(csv.DictReader(open(out / "predictions.csv", encoding="utf-8")))
    assert rows and {r["cohort"] for r in rows} <= {"internal", "external_noisy"}
    assert all(r["report_true"].startswith("Findings: ") for r in rows)
    gen = ReportGenerator.load(out / "model")
    assert gen.feature_dim == 32 and gen.n_image_tokens == 8
    assert (out / "llm" / "projector.pt").exists()                 # the stand-in LLM learnt with image tokens
    # demo.yaml standardises the features in training; the saved projector takes raw features.
    from renalclip_lib.data.roi_cache import open_cache
    from renalclip_lib.training.report_stage import lesion_reports

    assert json.loads((out / "finished.json").read_text(encoding="utf-8"))["standardized_features"] is True
    _, index = open_cache(tmp_path / "cache", "lesion")
    train_rows = [i for i, r in enumerate(index) if r["cohort"] in ("pretrain", "internal")
                  and r["split"] not in ("val", "test") and r["patient_id"] in lesion_reports(manifest)]
    raw = np.load(out / "features.npz")["features"]
    stats = np.load(out / "feature_stats.npz")
    assert sorted(stats["rows"].tolist()) == sorted(train_rows)
    np.testing.assert_allclose(stats["mean"], raw[train_rows].mean(0), rtol=1e-4, atol=1e-6)
    trained = torch.load(out / "stage_b" / "best.pt", weights_only=True)["state"]
    x = torch.from_numpy(raw)
    with torch.no_grad():
        on_std = torch.nn.functional.linear((x - torch.from_numpy(stats["mean"])) / torch.from_numpy(stats["std"]),
                                            trained["projector.weight"], trained["projector.bias"])
        torch.testing.assert_close(gen.projector(x), on_std, rtol=1e-4, atol=1e-4)
    assert main(["evaluate", "--model", f"gen={out / 'predictions.csv'}", "--out", str(tmp_path / "eval"),
                 "--bootstrap", "20"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    text = json.dumps(metrics)
    assert "side_agreement" in text and "consistency" in text and "bleu1" in text
    mtime = (out / "finished.json").stat().st_mtime_ns
    assert main(args) == 0                                          # finished: not run again
    assert (out / "finished.json").stat().st_mtime_ns == mtime
    # A finished stand-in without its projector (trained on text alone) is never reused silently.
    (out / "llm" / "projector.pt").unlink()
    (out / "finished.json").unlink()
    assert main(args) != 0
    assert "projector.pt" in capsys.readouterr().err
