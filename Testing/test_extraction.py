"""Questionnaire extraction (rules and the optional LLM endpoint), consistency scoring, manifest labelling
and the consistency columns of ``renalclip evaluate``."""
from __future__ import annotations

import csv
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from renalclip_lib.extraction import (ExtractionEndpointError, LLMEndpoint, consistency, extract_answers,
                                      extract_with_fallback, llm_extract)
from renalclip_lib.extraction.report_text import format_report
from renalclip_lib.phantom import simulate_case
from renalclip_lib.questionnaire import QUESTIONS, option_index

COHORTS = ("pretrain", "internal", "external_offset", "external_noisy", "external_thick")


@pytest.fixture(scope="module")
def cases():
    return [simulate_case(np.random.default_rng([77, i]), COHORTS[i % len(COHORTS)]) for i in range(120)]


def test_rules_recover_the_phantom_answers(cases):
    """Per kidney, the rules give the answers the report generator encoded (its ground truth)."""
    hits = {q.key: [] for q in QUESTIONS}
    for c in cases:
        for s in ("left", "right"):
            a = extract_answers(format_report(c.reports[f"findings_{s}"], c.reports[f"impression_{s}"]), side=s)
            for q in QUESTIONS:
                hits[q.key].append(a[q.column(s)] == c.labels[q.column(s)])
    acc = {k: float(np.mean(v)) for k, v in hits.items()}
    assert min(acc.values()) >= 0.97, acc


def test_rules_find_the_side_in_whole_reports(cases):
    ok = []
    for c in cases:
        text = format_report(c.reports["findings_left"] + " " + c.reports["findings_right"],
                             c.reports["impression_left"] + " " + c.reports["impression_right"])
        side = c.labels["lesion_side"]
        other = "right" if side == "left" else "left"
        want = "bilateral" if c.labels[f"q_number_{other}"] else side
        a = extract_answers(text)
        ok.append(a["side"] == want and a[f"q_size_{side}"] == c.labels[f"q_size_{side}"])
    assert np.mean(ok) >= 0.98


def test_rules_on_common_radiology_phrasing():
    text = ("Findings: There is a 5.5 x 4.1 cm heterogeneously enhancing exophytic mass arising from the lower pole of "
            "the right kidney with central necrosis. It is hypoattenuating on unenhanced images. The mass extends into "
            "the renal sinus fat. The left kidney is normal with no focal lesion.\n"
            "Impression: Right renal mass, highly suspicious for renal cell carcinoma.")
    a = extract_answers(text)
    opt = lambda key, text: option_index(key, text)  # noqa: E731
    assert a["side"] == "right"
    assert a["q_location_right"] == opt("location", "lower pole")
    assert a["q_size_right"] == opt("size", "> 4 cm and <= 7 cm")
    assert a["q_exophytic_right"] == opt("exophytic", "yes")
    assert a["q_necrosis_right"] == opt("necrosis", "yes")
    assert a["q_density_right"] == opt("density", "hypodense")
    assert a["q_enhancement_right"] == opt("enhancement", "heterogeneous enhancement")
    assert a["q_sinus_invasion_right"] == opt("sinus_invasion", "yes")
    assert a["q_benign_malignant_right"] == opt("benign_malignant", "highly likely malignant")
    assert a["q_nature_right"] == opt("nature", "malignant tumor")
    assert all(a[q.column("left")] == 0 for q in QUESTIONS)          # "no focal lesion" is not a mass
    aml = extract_answers("Findings: A 12 mm fat-containing lesion in the upper pole of the left kidney.\n"
                          "Impression: Left renal angiomyolipoma.")
    assert (aml["side"], aml["q_size_left"], aml["q_density_left"], aml["q_nature_left"]) == \
        ("left", opt("size", "<= 4 cm"), opt("density", "fat density (angiomyolipoma)"), opt("nature", "angiomyolipoma"))
    assert extract_answers("Findings: No renal mass. Both kidneys are normal.\nImpression: Normal.")["side"] is None


def test_consistency_scores_agreement_question_by_question(cases):
    c = next(c for c in cases if c.labels["lesion_side"] == "left" and c.labels["q_size_left"] == 2
             and c.labels["q_cystic_solid_left"] == 3)
    ref = format_report(c.reports["findings_left"], c.reports["impression_left"])
    same = consistency(ref, ref)
    stated = sum(c.labels[q.column("left")] > 0 for q in QUESTIONS)
    assert (same["side_agreement"], same["side_size_agreement"], same["consistency"], same["n_stated"]) == (1, 1, 1, stated)
    swapped = ref.replace("left", "right").replace("Left", "Right")
    sw = consistency(swapped, ref)
    assert (sw["side_agreement"], sw["side_size_agreement"], sw["consistency"]) == (0, 0, 0)
    # Another size class, everything else the same: one stated answer out of `stated` is wrong.
    gen = "Findings: A 12.3 x 11.0 cm solid mass is seen in the left kidney."
    size_only = consistency(gen, ref)
    assert size_only["side_agreement"] == 1 and size_only["side_size_agreement"] == 0
    assert size_only["per_question"]["size"] == 0 and size_only["per_question"]["cystic_solid"] == 1
    expect = (1 + 1) / stated                       # number (solitary) and cystic/solid agree; size and the rest do not
    assert size_only["consistency"] == pytest.approx(expect if c.labels["q_number_left"] == 1 else 1 / stated)


# ----- the optional LLM back end against a local stub server -----------------------------------
class _Stub(BaseHTTPRequestHandler):
    reply: bytes = b""
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(type(self).reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    server = HTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Stub.seen = []
    yield server
    server.shutdown()
    server.server_close()


def _chat(content: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


def test_llm_backend_posts_the_paper_prompt_and_maps_letters(stub):
    letters = {"0": "B", **{f"R{n}": "A" for n in range(1, 15)}, "R3": "B", "R7": "D", "R12": "E", "R13": "DK"}
    _Stub.reply = _chat("Here you go:\n```json\n" + json.dumps(letters) + "\n```")
    ep = LLMEndpoint(f"http://127.0.0.1:{stub.server_port}/v1", model="stub", timeout_s=5)
    report = "Findings: A 5 cm mass in the right kidney.\nImpression: Right renal mass."
    a = llm_extract(report, ep)
    path, body = _Stub.seen[0]
    assert path == "/v1/chat/completions" and body["model"] == "stub"
    prompt = body["messages"][0]["content"]
    assert "A 5 cm mass in the right kidney." in prompt and "Exophytic Renal Mass?: A. Yes B. Not described" in prompt
    assert "Prefix the question number with L" in prompt
    # Letters follow Tables 33-34; our classes are the option texts of questionnaire.py.
    assert a["side"] == "right"
    assert a["q_number_right"] == option_index("number", "solitary lesion")
    assert a["q_size_right"] == option_index("size", "> 4 cm and <= 7 cm")
    assert a["q_density_right"] == option_index("density", "heterogeneous density")
    assert a["q_benign_malignant_right"] == option_index("benign_malignant", "not mentioned/no mass")
    assert a["q_nature_right"] == -1
    assert a["q_exophytic_right"] == option_index("exophytic", "yes")
    assert all(a[q.column("left")] == 0 for q in QUESTIONS)


@pytest.mark.parametrize("reply", [b"not json at all", _chat("I cannot answer that."), _chat('{"0": "Z"}')])
def test_llm_backend_malformed_answers_fail_or_fall_back(stub, reply):
    _Stub.reply = reply
    ep = LLMEndpoint(f"http://127.0.0.1:{stub.server_port}/v1", timeout_s=5)
    text = "Findings: A 2 cm cyst in the left kidney.\nImpression: Left renal cyst."
    with pytest.raises(ExtractionEndpointError, match="127.0.0.1"):
        extract_with_fallback(text, ep, fallback="fail")
    warnings = []
    answers, used = extract_with_fallback(text, ep, fallback="rules", warn=warnings.append)
    assert used == "rules" and answers == extract_answers(text) and len(warnings) == 1


def test_llm_backend_down_endpoint():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                 # closed again: nothing listens there
    ep = LLMEndpoint(f"http://127.0.0.1:{port}/v1", timeout_s=2)
    with pytest.raises(ExtractionEndpointError, match="unreachable"):
        llm_extract("Findings: x", ep)
    answers, used = extract_with_fallback("Findings: A 3 cm mass in the left kidney.", ep, warn=lambda m: None)
    assert used == "rules" and answers["side"] == "left"


# ----- manifest labels and the evaluation ------------------------------------------------------
def test_extract_cli_fills_the_manifest_questionnaire(tmp_path, cases):
    from renalclip_lib.cli import main
    from renalclip_lib.data.manifest import QUESTION_COLUMNS, read_manifest

    chosen = cases[:6]
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["patient_id", "cohort", "split", "phase", "image_path", "lesion_side",
                                           *(f"{k}_{s}" for s in ("left", "right") for k in ("findings", "impression"))])
        w.writeheader()
        for i, c in enumerate(chosen):
            for phase in ("A", "V"):
                w.writerow({"patient_id": f"p{i}", "cohort": "internal", "split": "train", "phase": phase,
                            "image_path": f"images/p{i}_{phase}.nii.gz", "lesion_side": "", **c.reports})
    assert main(["extract", "--manifest", str(path), "--out", str(tmp_path / "labelled.csv")]) == 0
    rows = read_manifest(tmp_path / "labelled.csv", check_files=False)
    assert len(rows) == 12
    for r in rows:
        c = chosen[int(r.patient_id[1:])]
        assert {col: r[col] for col in QUESTION_COLUMNS} == {col: c.labels[col] for col in QUESTION_COLUMNS}
        assert r["lesion_side"] == (c.labels["lesion_side"] if not any(
            c.labels[f"q_number_{s}"] for s in ("left", "right") if s != c.labels["lesion_side"]) else None)
    assert str(rows[0].image_path).endswith("images/p0_A.nii.gz")


@pytest.mark.slow
def test_evaluate_reports_consistency_next_to_bleu(tmp_path, cases):
    from renalclip_lib.cli import main

    left = [c for c in cases if c.labels["lesion_side"] == "left"][:4]
    preds = tmp_path / "preds.csv"
    with open(preds, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["patient_id", "cohort", "report_true", "report_pred"])
        w.writeheader()
        for i, c in enumerate(left):
            ref = format_report(c.reports["findings_left"], c.reports["impression_left"])
            pred = ref if i < 3 else ref.replace("left", "right").replace("Left", "Right")   # 3 of 4 sides right
            w.writerow({"patient_id": f"p{i}", "cohort": "external_x", "report_true": ref, "report_pred": pred})
    assert main(["evaluate", "--model", f"gen={preds}", "--out", str(tmp_path / "ev"), "--bootstrap", "0",
                 "--no-figures", "--quiet"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))
    found = {}

    def walk(node, path=()):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("side_agreement", "consistency") and isinstance(v, dict) and "value" in v:
                    found[k] = v["value"]
                else:
                    walk(v, path + (k,))

    walk(metrics)
    assert found["side_agreement"] == pytest.approx(0.75)
    assert found["consistency"] == pytest.approx(0.75)
    table = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "ev").rglob("*.md"))
    assert "Side agreement" in table and "BLEU-1" in table
