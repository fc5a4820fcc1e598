"""The demo runs the main job end to end on a small synthetic cohort: files, centres, tensors."""
import json

import numpy as np

from renalclip_lib.cli import main
from renalclip_lib.data.manifest_cases import cases_from_manifest
from renalclip_lib.io import read_volume


def test_demo_writes_rois_tensors_previews_and_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--patients", "3", "--matrix", "96", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["patients"]) >= 1
    cases = {c.patient_id: c for c in cases_from_manifest(summary["manifest"])[0]}
    for p in summary["patients"]:
        # The centre found on the registered segmentation is the one the cohort recorded.
        assert p["distance_to_manifest_center_mm"] < 2.0
        assert set(p["rois"]) == set(cases[p["patient_id"]].phases)
        for path in p["rois"].values():
            roi = read_volume(path)
            assert roi.array.shape == (32, 140, 140)
            np.testing.assert_allclose(roi.origin + (np.array([139, 139, 31]) * roi.spacing) / 2,
                                       p["lesion_center_lps"], atol=0.01)
        x = np.load(p["tensor"])
        assert x.shape == (1, 32, 128, 128) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
        with open(p["preview"], "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    # Running again reuses the cohort and gives the same answer.
    first = summary["patients"][0]["lesion_center_lps"]
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["patients"][0]["lesion_center_lps"] == first
