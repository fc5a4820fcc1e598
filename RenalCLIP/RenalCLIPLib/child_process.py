"""Run a command in a child process and follow its JSON-lines protocol; Cancel kills it.

``ChildProcess`` reads the child's stdout line by line with ``renalclip_lib.progress.parse_line``:
progress, log, result and error events go to the callbacks; any other stdout line and every
stderr line are passed on as log text. When the child ends, ``status`` is "succeeded" (exit 0),
"failed" (with ``error``: the error event's message, else the child's last
``renalclip: error: ...`` line, else its last stderr line) or "cancelled".

Two interchangeable backends start the process: ``QProcessBackend`` inside Slicer (signals arrive
on the GUI thread, nothing blocks) and ``PopenBackend`` anywhere (reader threads fill a queue;
``pump()`` delivers the events on the caller's thread, e.g. from a timer or ``wait()``).

Usage::

    job = ChildProcess(PopenBackend(), on_progress=lambda step, f, msg: print(step, f),
                       on_finished=lambda job: print(job.status, job.result))
    job.start(["python", "-m", "renalclip_lib.cli", "analyze", ..., "--progress-json"])
    job.wait()          # headless; in the GUI the QProcess backend calls back by itself
    job.cancel()        # kills the child (and, with PopenBackend on POSIX, its process group)
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from typing import Callable, Sequence

from renalclip_lib.progress import parse_line

RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"
ERROR_PREFIX = "renalclip: error: "


class ChildProcess:
    """One child process and the protocol state read from it (see the module docstring)."""

    def __init__(self, backend=None, on_progress: Callable | None = None, on_log: Callable | None = None,
                 on_result: Callable | None = None, on_error: Callable | None = None,
                 on_finished: Callable | None = None):
        self.backend = backend or PopenBackend()
        self.on_progress, self.on_log, self.on_result = on_progress, on_log, on_result
        self.on_error, self.on_finished = on_error, on_finished
        self.status: str | None = None
        self.result: dict | None = None
        self.error: str | None = None
        self.exit_code: int | None = None
        self.fraction = 0.0
        self.stderr_tail: list[str] = []
        self._buffers = {"stdout": "", "stderr": ""}
        self._cancel_requested = False

    @property
    def running(self) -> bool:
        return self.status == RUNNING

    def start(self, argv: Sequence[str], env: dict | None = None, cwd: str | None = None) -> "ChildProcess":
        if self.running:
            raise RuntimeError("a child process is already running")
        self.status, self.result, self.error, self.exit_code, self.fraction = RUNNING, None, None, None, 0.0
        self.stderr_tail, self._buffers, self._cancel_requested = [], {"stdout": "", "stderr": ""}, False
        try:
            self.backend.start(self, [str(a) for a in argv], env, cwd)
        except OSError as exc:
            self.status, self.error = FAILED, f"cannot start {argv[0]}: {exc}"
            self._call(self.on_error, self.error, None)
            self._call(self.on_finished, self)
        return self

    def cancel(self) -> None:
        """Kill the child; ``on_finished`` follows with status "cancelled"."""
        if self.running:
            self._cancel_requested = True
            self.backend.kill()

    def wait(self, timeout: float | None = None) -> str:
        """Deliver events until the child ends (``PopenBackend``); returns the status."""
        import time

        end = None if timeout is None else time.monotonic() + timeout
        while self.running:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"child process still running after {timeout} s")
            self.backend.pump(0.1 if left is None else min(0.1, left))
        return self.status

    # Called by the backends --------------------------------------------------------------
    def feed(self, stream: str, text: str) -> None:
        """Text read from the child's ``stream`` ("stdout" or "stderr"), possibly partial lines."""
        data = self._buffers[stream] + text
        *lines, rest = data.split("\n")
        self._buffers[stream] = rest
        for line in lines:
            self._line(stream, line.rstrip("\r"))

    def finished(self, exit_code: int | None) -> None:
        """The child has ended (``exit_code`` None when it crashed or was killed)."""
        if not self.running:
            return
        for stream in ("stdout", "stderr"):
            if self._buffers[stream]:
                rest, self._buffers[stream] = self._buffers[stream], ""
                self._line(stream, rest)
        self.exit_code = exit_code
        if self._cancel_requested:
            self.status = CANCELLED
        elif exit_code == 0:
            self.status = SUCCEEDED
            self.fraction = 1.0
        else:
            self.status = FAILED
            if self.error is None:
                self.error = self._stderr_error(exit_code)
                self._call(self.on_error, self.error, exit_code)
        self._call(self.on_finished, self)

    # -------------------------------------------------------------------------------------
    def _line(self, stream: str, line: str) -> None:
        if not line.strip():
            return
        event = parse_line(line) if stream == "stdout" else None
        if event is None:
            if stream == "stderr":
                self.stderr_tail = (self.stderr_tail + [line])[-50:]
            self._call(self.on_log, line)
            return
        kind = event["event"]
        if kind == "progress":
            self.fraction = float(event.get("fraction", self.fraction))
            self._call(self.on_progress, str(event.get("step", "")), self.fraction, str(event.get("message", "")))
        elif kind == "log":
            self._call(self.on_log, str(event.get("message", "")))
        elif kind == "result":
            self.result = {k: v for k, v in event.items() if k != "event"}
            self._call(self.on_result, self.result)
        elif kind == "error":
            self.error = str(event.get("message", "unknown error"))
            self._call(self.on_error, self.error, event.get("exit_code"))

    def _stderr_error(self, exit_code) -> str:
        for line in reversed(self.stderr_tail):
            if line.startswith(ERROR_PREFIX):
                return line[len(ERROR_PREFIX):]
        if self.stderr_tail:
            return self.stderr_tail[-1].strip()
        return f"the child process exited with code {exit_code}"

    @staticmethod
    def _call(callback, *args) -> None:
        if callback is not None:
            callback(*args)


class PopenBackend:
    """``subprocess.Popen`` with reader threads; events are delivered by ``pump()`` on the caller's thread."""

    def __init__(self):
        self.process = None
        self._queue: queue.Queue = queue.Queue()
        self._owner = None
        self._open_streams = 0

    def start(self, owner: ChildProcess, argv, env, cwd) -> None:
        self._owner, self._queue = owner, queue.Queue()
        kwargs = {"start_new_session": True} if os.name == "posix" else {
            "creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                        env=env, cwd=cwd, text=True, encoding="utf-8", errors="replace", bufsize=1,
                                        **kwargs)
        self._open_streams = 2
        for name, stream in (("stdout", self.process.stdout), ("stderr", self.process.stderr)):
            threading.Thread(target=self._read, args=(name, stream), daemon=True).start()

    def _read(self, name: str, stream) -> None:
        for line in iter(stream.readline, ""):
            self._queue.put((name, line))
        stream.close()
        self._queue.put((name, None))

    def pump(self, timeout: float = 0.0) -> None:
        """Deliver what the child has written so far; notice its end once both streams are closed."""
        owner = self._owner
        if owner is None or not owner.running:
            return
        try:
            item = self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait()
        except queue.Empty:
            return
        while True:
            name, text = item
            if text is None:
                self._open_streams -= 1
            else:
                owner.feed(name, text)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        if self._open_streams == 0:
            owner.finished(self.process.wait())

    def kill(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            if os.name == "posix":
                os.killpg(self.process.pid, signal.SIGKILL)
            else:
                self.process.kill()
        except ProcessLookupError:
            pass


class QProcessBackend:
    """Qt's ``QProcess`` (inside Slicer): output and the end arrive as signals on the GUI thread."""

    def __init__(self):
        self.process = None

    def start(self, owner: ChildProcess, argv, env, cwd) -> None:
        import qt

        proc = qt.QProcess()
        if env is not None:
            qenv = qt.QProcessEnvironment()
            for k, v in env.items():
                qenv.insert(str(k), str(v))
            proc.setProcessEnvironment(qenv)
        if cwd:
            proc.setWorkingDirectory(str(cwd))
        proc.connect("readyReadStandardOutput()", lambda: owner.feed("stdout", _text(proc.readAllStandardOutput())))
        proc.connect("readyReadStandardError()", lambda: owner.feed("stderr", _text(proc.readAllStandardError())))
        proc.connect("finished(int,QProcess::ExitStatus)",
                     lambda code, status: owner.finished(code if status == qt.QProcess.NormalExit else None))
        proc.connect("errorOccurred(QProcess::ProcessError)",
                     lambda err: owner.finished(None) if err == qt.QProcess.FailedToStart else None)
        self.process = proc
        proc.start(argv[0], list(argv[1:]))

    def pump(self, timeout: float = 0.0) -> None:
        import qt
        import slicer

        if self.process is not None:
            self.process.waitForReadyRead(int(timeout * 1000))
        slicer.app.processEvents(qt.QEventLoop.AllEvents)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()


def _text(qbytearray) -> str:
    """A QByteArray read from the child as text (PythonQt gives its bytes through ``data()``)."""
    data = qbytearray.data() if hasattr(qbytearray, "data") else qbytearray
    return bytes(data).decode("utf-8", "replace") if not isinstance(data, str) else data


def default_backend():
    """QProcess inside the Slicer application, Popen elsewhere."""
    try:
        import slicer

        if getattr(slicer, "app", None) is not None:
            return QProcessBackend()
    except ImportError:
        pass
    return PopenBackend()
