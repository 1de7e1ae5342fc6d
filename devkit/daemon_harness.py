"""Runs the real `qasr-live serve` process for the end-to-end tests and talks to it like a user would.

``RunningDaemon`` starts the daemon as a subprocess with its own config, runtime directory, journal and
XDG directories under a temporary path, waits for systemd-style readiness (``READY=1`` on a ``NOTIFY_SOCKET`` the
test owns, exactly what systemd would see), and offers: a WebSocket subscriber collecting every event, ``ctl()``
(the real `qasr-live ctl` command), the journal, and a clean SIGTERM stop that returns the daemon's log.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import yaml
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from qasr_live.outputs.journal import read_entries

READY_TIMEOUT = 60.0


def write_config(path: Path, model_dir: Path, tmp: Path, **sections: dict) -> Path:
    """A config.yaml for a test daemon: everything private to ``tmp``, WebSocket on a free port."""
    cfg: dict = {
        "model": {"dir": str(model_dir)},
        "websocket": {"port": 0},
        "journal": {"path": str(tmp / "journal.jsonl")},
        "control": {"runtime_dir": str(tmp / "run")},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class EventCollector:
    """A WebSocket client on its own thread that keeps every event it receives, in order."""

    def __init__(self, url: str, token: str, since_seq: int | None = None) -> None:
        self.events: list[dict] = []
        self.arrivals: list[float] = []  # time.monotonic() at which each event arrived
        self._cond = threading.Condition()
        self._failure: Exception | None = None
        self._exit = contextlib.ExitStack()  # websockets wants its sync client used as a context manager
        self._ws = self._exit.enter_context(
            connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10)
        )
        if since_seq is not None:
            self._ws.send(json.dumps({"type": "subscribe", "since_seq": since_seq}))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for message in self._ws:  # ends without an exception when the server closes normally
                with self._cond:
                    self.arrivals.append(time.monotonic())
                    self.events.append(json.loads(message))
                    self._cond.notify_all()
        except ConnectionClosed:
            pass  # the daemon went away: what arrived is what the test checks
        except Exception as e:  # a broken client is the test's failure, raised by wait_for, not a silent timeout
            with self._cond:
                self._failure = e
                self._cond.notify_all()

    def send(self, message: dict) -> None:
        self._ws.send(json.dumps(message))

    def send_raw(self, text: str | bytes) -> None:
        """Send a frame as it is (hostile input: not necessarily JSON)."""
        self._ws.send(text)

    def wait_for(self, predicate, timeout: float = 60.0) -> dict:
        """The first event matching ``predicate`` (waiting for it to arrive)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                if self._failure is not None:
                    raise RuntimeError("the event collector failed") from self._failure
                left = deadline - time.monotonic()
                if left <= 0:
                    types = [e["type"] for e in self.events]
                    raise TimeoutError(f"no matching event within {timeout} s; got {types}")
                self._cond.wait(left)

    def of_type(self, kind: str) -> list[dict]:
        with self._cond:
            return [e for e in self.events if e["type"] == kind]

    def close(self) -> None:
        self._exit.close()
        self._thread.join(5)


class RunningDaemon:
    def __init__(
        self,
        config: Path,
        tmp: Path,
        *,
        stdin=None,
        env: dict | None = None,
        args: tuple = (),
        command: tuple[str, ...] = ("-m", "qasr_live", "serve"),  # the bench's daemon: ("-m", "bench.daemon", ...)
    ) -> None:
        self.tmp = tmp
        self.runtime_dir = tmp / "run"
        self.journal_path = tmp / "journal.jsonl"
        self.config = config
        notify_path = tmp / "notify.sock"
        notify_path.unlink(missing_ok=True)  # left by an earlier daemon of the same test directory
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        full_env = {
            **os.environ,
            "NOTIFY_SOCKET": str(notify_path),
            "XDG_CONFIG_HOME": str(tmp / "xdg-config"),
            "XDG_STATE_HOME": str(tmp / "xdg-state"),
            "XDG_DATA_HOME": str(tmp / "xdg-data"),  # no installed (default) model of the user's
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.log_path = tmp / "daemon.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, *command, "--config", str(config), *args],
            stdin=stdin,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        self.ready_seconds = self._wait_ready()
        self.url = (self.runtime_dir / "websocket").read_text().strip()

    def _wait_ready(self) -> float:
        t0 = time.monotonic()
        self._notify.settimeout(0.2)
        while time.monotonic() - t0 < READY_TIMEOUT:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode} before ready:\n{self.log()}")
            try:
                message = self._notify.recv(4096).decode()
            except TimeoutError:
                continue
            if "READY=1" in message.split("\n"):
                return time.monotonic() - t0
        raise TimeoutError(f"daemon not ready within {READY_TIMEOUT} s:\n{self.log()}")

    def token(self, kind: str = "token") -> str:
        return (self.runtime_dir / kind).read_text().strip()

    def subscribe(self, since_seq: int | None = None, kind: str = "token") -> EventCollector:
        return EventCollector(self.url, self.token(kind), since_seq)

    def ctl(self, action: str, check: bool = True) -> dict:
        result = subprocess.run(
            [sys.executable, "-m", "qasr_live", "ctl", action, "--json", "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check:
            assert result.returncode == 0, result.stderr
        return json.loads(result.stdout) if result.stdout.strip() else {"stderr": result.stderr}

    def status(self) -> dict:
        """The daemon's status over the ctl socket itself (one JSON line each way; no `qasr-live ctl` process)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(self.runtime_dir / "ctl.sock"))
            s.sendall(b'{"command": "status"}\n')
            reply = json.loads(s.makefile("rb").readline())
        assert reply["ok"], reply
        return reply["status"]

    def journal(self) -> list:
        return read_entries(self.journal_path) if self.journal_path.exists() else []

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):  # a pipe whose reader is gone: nothing left to flush
                    stream.close()
        self._log.close()
        self._notify.close()
        return code


class RealtimeMic:
    """Feeds a daemon's stdin (``audio.source: "-"``) in real time, as a microphone would: 20 ms blocks of
    silence unless a clip is queued. ``say()`` returns the monotonic times at which the clip's first and last
    blocks were written, so callers can time latencies from the audio itself."""

    BLOCK = 320  # 20 ms at 16 kHz

    def __init__(self, stdin) -> None:
        self._stdin = stdin
        self._queue: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._done = threading.Condition(self._lock)
        self._times: list[tuple[float, float]] = []
        self._queued = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def say(self, pcm: np.ndarray, wait: bool = True) -> tuple[float, float] | None:
        """Queue int16 samples; with ``wait``, block until written and return (first, last) write times."""
        with self._lock:
            self._queue.append(np.asarray(pcm, dtype=np.int16))
            self._queued += 1
            n = self._queued
            if not wait:
                return None
            if not self._done.wait_for(lambda: len(self._times) >= n or self._stop.is_set(), timeout=120):
                raise TimeoutError("the daemon stopped reading its stdin")
            return self._times[n - 1]

    def _run(self) -> None:
        t_next = time.monotonic()
        pending, first = np.zeros(0, dtype=np.int16), None
        while not self._stop.is_set():
            with self._lock:
                if not pending.size and self._queue:
                    pending, first = self._queue.pop(0), None
            if pending.size:
                chunk, pending = pending[: self.BLOCK], pending[self.BLOCK :]
            else:
                chunk = np.zeros(0, dtype=np.int16)
            try:
                self._stdin.write(np.pad(chunk, (0, self.BLOCK - len(chunk))).tobytes())
                self._stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                with self._lock:
                    self._stop.set()
                    self._done.notify_all()
                return
            now = time.monotonic()
            if chunk.size:
                first = now if first is None else first
                if not pending.size:
                    with self._lock:
                        self._times.append((first, now))
                        self._done.notify_all()
            t_next += self.BLOCK / 16000
            time.sleep(max(0.0, t_next - time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
