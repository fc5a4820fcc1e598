"""Reading prediction, embedding, cohort-list and data-efficiency files: clear errors naming the
file, the column and the patient; nothing guessed."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from renalclip_lib.errors import MissingFileError
from renalclip_lib.evaluation.predictions import (CohortSpec, PredictionsError, parse_named_path, read_cohort_list,
                                                  read_data_efficiency, read_embeddings, read_predictions,
                                                  resolve_cohorts)


def _base(n=6) -> pd.DataFrame:
    return pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)], "cohort": ["a"] * 3 + ["b"] * (n - 3),
                         "malignancy_true": [0, 1] * (n // 2), "malignancy_prob": np.linspace(0.1, 0.9, n)})


def _write(tmp_path, df, name="preds.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def _error(tmp_path, df) -> str:
    path = _write(tmp_path, df)
    with pytest.raises(PredictionsError) as exc:
        read_predictions(path, "M")
    msg = str(exc.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    return msg


def test_reads_a_valid_file_and_lists_its_tasks(tmp_path):
    df = _base().assign(risk=1.0, rfs_time=[5, 6, 7, 8, 9, 10], rfs_event=[1, 0, 1, 0, 1, 0],
                        zeroshot_malignancy_prob=0.5, age=60)
    p = read_predictions(_write(tmp_path, df), "M")
    assert p.tasks == ["malignancy", "rfs", "zeroshot_malignancy"]
    assert any("age" in n for n in p.notes)                  # unknown columns are reported, not silent


@pytest.mark.parametrize("change,expected", [
    (lambda d: d.drop(columns="patient_id"), "missing column patient_id"),
    (lambda d: d.drop(columns="malignancy_true"), "missing column malignancy_true"),
    (lambda d: d.assign(renal_R_true=0, renal_R_prob_0=0.2, renal_R_prob_1=0.3), "missing column renal_R_prob_2"),
    (lambda d: d.assign(malignancy_true=[0, 1, 2, 0, 1, 0]), "malignancy_true: 2 in row 4 (patient 'p2')"),
    (lambda d: d.assign(malignancy_prob=["0.1", "x", "0.3", "0.4", "0.5", "0.6"]),
     "malignancy_prob: 'x' in row 3 (patient 'p1') is not a number"),
    (lambda d: d.assign(malignancy_prob=[0.1, np.inf, 0.3, 0.4, 0.5, 0.6]), "malignancy_prob: infinite"),
    (lambda d: d.assign(patient_id=["p0", "p1", "p1", "p3", "p4", "p5"]), "'p1' appears twice"),
    (lambda d: d.assign(risk=1.0, rfs_time=5.0), "missing column rfs_event"),
    (lambda d: d.assign(rfs_time=5.0, rfs_event=1), "missing column risk"),
    (lambda d: d.assign(risk=1.0, rfs_time=[5, 6, None, 8, 9, 10], rfs_event=1), "rfs_time: empty in row 4"),
    (lambda d: d.assign(risk=1.0, rfs_time=[5, -6, 7, 8, 9, 10], rfs_event=1), "negative time"),
    (lambda d: d.assign(report_pred="text"), "missing column report_true"),
    (lambda d: d.assign(zeroshot_aggressiveness_prob=0.5), "missing column aggressiveness_true"),
    (lambda d: d[["patient_id", "cohort"]], "no task columns found"),
    (lambda d: d.assign(cohort=["a", "", "a", "b", "b", "b"]), "cohort: empty in row 3"),
])
def test_bad_files_give_one_line_naming_the_column(tmp_path, change, expected):
    assert expected in _error(tmp_path, change(_base()))


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(MissingFileError):
        read_predictions(tmp_path / "nope.csv", "M")
    (tmp_path / "empty.csv").write_text("patient_id,cohort\n", encoding="utf-8")
    with pytest.raises(PredictionsError, match="no rows"):
        read_predictions(tmp_path / "empty.csv", "M")
    with pytest.raises(PredictionsError, match="NAME=FILE"):
        parse_named_path("preds.csv")


def test_empty_labels_leave_the_row_out_but_keep_the_file_valid(tmp_path):
    df = _base().astype({"malignancy_true": object})
    df.loc[2, "malignancy_true"] = ""
    p = read_predictions(_write(tmp_path, df), "M")
    assert p.frame["malignancy_true"].isna().sum() == 1


def test_cohort_list_and_groups(tmp_path):
    (tmp_path / "c.txt").write_text("# order of the rows\nb\ncombined = a, b  # pooled\na\n", encoding="utf-8")
    spec = read_cohort_list(tmp_path / "c.txt")
    assert spec.order == ["b", "combined", "a"] and spec.groups == {"combined": ["a", "b"]}
    models = [read_predictions(_write(tmp_path, _base()), "M")]
    order, members, notes = resolve_cohorts(spec, models)
    assert order == ["b", "combined", "a"] and members["combined"] == ["a", "b"] and members["a"] == ["a"]
    bad = CohortSpec(groups={"g": ["a", "zz"]}, source="c.txt")
    with pytest.raises(PredictionsError, match="'zz'"):
        resolve_cohorts(bad, models)
    with pytest.raises(PredictionsError, match="name of a cohort"):
        resolve_cohorts(CohortSpec(groups={"a": ["b"]}), models)
    (tmp_path / "d.txt").write_text("a\na\n", encoding="utf-8")
    with pytest.raises(PredictionsError, match="twice"):
        read_cohort_list(tmp_path / "d.txt")


def test_embeddings_file_checks(tmp_path):
    ok = {"image": np.ones((3, 4)), "text": np.ones((3, 4)), "patient_id": np.array(["a", "b", "c"])}
    np.savez(tmp_path / "e.npz", **ok)
    assert read_embeddings(tmp_path / "e.npz")["image"].shape == (3, 4)
    for bad, msg in ((dict(ok, text=np.ones((2, 4))), "shapes do not match"),
                     (dict(ok, text=np.ones((3, 5))), "differ in width"),
                     (dict(ok, patient_id=np.array(["a", "a", "c"])), "duplicates"),
                     ({k: v for k, v in ok.items() if k != "text"}, "missing array 'text'")):
        np.savez(tmp_path / "bad.npz", **bad)
        with pytest.raises(PredictionsError, match=msg):
            read_embeddings(tmp_path / "bad.npz")


def test_data_efficiency_file_checks(tmp_path):
    good = pd.DataFrame({"model": ["M"] * 2, "task": ["malignancy"] * 2, "cohort": ["a"] * 2,
                         "fraction": [0.1, 1.0], "seed": [0, 0], "value": [0.6, 0.7]})
    good.to_csv(tmp_path / "de.csv", index=False)
    df = read_data_efficiency(tmp_path / "de.csv")
    assert list(df["metric"]) == ["roc_auc"] * 2
    good.to_json(tmp_path / "de.json", orient="records")
    assert len(read_data_efficiency(tmp_path / "de.json")) == 2
    for change, msg in ((lambda d: d.drop(columns="seed"), "missing column seed"),
                        (lambda d: d.assign(fraction=[0.1, 1.5]), "not in \\(0, 1\\]"),
                        (lambda d: d.assign(task=["malignancy", "speed"]), "unknown task 'speed'"),
                        (lambda d: d.assign(value=["0.6", "high"]), "'high' in row 3")):
        change(good).to_csv(tmp_path / "bad.csv", index=False)
        with pytest.raises(PredictionsError, match=msg):
            read_data_efficiency(tmp_path / "bad.csv")
