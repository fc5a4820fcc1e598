"""``Assessment``: the product's answer for one case, and its JSON form (assessment.json).

Schema version 1 (documented in docs/assessment.md)::

    schema_version, disclaimer
    tasks: {renal_R..renal_L: {probabilities, predicted_class, points, label} | null,
            malignancy, aggressiveness: {probability, threshold, positive, label} | null}
    nephrometry: {total, suffix, complexity} | null
    survival: {endpoint, risk_score, threshold, risk_group} | null
    zeroshot: {BMC: {probability, label}, IC: {...}} | null
    report: {text, findings, impression[, generated_text, grounding]} | null
    measurement: {side, diameters_mm, diameters_cm, volume_ml, label, size_class} | null
    center: {lps, ras, source}
    phases: {given, reference, used, fusion, zeroshot}
    warnings: [str], models: {file: sha256 prefix}, timings: {step: seconds}

A task whose head the bundle lacks is null and named in ``warnings``.

Usage::

    a = analyze_case({"A": "a.nii.gz"}, bundle, center_lps=(10, -20, 30))
    a.write("assessment.json"); a.summary_line()
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import atomic_write_json
from ..errors import RenalCLIPError

ASSESSMENT_SCHEMA_VERSION = 1
DISCLAIMER_SYNTHETIC = ("Models trained on synthetic data: for demonstration and testing only, "
                        "not for clinical use.")
DISCLAIMER_RESEARCH = "Research software: not a medical device; not for clinical decisions."


@dataclass
class Assessment:
    tasks: dict = field(default_factory=dict)
    nephrometry: dict | None = None
    survival: dict | None = None
    zeroshot: dict | None = None
    report: dict | None = None
    measurement: dict | None = None
    center: dict = field(default_factory=dict)
    phases: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    models: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    disclaimer: str = DISCLAIMER_RESEARCH
    schema_version: int = ASSESSMENT_SCHEMA_VERSION

    def to_dict(self) -> dict:
        d = asdict(self)
        return {"schema_version": d.pop("schema_version"), "disclaimer": d.pop("disclaimer"), **d}

    def write(self, path) -> Path:
        """Write assessment.json atomically (no partial file on failure)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "Assessment":
        if int(d.get("schema_version", 0)) != ASSESSMENT_SCHEMA_VERSION:
            raise RenalCLIPError(None, f"assessment schema version {d.get('schema_version')} is not "
                                       f"{ASSESSMENT_SCHEMA_VERSION}")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @classmethod
    def read(cls, path) -> "Assessment":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def summary(self) -> dict:
        """The few numbers a radiologist reads first (the Slicer panel's summary line)."""
        t = self.tasks
        neph = self.nephrometry or {}
        return {
            "renal_score": None if neph.get("total") is None else f"{neph['total']}{neph.get('suffix', '')}",
            "complexity": neph.get("complexity"),
            "malignancy": None if not t.get("malignancy") else round(t["malignancy"]["probability"], 3),
            "aggressiveness": None if not t.get("aggressiveness") else round(t["aggressiveness"]["probability"], 3),
            "risk_group": None if not self.survival else self.survival.get("risk_group"),
            "warnings": len(self.warnings),
        }

    def summary_line(self) -> str:
        s = self.summary()
        parts = []
        if s["renal_score"] is not None:
            parts.append(f"R.E.N.A.L. {s['renal_score']} ({s['complexity']})")
        if s["malignancy"] is not None:
            parts.append(f"malignancy {s['malignancy']:.2f}")
        if s["aggressiveness"] is not None:
            parts.append(f"aggressiveness {s['aggressiveness']:.2f}")
        if s["risk_group"]:
            parts.append(f"{s['risk_group']} risk")
        return "; ".join(parts) if parts else "no task heads in the bundle"
