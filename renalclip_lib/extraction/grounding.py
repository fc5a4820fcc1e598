"""Ground a generated report in the segmentation's measurement: the side and size it states.

A draft report that calls a 5.2 cm mass on the segmentation "3.1 cm", or puts it in the other
kidney, is wrong in the two facts a radiologist checks first. When the case has a segmentation
(given, reviewed in Slicer, or from nnU-Net), the generated text is corrected to the measurement
(``preprocess.lesion_size.measure_lesion``):

- side: when the report places the mass in one kidney and the measurement in the other, every
  "left" and "right" is swapped (case kept), so the description of the other kidney follows;
  when the findings and the impression each place it in a different kidney (a slip the small
  generator makes), the section that names the wrong one is swapped; a report describing masses
  in both kidneys, or naming neither, is left as it is;
- size: the first size expression of the findings and of the impression (``2.6 x 2.0 cm``,
  ``26 x 20 mm``, ``(2.6 cm)``, the extractor's pattern) take the measured diameters, in the same
  unit and with as many dimensions; findings without one get a sentence stating the measurement.

Every change is listed, so the panel can show what the model wrote and what was corrected.

Usage::

    text, changes = ground_report(generated, measure_lesion(labels, center))
"""
from __future__ import annotations

import re

from ..constants import SIDES
from .report_text import format_report, split_report
from .rules import SIZE_PATTERN, SIDE_KEY, extract_answers

_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def _swap_sides(text: str) -> str:
    def swap(m: re.Match) -> str:
        w = m.group(0)
        other = "right" if w.lower() == "left" else "left"
        if w.isupper():
            return other.upper()
        return other.capitalize() if w[0].isupper() else other

    return _LEFT_RIGHT.sub(swap, text)


def _format_dims(dims_mm, n: int, unit: str) -> str:
    if unit.lower() == "mm":
        return " x ".join(f"{int(round(d))}" for d in dims_mm[:n]) + f" {unit}"
    return " x ".join(f"{d / 10.0:.1f}" for d in dims_mm[:n]) + f" {unit}"


def _ground_size(section: str, dims_mm) -> tuple[str, str | None]:
    m = SIZE_PATTERN.search(section)
    if m is None:
        return section, None
    n = sum(1 for g in m.groups()[:3] if g)
    new = _format_dims(dims_mm, n, m.group(4))
    old = m.group(0).strip()
    if new == old:
        return section, None
    return section[:m.start()] + new + section[m.start() + len(old):], f"size: {old} -> {new}"


def _ground_section_sides(findings: str, impression: str, side: str, changes: list[str]) -> tuple[str, str]:
    """Findings and impression placing the mass in different kidneys: the wrong section is swapped.
    Nothing changes when either section describes both kidneys' masses (the extractor's bilateral)."""
    stated = {name: extract_answers(section).get(SIDE_KEY)
              for name, section in (("findings", findings), ("impression", impression))}
    if not all(v in SIDES or v is None for v in stated.values()):
        return findings, impression
    if stated["findings"] is not None and stated["findings"] != side:
        findings = _swap_sides(findings)
        changes.append(f"findings side: {stated['findings']} -> {side}")
    if stated["impression"] is not None and stated["impression"] != side:
        impression = _swap_sides(impression)
        changes.append(f"impression side: {stated['impression']} -> {side}")
    return findings, impression


def ground_report(text: str, measurement) -> tuple[str, list[str]]:
    """``text`` with side and size set to ``measurement`` (a ``LesionSize``), and the changes made."""
    changes: list[str] = []
    stated = extract_answers(text).get(SIDE_KEY)
    if stated in SIDES and stated != measurement.side:
        text = _swap_sides(text)
        changes.append(f"side: {stated} -> {measurement.side}")
    findings, impression = split_report(text)
    if stated not in SIDES:
        findings, impression = _ground_section_sides(findings, impression, measurement.side, changes)
    findings, change = _ground_size(findings, measurement.diameters_mm)
    if change:
        changes.append("findings " + change)
    elif SIZE_PATTERN.search(findings) is None:
        sentence = (f"On the segmentation the mass measures {_format_dims(measurement.diameters_mm, 2, 'cm')} "
                    f"({measurement.side} kidney).")
        findings = f"{findings} {sentence}".strip()
        changes.append(f"findings: added '{sentence}'")
    impression, change = _ground_size(impression, measurement.diameters_mm)
    if change:
        changes.append("impression " + change)
    return (format_report(findings, impression) if changes else text), changes
