"""The report text layout the generator learns and writes: ``Findings: ...\\nImpression: ...``.

Usage::

    text = format_report(findings, impression)
    findings, impression = split_report(generated_text)
"""
from __future__ import annotations

import re

_SECTION = re.compile(r"(findings|impression)\s*:", re.IGNORECASE)


def format_report(findings: str, impression: str) -> str:
    """One report text from its two sections (white space collapsed)."""
    return f"Findings: {' '.join(str(findings or '').split())}\nImpression: {' '.join(str(impression or '').split())}"


def split_report(text: str) -> tuple[str, str]:
    """(findings, impression) of a report; text before any header counts as findings."""
    text = str(text or "")
    parts = {"findings": [], "impression": []}
    current, pos = "findings", 0
    for m in _SECTION.finditer(text):
        parts[current].append(text[pos:m.start()])
        current, pos = m.group(1).lower(), m.end()
    parts[current].append(text[pos:])
    return tuple(" ".join(" ".join(parts[k]).split()) for k in ("findings", "impression"))
