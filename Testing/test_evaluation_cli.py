"""``renalclip evaluate`` end to end: outputs written atomically, exit 2 with one line on bad input."""
from __future__ import annotations

import argparse
import json
import re
import sys

import numpy as np
import pandas as pd
import pytest

from renalclip_lib.errors import EXIT_BAD_INPUT, EXIT_OK, RenalCLIPError
from renalclip_lib.evaluation.cli import add_evaluate_parser
from renalclip_lib.evaluation.synthetic import synthetic_embeddings, synthetic_predictions, synthetic_truth


def run_cli(argv) -> int:
    """``renalclip`` main if the lead has wired ``evaluate`` in, else the same error handling here."""
    from renalclip_lib import cli

    parser = cli.build_parser()
    if "evaluate" in parser._subparsers._group_actions[0].choices:      # noqa: SLF001
        return cli.main(argv)
    parser = argparse.ArgumentParser(prog="renalclip")
    add_evaluate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except RenalCLIPError as exc:
        print(f"renalclip: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    truth = synthetic_truth({"internal": 50, "xiamen": 40, "ruijin": 40}, seed=1, reports=True)
    args = []
    for k, name in enumerate(("CNN", "RenalCLIP")):
        synthetic_predictions(truth, 0.8 + k, seed=3 + k, reports=True).to_csv(d / f"{name}.csv", index=False)
        args += ["--model", f"{name}={d / f'{name}.csv'}"]
    emb = synthetic_embeddings(truth, 1.5)
    del emb["cohort"]                                       # cohorts looked up in the predictions file
    np.savez(d / "emb.npz", **emb)
    rows = [dict(model=m, task="malignancy", cohort="internal", fraction=f, seed=s, value=0.6 + 0.1 * f + 0.01 * s)
            for m in ("CNN", "RenalCLIP") for f in (0.2, 1.0) for s in range(3 if f < 1 else 1)]
    pd.DataFrame(rows).to_csv(d / "de.csv", index=False)
    args += ["--retrieval", f"RenalCLIP={d / 'emb.npz'}", "--group", "external=xiamen,ruijin",
             "--data-efficiency", str(d / "de.csv"), "--bootstrap", "30", "--times", "12,36",
             "--nltk-data", str(d / "nltk"), "--quiet"]
    return d, args


def test_full_run_writes_metrics_tables_figures_and_index(inputs, tmp_path, capsys):
    _, args = inputs
    out = tmp_path / "eval"
    assert run_cli(["evaluate", *args, "--out", str(out)]) == EXIT_OK
    summary = json.loads(capsys.readouterr().out)
    assert summary["figures"] > 10 and summary["tables"] > 10
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics) == {"CNN", "RenalCLIP"}
    cell = metrics["RenalCLIP"]["malignancy"]["external"]["roc_auc"]
    assert set(cell) >= {"value", "ci_low", "ci_high", "n"} and cell["n"] == 80
    assert "t2i_recall@5" in metrics["RenalCLIP"]["retrieval"]["internal"]
    for name in ("renal_R_roc_auc", "malignancy_specificity", "rfs_c_index", "rfs_cox_internal", "report_internal",
                 "retrieval_external", "data_efficiency_malignancy_roc_auc", "zeroshot_malignancy_roc_auc"):
        assert (out / "tables" / f"{name}.md").is_file() and (out / "tables" / f"{name}.csv").is_file(), name
    md = (out / "tables" / "malignancy_roc_auc.md").read_text(encoding="utf-8")
    assert re.search(r"\| external \| .*\*\*\d\.\d{3} \(\d\.\d{3}-\d\.\d{3}\)\*\*", md)
    for fig in ("roc_malignancy_internal", "km_rfs_external", "td_rfs_internal", "radar_internal",
                "retrieval_internal", "report_internal", "data_efficiency_malignancy_internal"):
        png = out / "figures" / f"{fig}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig
    html = (out / "index.html").read_text(encoding="utf-8")
    for link in re.findall(r"(?:href|src)='([^'#]+)'", html):
        assert (out / link).is_file(), link
    assert not list(tmp_path.glob(".eval.tmp-*"))


def test_bad_input_exits_2_with_one_line_and_writes_nothing(inputs, tmp_path, capsys):
    d, args = inputs
    bad = pd.read_csv(d / "CNN.csv").drop(columns=["renal_E_prob_1"])
    bad.to_csv(tmp_path / "bad.csv", index=False)
    out = tmp_path / "eval"
    code = run_cli(["evaluate", "--model", f"Bad={tmp_path / 'bad.csv'}", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_BAD_INPUT and len(err) == 1
    assert err[0].startswith("renalclip: error: ") and "bad.csv" in err[0] and "renal_E_prob_1" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".eval*"))
    code = run_cli(["evaluate", *args[:4], "--group", "g=internal,nowhere", "--out", str(out), "--quiet"])
    assert code == EXIT_BAD_INPUT and "'nowhere'" in capsys.readouterr().err


def test_output_folder_is_replaced_only_if_it_holds_an_evaluation(inputs, tmp_path, capsys):
    _, args = inputs
    small = args[:4] + ["--bootstrap", "0", "--no-figures", "--quiet"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me", encoding="utf-8")
    assert run_cli(["evaluate", *small, "--out", str(other)]) == EXIT_BAD_INPUT
    assert "no metrics.json" in capsys.readouterr().err and (other / "notes.txt").is_file()
    out = tmp_path / "eval"
    assert run_cli(["evaluate", *small, "--out", str(out)]) == EXIT_OK
    (out / "stale.txt").write_text("from an earlier run", encoding="utf-8")
    assert run_cli(["evaluate", *small, "--out", str(out)]) == EXIT_OK
    assert (out / "metrics.json").is_file() and not (out / "stale.txt").exists()
    cell = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["CNN"]["malignancy"]["internal"]["roc_auc"]
    assert cell["ci_low"] is None and cell["value"] is not None          # --bootstrap 0: no CI
