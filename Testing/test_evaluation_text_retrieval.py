"""Report metrics against nltk and rouge-score, WordNet set-up, and Recall@K against a plain ranking."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from nltk.translate.bleu_score import sentence_bleu
from rouge_score import rouge_scorer

from renalclip_lib.evaluation.retrieval import correct_ranks, retrieval_hits
from renalclip_lib.evaluation.text_metrics import (DEBIAN_WORDNET, WordNetMissingError, ensure_wordnet,
                                                   load_wordnet, report_scores, tokenize)

REFS = ["Findings: a 3.2 cm enhancing solid mass in the left kidney, exophytic. Impression: renal cell carcinoma.",
        "Findings: a simple cyst of the right kidney. Impression: benign cyst, no follow-up.",
        "Findings: heterogeneous mass with necrosis near the renal sinus. Impression: suspicious for malignancy."]
PREDS = ["Findings: an enhancing solid mass in the left kidney. Impression: renal cell carcinoma.",
         "Findings: a cyst in the right kidney. Impression: benign.",
         "Impression: oncocytoma."]
HAVE_WORDNET = (DEBIAN_WORDNET / "data.noun").is_file()


def test_bleu_and_rouge_match_the_reference_libraries():
    got = report_scores(REFS, PREDS, wordnet=None)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, (r, p) in enumerate(zip(REFS, PREDS)):
            rt, pt = tokenize(r), tokenize(p)
            assert got["bleu1"][i] == pytest.approx(sentence_bleu([rt], pt, weights=(1,)))
            assert got["bleu2"][i] == pytest.approx(sentence_bleu([rt], pt, weights=(0.5, 0.5)))
            assert got["bleu4"][i] == pytest.approx(sentence_bleu([rt], pt, weights=(0.25,) * 4))
            assert got["rouge_l"][i] == pytest.approx(scorer.score(r, p)["rougeL"].fmeasure)
    assert np.isnan(got["meteor"]).all()                    # no WordNet given: METEOR not computed
    assert tokenize("3.2 cm, L-kidney.") == ["3.2", "cm", ",", "l-kidney", "."]


def test_missing_wordnet_is_a_clear_error_and_never_a_download(tmp_path):
    with pytest.raises(WordNetMissingError, match="wordnet-base"):
        ensure_wordnet(tmp_path / "nltk_data", source=tmp_path / "nowhere")
    assert load_wordnet(tmp_path / "nltk_data", source=tmp_path / "nowhere") is None
    assert not (tmp_path / "nltk_data" / "corpora" / "wordnet").exists()


@pytest.mark.skipif(not HAVE_WORDNET, reason="Debian packages wordnet-base + wordnet-sense-index not installed")
def test_meteor_with_debian_wordnet_matches_nltk(tmp_path):
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    from nltk.translate.meteor_score import meteor_score

    folder = ensure_wordnet(tmp_path / "nltk_data")
    assert (folder / "lexnames").is_file() and not (folder / "data.noun").is_symlink()
    reader = load_wordnet(tmp_path / "nltk_data")
    assert isinstance(reader, WordNetCorpusReader) and Path(reader.root.path) == folder
    got = report_scores(REFS, PREDS, reader)["meteor"]
    for i, (r, p) in enumerate(zip(REFS, PREDS)):
        assert got[i] == pytest.approx(meteor_score([tokenize(r)], tokenize(p), wordnet=reader))
    # synonyms count: WordNet is really used ("car" ~ "auto")
    assert meteor_score([["the", "car", "is", "fast"]], ["the", "auto", "is", "fast"], wordnet=reader) > 0.99


def _plain_ranks(img, txt):
    """Reference: sort every row, count wrong items placed at or before the correct one (ties pessimistic)."""
    a = img / np.linalg.norm(img, axis=1, keepdims=True)
    b = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    sim = a @ b.T
    n = len(sim)
    i2t = [sum(1 for j in range(n) if j != i and sim[i, j] >= sim[i, i]) for i in range(n)]
    t2i = [sum(1 for j in range(n) if j != i and sim[j, i] >= sim[i, i]) for i in range(n)]
    return np.array(i2t), np.array(t2i)


def test_recall_at_k_matches_a_plain_ranking():
    rng = np.random.default_rng(0)
    shared = rng.normal(size=(40, 8))
    img, txt = shared + rng.normal(size=(40, 8)), shared + rng.normal(size=(40, 8))
    i2t, t2i = correct_ranks(img, txt)
    ref_i2t, ref_t2i = _plain_ranks(img, txt)
    assert np.array_equal(i2t, ref_i2t) and np.array_equal(t2i, ref_t2i)
    hits = retrieval_hits(img, txt)
    for k in (1, 3, 5):
        assert hits[f"i2t_recall@{k}"].mean() == pytest.approx((ref_i2t < k).mean())
        assert hits[f"t2i_recall@{k}"].mean() == pytest.approx((ref_t2i < k).mean())
    # argsort-based Recall@1 agrees when there are no ties
    cos = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
    assert hits["i2t_recall@1"].mean() == pytest.approx((np.argmax(cos, axis=1) == np.arange(40)).mean())
    assert hits["t2i_recall@1"].mean() == pytest.approx((np.argmax(cos, axis=0) == np.arange(40)).mean())


def test_identical_embeddings_score_zero_not_one():
    img = np.ones((10, 4))
    hits = retrieval_hits(img, img)
    assert all(v.mean() == 0.0 for v in hits.values())
