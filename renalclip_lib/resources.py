"""Where the shared resources live: configs, prompts and icons in the repository's ``Resources/``.

The Slicer modules and the library read the same files (one place for each prompt and config).
``RENALCLIP_RESOURCES`` overrides the folder, e.g. for a relocated installation.

Usage: ``json.loads(resource_path("prompts", "zeroshot_prompt.json").read_text(encoding="utf-8"))``
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import MissingFileError


def resources_dir() -> Path:
    env = os.environ.get("RENALCLIP_RESOURCES")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "Resources"


def resource_path(*parts: str) -> Path:
    path = resources_dir().joinpath(*parts)
    if not path.exists():
        raise MissingFileError(path, "resource file not found (set RENALCLIP_RESOURCES to the Resources folder)")
    return path
