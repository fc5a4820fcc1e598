"""Zero-shot classification: the released prompt file, both strategies, probabilities, prompt pairs."""
import json

import numpy as np
import pytest

from renalclip_lib.evaluation.zeroshot import (PromptFileError, class_scores, load_prompt_embeddings, load_prompt_file,
                                               pair_auc_distribution, prompt_pair_indices, save_prompt_embeddings,
                                               zeroshot_probabilities)


def test_released_prompts_expand_template_outer_description_inner():
    raw = json.loads(open("Resources/prompts/zeroshot_prompt.json", encoding="utf-8").read())
    prompts = load_prompt_file()
    assert set(prompts) == {"malignancy", "aggressiveness"}
    t, d = raw["templates"], raw["attributes"]["BMC"]["1"]
    assert len(prompts["malignancy"][1]) == len(t) * len(d) == 100
    assert prompts["malignancy"][1][0] == t[0].replace("____", d[0])
    assert prompts["malignancy"][1][1] == t[0].replace("____", d[1])
    assert prompts["malignancy"][1][len(d)] == t[1].replace("____", d[0])


@pytest.mark.parametrize("data, message", [
    ({"attributes": {"X": {"0": ["a"], "1": ["b"]}}}, "templates"),
    ({"templates": ["no blank"], "attributes": {"X": {"0": ["a"], "1": ["b"]}}}, "blank"),
    ({"templates": ["is ____"], "attributes": {"X": {"0": ["a"]}}}, "missing class 1"),
    ({"templates": ["is ____"], "attributes": {"X": {"0": ["a"], "1": []}}}, "non-empty list"),
])
def test_bad_prompt_files_are_one_clear_error(tmp_path, data, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(PromptFileError, match=message):
        load_prompt_file(path)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(PromptFileError, match="not valid JSON"):
        load_prompt_file(path)


def test_user_task_without_retraining(tmp_path):
    path = tmp_path / "cystic.json"
    path.write_text(json.dumps({"templates": ["The lesion is ____."], "attributes": {"cystic": {"0": ["solid"], "1": ["cystic", "fluid-filled"]}}}), encoding="utf-8")
    assert load_prompt_file(path) == {"cystic": {0: ["The lesion is solid."], 1: ["The lesion is cystic.", "The lesion is fluid-filled."]}}


def test_probabilities_and_strategies_on_constructed_embeddings():
    e = np.eye(4)
    prompts = {"t": {0: np.stack([e[0], e[1]]), 1: np.stack([e[2], (e[2] + e[3]) / np.sqrt(2)])}}
    img = np.stack([e[2], e[0] + 0.1 * e[3]])
    # Max: image 0 matches a class-1 prompt exactly (s1 = 1, s0 = 0): p = sigmoid(scale).
    p = zeroshot_probabilities(img, prompts, "max", logit_scale=10.0)["t"]
    assert p[0] == pytest.approx(1 / (1 + np.exp(-10.0)))
    assert p[1] < 0.5
    # Mean: class 1's mean prompt is normalise(e2 + (e2 + e3)/sqrt2); the cosine with e2 is analytic.
    m = e[2] + (e[2] + e[3]) / np.sqrt(2)
    assert class_scores(img[:1], prompts["t"], "mean")[0, 1] == pytest.approx(m[2] / np.linalg.norm(m))
    assert class_scores(img[:1], prompts["t"], "max")[0, 1] == pytest.approx(1.0)


def test_prompt_pairs_are_drawn_as_released():
    i0, i1 = prompt_pair_indices(100, 100, 1000, 42)
    np.random.seed(42)
    assert np.array_equal(i0, np.random.randint(0, 100, size=1000))
    assert np.array_equal(i1, np.random.randint(0, 100, size=1000))


def test_pair_aucs_of_a_perfectly_separable_cohort():
    rng = np.random.default_rng(0)
    c0, c1 = rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
    c0[:, 0] -= 20
    c1[:, 0] += 20
    labels = np.array([0] * 10 + [1] * 10)
    img = np.zeros((20, 8))
    img[:, 0] = np.where(labels == 1, 1.0, -1.0)
    dist = pair_auc_distribution(img + 0.01 * rng.normal(size=img.shape), labels, {0: c0, 1: c1}, n_pairs=50)
    assert dist["mean"] == 1.0 and dist["low"] == 1.0 and len(dist["aucs"]) == 50


def test_prompt_embeddings_round_trip(tmp_path):
    emb = {"malignancy": {0: np.ones((3, 4), np.float32), 1: np.zeros((3, 4), np.float32)}, "my/task": {0: np.eye(4)[:2], 1: np.eye(4)[2:]}}
    save_prompt_embeddings(tmp_path / "p.npz", emb)
    back = load_prompt_embeddings(tmp_path / "p.npz")
    assert set(back) == set(emb) and np.array_equal(back["my/task"][1], np.eye(4)[2:].astype(np.float32))


def test_description_aucs_find_the_description_read_the_wrong_way():
    """Two templates x two descriptions per class (template outer). Images lie along e0 (negatives)
    or e1 (positives); class 0's second description points at e1, as an encoder that ignores
    "no evidence of ..." would place it. Its AUC is 1, the other class-0 description's 0; a
    score per template is the mean over that description's two prompts."""
    from renalclip_lib.evaluation.zeroshot import description_aucs

    e = np.eye(4)
    y = np.array([0, 0, 0, 1, 1, 1])
    rng = np.random.default_rng(0)
    img = np.where(y[:, None] == 1, e[1], e[0]) + 0.05 * rng.standard_normal((6, 4))
    classes = {0: np.stack([e[0], e[1], e[0] + 0.1 * e[2], e[1] + 0.1 * e[3]]),
               1: np.stack([e[1], e[2], e[1] + 0.1 * e[2], e[2]])}
    descriptions = {0: ["well-defined", "no evidence of thrombus"], 1: ["thrombus", "unrelated"]}
    out = description_aucs(img, y, classes, descriptions)
    assert [(d["class"], d["description"]) for d in out] == [(0, "well-defined"), (0, "no evidence of thrombus"),
                                                           (1, "thrombus"), (1, "unrelated")]
    assert [d["auc"] for d in out[:3]] == [0.0, 1.0, 1.0]
    from sklearn.metrics import roc_auc_score

    n = img / np.linalg.norm(img, axis=1, keepdims=True)
    assert out[3]["auc"] == pytest.approx(roc_auc_score(y, n @ e[2]))     # both its prompts are e2
    assert description_aucs(img, y, {0: classes[0][:3], 1: classes[1]}, descriptions) is None   # 3 prompts, 2 descriptions
