"""Text files are UTF-8 whatever the process locale.

VTK and Slicer set the C locale, under which Python's default text encoding is ASCII: a report
with a non-ASCII character then fails to write. Every text-mode open must name its encoding.
"""
import locale
import re
from pathlib import Path

import pytest

from renalclip_lib.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("renalclip_lib", "RenalCLIP", "RenalCLIPTraining", "benchmarks", "Testing") for p in (ROOT / d).rglob("*.py")]
CALL_ARGS = r"\(((?:[^()]|\((?:[^()]|\([^()]*\))*\))*)\)"
OPEN_CALL = re.compile(r"(?<![\w.])open" + CALL_ARGS)
TEXT_CALL = re.compile(r"\.(?:read|write)_text" + CALL_ARGS)
BINARY = re.compile(r"""["'][rwax]\+?b\+?["']""")


def test_every_text_mode_open_names_its_encoding():
    offenders = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for m in OPEN_CALL.finditer(text):
            args = m.group(1)
            if "encoding" not in args and not BINARY.search(args):
                offenders.append(f"{path.relative_to(ROOT)}: text-mode open without encoding: {args[:60]}")
        for call in TEXT_CALL.findall(text):
            if "encoding" not in call:
                offenders.append(f"{path.relative_to(ROOT)}: read/write_text({call[:60]})")
    assert not offenders, "\n".join(offenders[:20])


def test_non_ascii_text_round_trips_under_the_c_locale(tmp_path):
    before = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, "C")
        if locale.getpreferredencoding(False).lower().replace("-", "") in ("utf8",):
            pytest.skip("this Python forces UTF-8 mode; the C locale does not change the default encoding")
        text = "Findings: 3.2 cm mass, 45 HU · µ ✓"
        atomic_write_text(tmp_path / "r.txt", text)
        assert (tmp_path / "r.txt").read_text(encoding="utf-8") == text
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
