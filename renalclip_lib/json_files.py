"""Reading the project's small JSON files (bundle, index, spec, prompt, assessment) with one clear error.

Usage: ``meta = read_json_object(path, InvalidBundleError, missing="not a bundle: no bundle.json")``
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
