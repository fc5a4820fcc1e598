"""Per-stage status of a ``renalclip train all`` run, followed from its JSON-lines protocol.

The pipeline (``renalclip_lib.training.pipeline``) announces each stage with a progress event
(``step`` = the stage, ``fraction`` = stages started / stages), ends it with a log line
``"<stage>: done in 12.3 s"``, ``"<stage>: skipped: <reason>"`` or ``"<stage>: already finished ..."``,
and closes with a result event ``{"stages": {stage: {"status", "seconds", "reason"?}}}``. Lines a
stage logs while it runs (epoch records, step records) become the running stage's message.

Usage::

    sp = StageProgress(["cache", "attributes"])
    sp.on_progress("cache", 0.0, "starting"); sp.on_log("cache: done in 4.2 s")
    sp["cache"].status        # "done"
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Iterable

PENDING, RUNNING, DONE, DONE_EARLIER, SKIPPED, FAILED, STOPPED = (
    "pending", "running", "done", "done earlier", "skipped", "failed", "stopped")
FINAL = (DONE, DONE_EARLIER, SKIPPED, FAILED, STOPPED)
_DONE_IN = re.compile(r"^done in ([0-9.]+) s")
_MAX_MESSAGE = 160


@dataclass
class StageState:
    name: str
    status: str = PENDING
    fraction: float = 0.0
    seconds: float | None = None
    message: str = ""
    started: float | None = None

    def elapsed(self, now: float | None = None) -> float | None:
        """Seconds: the stage's own time when it ended, the time so far while it runs."""
        if self.status == RUNNING and self.started is not None:
            return (time.monotonic() if now is None else now) - self.started
        return self.seconds


class StageProgress:
    """Stage name -> ``StageState``, in pipeline order, updated by the protocol callbacks."""

    def __init__(self, stages: Iterable[str]):
        self.states = {s: StageState(s) for s in stages}
        self.fraction = 0.0

    def __getitem__(self, stage: str) -> StageState:
        return self.states[stage]

    def __iter__(self):
        return iter(self.states.values())

    def statuses(self) -> dict:
        return {s.name: s.status for s in self}

    def running(self) -> StageState | None:
        return next((s for s in self if s.status == RUNNING), None)

    def on_progress(self, step: str, fraction: float, message: str = "") -> None:
        self.fraction = max(self.fraction, float(fraction))
        if step not in self.states:
            return
        current = self.running()
        if current is not None and current.name != step:
            self._end(current, DONE)
        state = self.states[step]
        if state.status == PENDING:
            state.status, state.started, state.message = RUNNING, time.monotonic(), message

    def on_log(self, message: str) -> None:
        stage, sep, rest = str(message).partition(": ")
        if sep and stage in self.states:
            state = self.states[stage]
            done = _DONE_IN.match(rest)
            if done:
                self._end(state, DONE, float(done.group(1)))
            elif rest.startswith("skipped: "):
                self._end(state, SKIPPED, 0.0, rest[len("skipped: "):])
            elif rest.startswith("already finished"):
                self._end(state, DONE_EARLIER, 0.0)
            else:
                state.message = _short(rest)
            return
        current = self.running()
        if current is not None and str(message).strip():
            current.message = _describe(str(message))

    def on_result(self, result: dict) -> None:
        for stage, info in (result or {}).get("stages", {}).items():
            if stage not in self.states or not isinstance(info, dict):
                continue
            status = {"done": DONE, "done earlier": DONE_EARLIER, "skipped": SKIPPED}.get(info.get("status"))
            if status is not None:
                self._end(self.states[stage], status, info.get("seconds"), info.get("reason"))
        self.fraction = 1.0

    def on_finished(self, job_status: str, error: str | None = None) -> None:
        """The child ended: "succeeded", "failed" (the running stage failed) or "cancelled" (stopped)."""
        current = self.running()
        if current is None:
            return
        if job_status == "succeeded":
            self._end(current, DONE)
        elif job_status == "cancelled":
            self._end(current, STOPPED, message="stopped by the user")
        else:
            self._end(current, FAILED, message=error or current.message)

    def _end(self, state: StageState, status: str, seconds=None, message: str | None = None) -> None:
        if seconds is None and state.started is not None:
            seconds = time.monotonic() - state.started
        state.status, state.seconds = status, None if seconds is None else float(seconds)
        state.fraction = 1.0 if status in (DONE, DONE_EARLIER) else state.fraction
        if message is not None:
            state.message = _short(message)


def _describe(line: str) -> str:
    """A stage's log line for the table: training records in words, anything else as it is."""
    try:
        rec = json.loads(line)
    except ValueError:
        return _short(line)
    if not isinstance(rec, dict):
        return _short(line)
    if "epoch" in rec:
        loss = rec.get("train_loss")
        return f"epoch {int(rec['epoch']) + 1}" + (f", loss {loss:.4g}" if isinstance(loss, (int, float)) else "")
    if "phase" in rec and "step" in rec:
        loss = rec.get("loss")
        return f"{rec['phase']} step {rec['step']}" + (f", loss {loss:.4g}" if isinstance(loss, (int, float)) else "")
    return _short(line)


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE - 3] + "..."
