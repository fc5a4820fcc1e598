"""Guess the contrast phase (N, A, V, D) of a CT volume from its name.

Radiology series descriptions name the phase in many ways ("ART 1.25mm", "Nephrographic",
"PV 5mm", "case_00012_D", "Plain", "Urographic"). A name that points at exactly one phase gets it;
a name that points at none or at several gets nothing, and the radiologist chooses in the panel.

Usage::

    guess_phase("Arterial 1.25 mm")                  # "A"
    guess_phases(["CT plain", "CT venous", "scout"]) # {"N": "CT plain", "V": "CT venous"}
"""
from __future__ import annotations

import re
from typing import Iterable

from renalclip_lib.constants import PHASES

# Words (whole tokens after splitting on anything that is not a letter or digit) naming each phase.
PHASE_WORDS = {
    "N": ("noncontrast", "unenhanced", "plain", "native", "precontrast", "nect", "nc"),
    "A": ("arterial", "art", "corticomedullary", "cortical", "cmp", "early", "angio", "cta"),
    "V": ("venous", "ven", "nephrographic", "nephro", "portal", "pv", "pvp", "np", "parenchymal"),
    "D": ("delayed", "del", "excretory", "urographic", "pyelographic", "late", "ep", "urogram"),
}
# A lone letter token names a phase only at the end of a name ("case_00012_A", "Patient 3 V").
SINGLE_LETTER_AT_END = True


def _tokens(name: str) -> list[str]:
    text = re.sub(r"non[\s_-]*contrast", "noncontrast", name.lower())
    text = re.sub(r"pre[\s_-]*contrast", "precontrast", text)
    text = re.sub(r"portal[\s_-]*venous", "pv", text)
    return [t for t in re.split(r"[^a-z0-9]+", text) if t]


def guess_phase(name: str) -> str | None:
    """The phase a volume name points at, or None when it names no phase or more than one."""
    tokens = _tokens(name or "")
    found = {p for p, words in PHASE_WORDS.items() if any(t in words for t in tokens)}
    if not found and SINGLE_LETTER_AT_END and tokens and tokens[-1].upper() in PHASES and len(tokens) > 1:
        found = {tokens[-1].upper()}
    return found.pop() if len(found) == 1 else None


def guess_phases(names: Iterable[str]) -> dict[str, str]:
    """Phase -> the first name that points at it alone; phases nobody names are left out."""
    out: dict[str, str] = {}
    for name in names:
        p = guess_phase(name)
        if p is not None and p not in out:
            out[p] = name
    return {p: out[p] for p in PHASES if p in out}
