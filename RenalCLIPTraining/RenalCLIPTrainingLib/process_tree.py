"""The processes a run started (torchrun and its workers), so Stop can end them with the run.

Inside Slicer the run is a ``QProcess`` child that shares Slicer's process group, and killing it
alone would leave torchrun training on the GPUs. ``descendant_pids`` reads the parent links from
``/proc`` (Linux) or asks ``pgrep -P`` (macOS); ``kill_pids`` sends them SIGKILL.

Usage::

    workers = descendant_pids(job_pid)
    job.cancel(); kill_pids(workers)
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def _children_from_proc() -> dict[int, list[int]] | None:
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()   # after "pid (comm) ": state, ppid, ...
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def _children_from_pgrep(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(p) for p in out.split() if p.isdigit()]


def descendant_pids(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren, ...), parents before their children."""
    if os.name != "posix" or not pid:
        return []
    table = _children_from_proc()
    found, todo = [], [int(pid)]
    while todo:
        parent = todo.pop(0)
        kids = table.get(parent, []) if table is not None else _children_from_pgrep(parent)
        for kid in kids:
            if kid not in found and kid != pid:
                found.append(kid)
                todo.append(kid)
    return found


def kill_pids(pids) -> None:
    """SIGKILL each process still there (ones already gone are ignored)."""
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def job_pid(job) -> int | None:
    """The operating-system id of a ``ChildProcess``'s process (Popen or QProcess backend)."""
    process = getattr(getattr(job, "backend", None), "process", None)
    if process is None:
        return None
    pid = getattr(process, "pid", None)
    if pid is None and hasattr(process, "processId"):
        pid = process.processId()
    return int(pid) if pid else None
