"""Runs the real `qasr-live serve` process for the end-to-end tests and talks to it like a user would.

``RunningDaemon`` starts the daemon as a subprocess with its own config, runtime directory, journal and
XDG directories under a temporary path, waits for systemd-style readiness (``READY=1`` on a ``NOTIFY_SOCKET`` the
test owns, exactly what systemd would see), and offers: a WebSocket subscriber collecting every event, ``ctl()``
(the real `qasr-live ctl` command), the journal, and a clean SIGTERM stop that returns the daemon's log.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from websockets.sync.client import connect

from qasr_live.outputs.journal import read_entries

READY_TIMEOUT = 60.0


def write_config(path: Path, model: Path, tmp: Path, **sections: dict) -> Path:
    """A config.yaml for a test daemon: everything private to ``tmp``, WebSocket on a free port."""
    cfg: dict = {
        "model": {"dir": str(model)},
        # Random weights loop more often than not; the repetition guard would then (rightly) call the utterance
        # "no speech". The daemon tests check the plumbing, so they let the loop run to a short token budget.
        "engine": {"decoder_threads": 1, "n_ctx": 2048, "repetition_guard": False, "max_new_tokens": 40},
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
        self._cond = threading.Condition()
        self._ws = connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10)
        if since_seq is not None:
            self._ws.send(json.dumps({"type": "subscribe", "since_seq": since_seq}))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for message in self._ws:
                with self._cond:
                    self.events.append(json.loads(message))
                    self._cond.notify_all()
        except Exception:
            pass

    def send(self, message: dict) -> None:
        self._ws.send(json.dumps(message))

    def wait_for(self, predicate, timeout: float = 60.0) -> dict:
        """The first event matching ``predicate`` (waiting for it to arrive)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    types = [e["type"] for e in self.events]
                    raise TimeoutError(f"no matching event within {timeout} s; got {types}")
                self._cond.wait(left)

    def of_type(self, kind: str) -> list[dict]:
        with self._cond:
            return [e for e in self.events if e["type"] == kind]

    def close(self) -> None:
        self._ws.close()
        self._thread.join(5)


class RunningDaemon:
    def __init__(self, config: Path, tmp: Path, *, stdin=None, env: dict | None = None, args: tuple = ()) -> None:
        self.tmp = tmp
        self.runtime_dir = tmp / "run"
        self.journal_path = tmp / "journal.jsonl"
        self.config = config
        notify_path = tmp / "notify.sock"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        full_env = {
            **os.environ,
            "NOTIFY_SOCKET": str(notify_path),
            "XDG_CONFIG_HOME": str(tmp / "xdg-config"),
            "XDG_STATE_HOME": str(tmp / "xdg-state"),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.log_path = tmp / "daemon.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qasr_live", "serve", "--config", str(config), *args],
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
        self._log.close()
        self._notify.close()
        return code
