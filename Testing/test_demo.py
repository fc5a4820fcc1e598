"""``renalclip demo --quick``: the whole product end to end on synthetic data, then a resumed rerun."""
import json

import pytest

from renalclip_lib.cli import main
from renalclip_lib.extraction import SIDE_KEY, extract_answers
from renalclip_lib.inference import Assessment, load_bundle

pytestmark = pytest.mark.slow


def test_quick_demo_runs_everything_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    stages = summary["stages"]
    assert stages["finetune"]["status"] == "done" and stages["bundle"]["status"] == "done"
    assert all(v["status"] == "done" or v.get("reason") for v in stages.values())
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "not for clinical use" in index and "panel.png" in index
    assert (out / "panel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    a = Assessment.read(out / "assessment.json")
    assert a.nephrometry["total"] in range(4, 13) and 0.0 <= a.tasks["malignancy"]["probability"] <= 1.0
    assert a.survival["risk_group"] in ("high", "low")
    assert "not for clinical use" in a.disclaimer
    side = summary["case"]["side"]
    assert a.measurement["side"] == side and a.measurement["diameters_cm"][0] > 0
    if a.report:
        raw = extract_answers(a.report.get("generated_text", a.report["text"]))[SIDE_KEY]
        if raw in ("left", "right"):
            assert extract_answers(a.report["text"])[SIDE_KEY] == side
        assert "Measured on" in index
    bundle = load_bundle(summary["bundle"])
    assert bundle.manifest["synthetic"] is True and set(bundle.heads) >= {"renal_R", "malignancy"}
    assert (out / "run" / "evaluation" / "metrics.json").exists()
    assert 0.0 <= summary["nnunet"]["kidney_dice"] <= 1.0

    assert main(["demo", "--out", str(out), "--quick", "--quiet"]) == 0
    again = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert {v["status"] for v in again["stages"].values()} <= {"done earlier", "skipped"}
