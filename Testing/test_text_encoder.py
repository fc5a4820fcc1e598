"""Report text as released, the MiniLM and LLM2Vec text encoders, the feature cache and the text stage."""
import csv
import math
import random

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from renalclip_lib.text.reports import kidney_report, report_variants, sentence_shuffling  # noqa: E402


def test_report_formatting_follows_the_release():
    findings = "1. Mass 4.9 cm, R.E.N.A.L score 7\n2. No hydronephrosis"
    # Numbered prefixes go, decimals and the abbreviation survive, lines end with a full stop,
    # and "Impression:" has no space after it. The release preprocesses twice: the first pass ends "score 7" with "." and the second then
    # reads "7.<newline>" as a numbered prefix and removes it (a quirk the published features carry).
    assert kidney_report(findings, "Likely RCC", "left") == \
        "Findings: Mass 4.9 cm, R.E.N.A.L score No hydronephrosis.\nImpression:Likely RCC."
    assert kidney_report("Mass 4.9 cm\nGrade 2 lesion", "x", "left") == "Findings: Mass 4.9 cm.\nGrade 2 lesion.\nImpression:x."
    assert kidney_report("", "", "right", has_lesion=False) == "Findings: No abnormalities in the right kidney.\nImpression:"
    assert kidney_report("  ", "x", "left", has_lesion=True).startswith("Findings: Left kidney assessment unavailable.")


def test_shuffled_copies_hold_the_same_sentences():
    f = "A 3.5 cm mass in the upper pole. It enhances avidly; washout is seen. No thrombus."
    variants = report_variants(f, "Malignant. Consider surgery.", "left", True, n_shuffles=4, seed=3)
    assert len(variants) == 5 and variants == report_variants(f, "Malignant. Consider surgery.", "left", True, 4, 3)
    original = ["A 3.5 cm mass in the upper pole.", " It enhances avidly;", " washout is seen.", " No thrombus."]
    for v in variants[1:]:
        body = v[len("Findings: "):v.index("\nImpression:")]
        assert all(p.strip() in body for p in original)
        assert sorted(body.replace(" ", "")) == sorted("".join(original).replace(" ", ""))
        assert "3.5 cm" in v
    assert len(set(variants)) > 1
    assert sentence_shuffling("One.\nTwo.", random.Random(0)) in ("One.Two.", "Two.One.")


@pytest.fixture(scope="module")
def minilm():
    from renalclip_lib.models.text_encoder import demo_text_encoder_spec, load_text_encoder

    return load_text_encoder(demo_text_encoder_spec())


def test_minilm_mean_pooling_matches_a_direct_computation(minilm):
    import torch
    from transformers import AutoModel, AutoTokenizer

    text = "Findings: A 4 cm enhancing mass in the left kidney.\nImpression:Likely renal cell carcinoma."
    tok = AutoTokenizer.from_pretrained(minilm.spec["path"])
    model = AutoModel.from_pretrained(minilm.spec["path"]).eval()
    with torch.no_grad():
        expected = model(**tok([text], return_tensors="pt")).last_hidden_state[0].mean(0).numpy()
    got = minilm.encode([text])
    assert got.shape == (1, 384) and minilm.dim == 384 and got.dtype == np.float32
    np.testing.assert_allclose(got[0], expected, atol=1e-5)
    # Padding in a batch with a longer text changes nothing (the mask excludes the pads).
    batch = minilm.encode(["short report", text + " " + text])
    np.testing.assert_allclose(batch[1], minilm.encode([text + " " + text])[0], atol=1e-5)
    np.testing.assert_allclose(batch[0], minilm.encode(["short report"])[0], atol=1e-5)


def test_minilm_is_semantic_and_handles_bad_text(minilm):
    from renalclip_lib.models.text_encoder import TextEncoderError

    e = minilm.encode(["a malignant renal tumour with washout", "renal cell carcinoma with contrast washout",
                       "the weather is sunny today"])
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2
    with pytest.raises(TextEncoderError, match="text 1 is empty"):
        minilm.encode(["ok", "   "])
    minilm.encode(["word " * 400])
    assert minilm.last_truncated == 1
    assert np.isfinite(minilm.encode(["左肾占位, 约 3.4 cm", "Läsion ñ"])).all()


def test_encoder_folder_without_files_is_one_clear_error(tmp_path):
    from renalclip_lib.models.text_encoder import TextEncoderError, load_text_encoder

    with pytest.raises(TextEncoderError, match="no config.json"):
        load_text_encoder({"kind": "bert", "path": str(tmp_path)})
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(TextEncoderError, match="no weights"):
        load_text_encoder({"kind": "llm2vec", "path": str(tmp_path)})
    with pytest.raises(TextEncoderError, match="kind must be one of"):
        load_text_encoder({"kind": "gpt", "path": str(tmp_path)})


def test_feature_cache_encodes_each_text_once(minilm, tmp_path):
    from renalclip_lib.text.feature_cache import TextFeatureCache

    cache = TextFeatureCache(tmp_path)
    texts = ["report one", "report two", "report one"]
    a = cache.encode(minilm, texts)
    assert cache.last_encoded == 2
    np.testing.assert_allclose(a[0], a[2])
    b = TextFeatureCache(tmp_path).encode(minilm, ["report two", "report three"])
    np.testing.assert_allclose(b[0], a[1], atol=1e-6)
    assert np.allclose(b[1], minilm.encode(["report three"])[0], atol=1e-5)


def test_mntp_masking_rule():
    import torch

    from renalclip_lib.training.text_stage import mask_tokens

    ids = torch.randint(10, 1000, (200, 100))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = True
    inputs, labels = mask_tokens(ids, special, mask_id=5, vocab=1000, p=0.2, gen=torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert abs(chosen[:, 1:].float().mean().item() - 0.2) < 0.01 and not chosen[:, 0].any()
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
    masked = (inputs == 5) & chosen
    assert abs(masked.sum().item() / chosen.sum().item() - 0.8) < 0.02


def _report_manifest(path, n=8):
    from renalclip_lib.phantom import generate_patient

    rows = []
    for i in range(n):
        pc = generate_patient(i, "pretrain", matrix=32)
        rows.append({"patient_id": f"P{i}", "cohort": "pretrain", "split": "pretrain", "phase": "A",
                     "image_path": "none.nii.gz", **pc.reports})
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.mark.slow
def test_text_stage_mntp_then_simcse_on_a_tiny_llama(tmp_path):
    from renalclip_lib.cli import main
    from renalclip_lib.models.text_encoder import load_text_encoder, read_spec_file

    manifest = _report_manifest(tmp_path / "manifest.csv")
    run = tmp_path / "run"
    args = ["train", "text", "--config", "Resources/configs/demo.yaml", "--out", str(run), "--quiet",
            "--set", f"data.manifest={manifest}", "--set", "text.mntp.steps=3", "--set", "text.simcse.steps=3",
            "--set", "text.tiny_hidden=32", "--set", "text.mntp.batch_size=4", "--set", "text.simcse.batch_size=4"]
    assert main(args) == 0
    import json

    done = json.loads((run / "text" / "finished.json").read_text(encoding="utf-8"))
    # A random model predicts a near-uniform distribution over the 32,000 tokens.
    assert abs(done["mntp"]["first_loss"] - math.log(32000)) < 0.5
    assert math.isfinite(done["simcse"]["last_loss"]) and done["simcse"]["steps"] == 3
    spec = read_spec_file(run / "text" / "encoder.json")
    assert [p.split("/")[-1] for p in spec["adapters"]] == ["mntp", "simcse"]
    enc = load_text_encoder(spec)
    feats = enc.encode(["Findings: mass.\nImpression:RCC.", "Findings: normal.\nImpression:"])
    assert feats.shape == (2, 32) and np.isfinite(feats).all() and not np.allclose(feats[0], feats[1])
    mtime = (run / "text" / "simcse" / "adapter_model.safetensors").stat().st_mtime_ns
    assert main(args) == 0          # finished: not run again
    assert (run / "text" / "simcse" / "adapter_model.safetensors").stat().st_mtime_ns == mtime
