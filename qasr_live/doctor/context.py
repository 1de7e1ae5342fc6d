"""What every check may look at: the config, the model resolver, and the facts several sections share (the
running daemon's status, the desktop session), each found once."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qasr_live.config import AppConfig
from qasr_live.desktop import Session, detect_session
from qasr_live.errors import DaemonNotRunning, QasrError
from qasr_live.runtime import RuntimeFiles, lock_holder, resolve_runtime_dir

if TYPE_CHECKING:
    from qasr_live.engine.model_dir import ModelDir

__all__ = ["Context", "DaemonProbe", "resolve_configured_model"]

#: Turns the config into the model it asks for; raises ModelError (or QasrError) when it cannot.


@dataclass(frozen=True, slots=True)
class DaemonProbe:
    """What the ctl socket said: ``status`` is the daemon's status when one answered, ``problem`` why we could not
    tell (a socket that accepts but does not answer)."""

    status: dict[str, Any] | None
    problem: str | None


class Context:
    """The inputs of the checks."""

    def __init__(self, cfg: AppConfig) -> None:
        self.cfg = cfg

    @functools.cached_property
    def runtime_dir(self) -> Path:
        return resolve_runtime_dir(self.cfg.control.runtime_dir)

    @functools.cached_property
    def daemon(self) -> DaemonProbe:
        """The status of the daemon of this runtime directory, asked on its ctl socket (once)."""
        from qasr_live.control.ctl import send_command

        try:
            reply = send_command(self.runtime_dir, "status", timeout=3.0)
        except DaemonNotRunning:
            files = RuntimeFiles(self.runtime_dir)
            pid = lock_holder(files.lock_file)
            if pid is None:
                return DaemonProbe(None, None)
            # the daemon takes the lock first and opens its ctl socket once the model is loaded
            return DaemonProbe(
                None,
                f"pid {pid} holds {files.lock_file} but nothing answers on {files.ctl_socket} "
                "(still loading the model, or hung)",
            )
        except QasrError as e:  # it accepts but does not answer, or the socket is another user's
            return DaemonProbe(None, str(e))
        return DaemonProbe(dict(reply.get("status") or {}), None)

    @functools.cached_property
    def session(self) -> Session:
        return detect_session()


def resolve_configured_model(ctx: Context) -> tuple[ModelDir, list[str]]:
    """The model the config resolves to, and the warnings the resolver logged (the model line reports them,
    instead of a log line after the screen)."""
    from qasr_live.model_store import resolve_model

    logger = logging.getLogger("qasr_live")
    captured = _Captured(logging.WARNING)
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(captured)
    try:
        return resolve_model(ctx.cfg), captured.messages
    finally:
        logger.removeHandler(captured)
        logger.propagate = propagate


class _Captured(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
