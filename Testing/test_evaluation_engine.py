"""The evaluation engine end to end in Python: every number of a small run against scikit-learn /
scikit-survival on the same patients and the same resamples, and the edge cases (one class, NaN
scores, all censored, follow-up too short, missing reports, WordNet missing) as null + note."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from sksurv.metrics import concordance_index_censored, cumulative_dynamic_auc
from sksurv.util import Surv

from renalclip_lib.evaluation.bootstrap import bootstrap_indices, seed_for
from renalclip_lib.evaluation.engine import Settings, evaluate
from renalclip_lib.evaluation.predictions import CohortSpec, read_predictions
from renalclip_lib.evaluation.synthetic import synthetic_predictions, synthetic_truth
from renalclip_lib.evaluation.tables import build_tables

N_BOOT = 40


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    truth = synthetic_truth({"site1": 60, "site2": 50, "site3": 70}, seed=0, reports=True)
    files = {}
    for k, name in enumerate(("Base", "Ours")):
        df = synthetic_predictions(truth, skill=0.8 + 1.2 * k, seed=5 + k, reports=True)
        df = df.sample(frac=1.0, random_state=k)                 # row order must not matter
        files[name] = d / f"{name}.csv"
        df.to_csv(files[name], index=False)
    models = [read_predictions(p, n) for n, p in files.items()]
    spec = CohortSpec(order=["site1", "pooled", "site3"], groups={"pooled": ["site1", "site2"]})
    res = evaluate(models, spec, Settings(n_boot=N_BOOT, seed=7, times=(12.0, 36.0, 400.0)))
    return res, {n: pd.read_csv(p, dtype={"patient_id": str}) for n, p in files.items()}


def _cohort(df, members):
    return df[df["cohort"].isin(members)].sort_values("patient_id").reset_index(drop=True)


def _ci(values):
    v = np.asarray([x for x in values if np.isfinite(x)])
    return tuple(np.percentile(v, [2.5, 97.5]))


def test_cohort_order_and_groups(run):
    res, _ = run
    assert res.cohorts == ["site1", "pooled", "site3", "site2"]
    assert res.metrics["Ours"]["malignancy"]["pooled"]["roc_auc"].n == 110


@pytest.mark.parametrize("cohort,members", [("site3", ["site3"]), ("pooled", ["site1", "site2"])])
def test_binary_and_multiclass_values_and_cis_match_sklearn(run, cohort, members):
    res, frames = run
    df = _cohort(frames["Ours"], members)
    idx = bootstrap_indices(len(df), N_BOOT, seed_for(7, cohort))
    y, s = df["malignancy_true"].to_numpy(), df["malignancy_prob"].to_numpy()
    m = res.metrics["Ours"]["malignancy"][cohort]
    assert m["roc_auc"].value == pytest.approx(roc_auc_score(y, s))
    assert (m["roc_auc"].ci_low, m["roc_auc"].ci_high) == pytest.approx(
        _ci([roc_auc_score(y[i], s[i]) for i in idx]))
    assert m["pr_auc"].value == pytest.approx(average_precision_score(y, s))
    assert (m["pr_auc"].ci_low, m["pr_auc"].ci_high) == pytest.approx(
        _ci([average_precision_score(y[i], s[i]) for i in idx]))
    yr = df["renal_N_true"].to_numpy()
    pr = df[["renal_N_prob_0", "renal_N_prob_1", "renal_N_prob_2"]].to_numpy()
    r = res.metrics["Ours"]["renal_N"][cohort]["roc_auc"]
    assert r.value == pytest.approx(roc_auc_score(yr, pr, multi_class="ovr"))
    ref = [roc_auc_score(yr[i], pr[i], multi_class="ovr") if len(set(yr[i])) == 3 else np.nan for i in idx]
    assert (r.ci_low, r.ci_high) == pytest.approx(_ci(ref))
    z = res.metrics["Ours"]["zeroshot_malignancy"][cohort]["roc_auc"]
    assert z.value == pytest.approx(roc_auc_score(y, df["zeroshot_malignancy_prob"]))


def test_survival_values_match_sksurv_on_malignant_cases(run):
    res, frames = run
    df = _cohort(frames["Base"], ["site3"])
    df = df[df["malignancy_true"] == 1].reset_index(drop=True)
    t, e, r = df["rfs_time"].to_numpy(), df["rfs_event"].to_numpy().astype(bool), df["risk"].to_numpy()
    m = res.metrics["Base"]["rfs"]["site3"]
    assert m["c_index"].n == len(df) and m["c_index"].extra["n_events"] == e.sum()
    assert m["c_index"].value == pytest.approx(concordance_index_censored(e, t, r)[0])
    idx = bootstrap_indices(len(df), N_BOOT, seed_for(7, "site3"))
    assert (m["c_index"].ci_low, m["c_index"].ci_high) == pytest.approx(
        _ci([concordance_index_censored(e[i], t[i], r[i])[0] for i in idx]))
    y = Surv.from_arrays(e, t)
    assert m["td_auc@36m"].value == pytest.approx(cumulative_dynamic_auc(y, y, r, [36.0])[0][0])
    assert m["td_auc@400m"].value is None and "outside this cohort's follow-up" in m["td_auc@400m"].note
    assert m["km_hr"].ok and m["cox_multi_hr[risk]"].ok and m["cox_hr[stage II vs I]"].ok


def test_report_and_meteor_note(run):
    res, frames = run
    rep = res.metrics["Ours"]["report"]["site1"]
    assert rep["bleu1"].ok and rep["rouge_l"].ok
    assert rep["meteor"].value is None and "WordNet" in rep["meteor"].note
    assert any("METEOR" in n for n in res.notes)


def test_metrics_json_shape(run):
    res, _ = run
    js = res.to_json()
    cell = js["Ours"]["malignancy"]["site1"]["roc_auc"]
    assert set(cell) >= {"value", "ci_low", "ci_high", "n"} and cell["n"] == 60
    assert js["Ours"]["report"]["site1"]["meteor"]["value"] is None


def _edge_frame():
    rng = np.random.default_rng(0)
    n = 30
    df = pd.DataFrame({"patient_id": [f"q{i:02d}" for i in range(n)], "cohort": ["one_class"] * 10 + ["ok"] * 20})
    df["malignancy_true"] = np.r_[np.ones(10), rng.integers(0, 2, 20)].astype(int)
    df["malignancy_prob"] = rng.random(n)
    df.loc[15, "malignancy_prob"] = np.nan
    df["renal_R_true"] = np.r_[np.zeros(10), rng.integers(0, 2, 20)].astype(int)   # class 2 never present
    for k in range(3):
        df[f"renal_R_prob_{k}"] = rng.random(n)
    df["risk"] = rng.normal(size=n)
    df["os_time"] = rng.uniform(1, 50, n).round()
    df["os_event"] = np.r_[np.zeros(10), rng.integers(0, 2, 20)].astype(int)        # one_class: all censored
    df["report_true"] = "a mass in the kidney"
    df["report_pred"] = ["a mass"] * 12 + [""] * 3 + ["a kidney mass"] * 15
    return df


def test_edge_cases_are_null_with_a_note_and_a_table_footnote(tmp_path):
    path = tmp_path / "edge.csv"
    _edge_frame().to_csv(path, index=False)
    res = evaluate([read_predictions(path, "M")], settings=Settings(n_boot=20, times=(12.0,)))
    mal = res.metrics["M"]["malignancy"]
    assert mal["one_class"]["roc_auc"].value is None and "only one class" in mal["one_class"]["roc_auc"].note
    assert mal["ok"]["roc_auc"].value is None and "malignancy_prob" in mal["ok"]["sensitivity"].note
    assert "class 2" in res.metrics["M"]["renal_R"]["ok"]["roc_auc"].note
    assert "no events" in res.metrics["M"]["os"]["one_class"]["c_index"].note
    assert "report_pred" in res.metrics["M"]["report"]["ok"]["bleu1"].note
    assert any("restricted to malignant cases" in n for n in res.notes)
    table = next(t for t in build_tables(res) if t.name == "malignancy_roc_auc")
    md = table.to_markdown()
    assert "n/a [1]" in md and "only one class" in md and "malignancy_prob" in md
    assert res.to_json()["M"]["malignancy"]["ok"]["roc_auc"]["value"] is None


def test_an_inverted_classifier_has_no_youden_threshold_and_says_so(tmp_path):
    df = pd.DataFrame({"patient_id": [f"p{i:02d}" for i in range(20)], "cohort": "a",
                       "malignancy_true": [0, 1] * 10, "malignancy_prob": [0.9, 0.1] * 10})
    df.to_csv(tmp_path / "inv.csv", index=False)
    m = evaluate([read_predictions(tmp_path / "inv.csv", "M")], settings=Settings(n_boot=20)).metrics["M"]
    m = m["malignancy"]["a"]
    assert m["roc_auc"].value == 0.0 and m["sensitivity"].value == 0.0 and m["specificity"].value == 1.0
    assert m["threshold"].value is None and "called negative" in m["threshold"].note
