"""Reading the project's small JSON files (bundle, index, spec, prompt, assessment) with one clear error.

Usage::

    meta = read_json_object(path, InvalidBundleError, missing="not a bundle: no bundle.json")
    meta = read_format_file(path, CohortIndexError, "renalclip-cohort-index", "version", 1)
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import RenalCLIPError


def read_json_object(path, error: type[RenalCLIPError] = RenalCLIPError, missing: str = "file not found") -> dict:
    """The JSON object in the UTF-8 file ``path``; ``error(path, line)`` when the file is missing
    (``missing`` is the line), unreadable, not JSON, or holds something other than an object."""
    path = Path(path)
    if not path.is_file():
        raise error(path, missing)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(path, f"unreadable JSON file: not valid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(path, f"unreadable JSON file ({str(exc).splitlines()[0][:160]})") from None
    if not isinstance(obj, dict):
        raise error(path, f"expected a JSON object, found {type(obj).__name__}")
    return obj


def read_format_file(path, error: type[RenalCLIPError], fmt: str, version_key: str, max_version: int) -> dict:
    """``read_json_object`` of a file that names its ``format`` and a version: ``error`` when the
    format differs or the version is newer than ``max_version`` (this software cannot read it)."""
    obj = read_json_object(path, error)
    if obj.get("format") != fmt:
        raise error(path, f"unknown format {obj.get('format')!r}, expected {fmt!r}")
    version = obj.get(version_key, 0)
    if not isinstance(version, int) or version > max_version:
        raise error(path, f"{version_key} {version!r} is newer than this software reads ({max_version}); "
                          "update renalclip_lib")
    return obj
