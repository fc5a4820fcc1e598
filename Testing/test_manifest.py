"""The cohort manifest: round trip through the synthetic cohort, and every validation error names
the file, row, column and value a user has to fix."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from renalclip_lib.data.manifest import COLUMNS, REQUIRED_COLUMNS, read_manifest, write_manifest
from renalclip_lib.errors import ManifestError
from renalclip_lib.phantom import generate_patient, write_cohort
from renalclip_lib.phantom.writer import patient_seed
from renalclip_lib.questionnaire import QUESTIONS


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    return write_cohort(out, 4, seed=5, matrix=64, phases=("A", "V", "N"))


def test_cohort_manifest_round_trip(cohort, tmp_path):
    rows = read_manifest(cohort)
    assert rows.problems == []
    assert {r.patient_id for r in rows} == {f"case_{i:05d}" for i in range(4)}
    for pid, prs in rows.by_patient().items():
        i = int(pid.split("_")[1])
        pc = generate_patient(patient_seed(5, i), prs[0].cohort, matrix=64, phases=("A", "V", "N"), patient_id=pid)
        assert sorted(r.phase for r in prs) == sorted(pc.images)
        for r in prs:
            assert r.image_path.is_file() and r.label_path.is_file()
            assert r["histology"] == pc.labels["histology"]
            for key in ("renal_R", "renal_E", "renal_N", "renal_A", "renal_L", "malignancy", "aggressiveness", "stage",
                        "grade", "rfs_time", "rfs_event"):
                assert r[key] == pc.labels[key], key
            for q in QUESTIONS:
                for side in ("left", "right"):
                    assert r[q.column(side)] == pc.labels[q.column(side)]
            assert np.allclose(r.center, pc.lesion_centers[r.phase], atol=1e-3)
            assert r.report(pc.labels["lesion_side"])[0] == pc.reports[f"findings_{pc.labels['lesion_side']}"]
            assert r.split in ("pretrain", "train", "val", "test")
    copy = write_manifest(rows, tmp_path / "elsewhere" / "manifest.csv")
    again = read_manifest(copy)
    assert [r.image_path.resolve() for r in again] == [r.image_path.resolve() for r in rows]
    assert [r.values for r in again] == [r.values for r in rows]
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(".tmp")]
    header = next(csv.reader(open(copy, encoding="utf-8")))
    assert header[: len(COLUMNS)] == list(COLUMNS)


def _write(path, rows, header=None):
    header = header or list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "img").mkdir()
    for n in ("a.nii.gz", "b.nii.gz"):
        (tmp_path / "img" / n).write_bytes(b"x")
    good = {"patient_id": "p1", "cohort": "site", "split": "train", "phase": "A", "image_path": "img/a.nii.gz",
            "renal_R": "1", "stage": "III", "rfs_time": "12.5", "rfs_event": "1", "q_size_left": "2", "histology": "x"}
    return tmp_path, good


def test_minimal_user_manifest(tiny):
    d, good = tiny
    rows = read_manifest(_write(d / "m.csv", [good, dict(good, patient_id="p2", phase="V", image_path="img/b.nii.gz",
                                                          renal_R="", stage="")]))
    assert rows[0]["renal_R"] == 1 and rows[0]["stage"] == 3 and rows[0]["rfs_time"] == 12.5
    assert rows[1]["renal_R"] is None and rows[1]["stage"] is None and rows[1]["malignancy"] is None
    assert rows[0].image_path == d / "img" / "a.nii.gz"


def test_missing_required_column(tiny):
    d, good = tiny
    bad = {k: v for k, v in good.items() if k != "phase"}
    with pytest.raises(ManifestError) as e:
        read_manifest(_write(d / "m.csv", [bad]))
    assert "m.csv" in str(e.value) and "phase" in str(e.value)
    assert set(REQUIRED_COLUMNS) >= {"patient_id", "image_path", "phase", "split"}


@pytest.mark.parametrize("column,value,why", [
    ("renal_R", "3", "out of range"), ("malignancy", "yes", "integer"), ("phase", "X", "one of"),
    ("split", "training", "one of"), ("rfs_time", "-1", ">= 0"), ("q_size_left", "5", "out of range"),
    ("image_path", "img/missing.nii.gz", "not found"), ("lesion_side", "both", "left, right"),
    ("center_x", "12.0", "together"), ("rfs_event", "", "together"), ("patient_id", "", "blank"),
])
def test_bad_values_name_file_row_column_value(tiny, column, value, why):
    d, good = tiny
    path = _write(d / "m.csv", [good, dict(good, **{column: value})])
    with pytest.raises(ManifestError) as e:
        read_manifest(path)
    msg = str(e.value)
    assert "m.csv" in msg and "row 3" in msg and why in msg, msg
    assert column in msg or why == "together" and column.split("_")[0] in msg
    if value and why != "together":
        assert value in msg


def test_skip_mode_reports_and_skips_bad_rows(tiny):
    d, good = tiny
    path = _write(d / "m.csv", [good, dict(good, renal_E="7"), dict(good, patient_id="p3", image_path="img/b.nii.gz")])
    rows = read_manifest(path, on_error="skip")
    assert [r.patient_id for r in rows] == ["p1", "p3"]
    assert len(rows.problems) == 1 and rows.problems[0][0] == 3 and "renal_E" in rows.problems[0][1]


def test_missing_manifest_file(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.csv")


def test_merged_manifest_keeps_every_row_with_paths_from_its_new_folder(tiny):
    """``renalclip merge-manifests``: two sites' manifests in different folders become one whose
    paths resolve to the same files; the same patient's phase in both is one error naming both files,
    and nothing is written."""
    from renalclip_lib.cli import main

    d, good = tiny
    (d / "site2").mkdir()
    (d / "site2" / "c.nii.gz").write_bytes(b"x")
    a = _write(d / "a.csv", [good])
    b = _write(d / "site2" / "b.csv", [dict(good, patient_id="q1", image_path="c.nii.gz", renal_R="2")])
    out = d / "merged" / "manifest.csv"
    assert main(["merge-manifests", str(a), str(b), "--out", str(out)]) == 0
    rows = read_manifest(out)
    assert [r.patient_id for r in rows] == ["p1", "q1"]
    assert [r.image_path.resolve() for r in rows] == [(d / "img" / "a.nii.gz").resolve(), (d / "site2" / "c.nii.gz").resolve()]
    assert [r["renal_R"] for r in rows] == [1, 2]
    with pytest.raises(ManifestError, match=r"patient p1 phase A is also in .*a\.csv"):
        from renalclip_lib.data.manifest import merge_manifests
        merge_manifests([a, _write(d / "dup.csv", [good])], d / "never" / "manifest.csv")
    assert not (d / "never" / "manifest.csv").exists()
    assert main(["merge-manifests", str(a), str(a), "--out", str(d / "again.csv")]) == 2
