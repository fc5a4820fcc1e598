"""The child-process protocol: one JSON object per line on stdout, read by the Slicer modules.

A long command run with ``--progress-json`` prints only these lines on stdout (everything else goes
to stderr), so a parent process (the RenalCLIP or RenalCLIPTraining panel) can follow it without
parsing free text. Events:

- ``{"event": "progress", "step": "register", "fraction": 0.25, "message": "..."}``
- ``{"event": "log", "message": "..."}``
- ``{"event": "result", ...}``: the command's answer (paths, summary), printed once at the end
- ``{"event": "error", "message": "...", "exit_code": 2}``

Usage::

    rep = ProgressReporter(json_lines=args.progress_json)
    rep.progress("register", 0.1, "resampling 3 phases")
    rep.result(assessment="out/assessment.json")
"""
from __future__ import annotations

import json
import sys
from typing import Any, Callable, TextIO

PROTOCOL_VERSION = 1
EVENTS = ("progress", "log", "result", "error")


class ProgressReporter:
    """Emit protocol lines (``json_lines=True``) or short human lines on stderr."""

    def __init__(self, json_lines: bool = False, stream: TextIO | None = None, quiet: bool = False):
        self.json_lines = json_lines
        self.stream = stream
        self.quiet = quiet

    def _emit(self, event: str, payload: dict[str, Any]) -> None:
        if self.json_lines:
            out = self.stream or sys.stdout
            out.write(json.dumps({"event": event, **payload}, allow_nan=False, default=str) + "\n")
            out.flush()
        elif not self.quiet and event != "result":
            out = self.stream or sys.stderr
            text = payload.get("message") or payload.get("step") or ""
            if event == "progress" and "fraction" in payload:
                text = f"[{100 * payload['fraction']:5.1f}%] {payload.get('step', '')}: {payload.get('message', '')}"
            out.write(text.rstrip(": ") + "\n")
            out.flush()

    def progress(self, step: str, fraction: float, message: str = "") -> None:
        self._emit("progress", {"step": step, "fraction": round(float(min(max(fraction, 0.0), 1.0)), 4),
                                "message": message})

    def log(self, message: str) -> None:
        self._emit("log", {"message": message})

    def result(self, **payload: Any) -> None:
        self._emit("result", payload)

    def print_result(self, payload: dict) -> None:
        """A command's outcome: the ``result`` event with JSON lines, else indented JSON on stdout."""
        if self.json_lines:
            self.result(**payload)
        else:
            print(json.dumps(payload, indent=2))

    def error(self, message: str, exit_code: int) -> None:
        self._emit("error", {"message": message, "exit_code": int(exit_code)})

    def as_callback(self, step: str) -> Callable[[str], None]:
        """A ``log(msg)`` callable for library functions that take one."""
        return lambda msg: self.log(f"{step}: {msg}")


def parse_line(line: str) -> dict | None:
    """One stdout line of a child -> the event dict, or None for a line that is not protocol."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) and obj.get("event") in EVENTS else None
