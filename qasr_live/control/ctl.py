"""``qasr-live ctl``: a Unix-socket control server in the daemon, its client, and signal triggers.

**Protocol.** The daemon listens on ``RuntimeFiles.ctl_socket`` (``$XDG_RUNTIME_DIR/qasr-live/ctl.sock``, mode
0600 in a 0700 directory). A client connects, sends **one** JSON line ``{"command": "ptt-press"}`` (a bare word
line such as ``toggle`` is accepted too, for ``socat``/``nc -U``), and gets **one** JSON line back, then the
connection closes::

    {"ok": true, "command": "ptt-press", "action": "ptt_press"}
    {"ok": true, "command": "status", "status": {...the daemon's status...}}
    {"ok": false, "command": "frobnicate", "error": "unknown command 'frobnicate'; known: start, stop, ..."}

Commands (:data:`CTL_COMMANDS`) and the :class:`~qasr_live.events.ControlAction` they map to:
``start``, ``stop``, ``toggle``, ``cancel``, ``finalize``, ``ptt-press`` → ``ptt_press``, ``ptt-release`` →
``ptt_release``; ``status`` asks the daemon's status callback instead. Whatever the action callback returns (a
dict) is merged into the reply; an exception it raises becomes ``{"ok": false, "error": ...}``. Several
clients may talk at once: each connection is its own task. A client that sends nothing within
``read_timeout_s`` or a line over 64 KiB is answered with an error and dropped.

**One daemon per runtime directory.** :meth:`CtlServer.start` takes the exclusive ``flock`` on ``ctl.lock``
beside the socket (:func:`~qasr_live.runtime.instance_lock`), unless its owner holds it already (the daemon
takes it before it loads the model: ``lock=False``). If another live daemon holds it, or without a lock answers
on the socket, :class:`~qasr_live.errors.AlreadyRunning` names the socket and how to stop that daemon. A socket
file left by a crashed daemon is replaced. The socket is bound under a temporary name, ``chmod 0600`` and renamed
into place, so it is never reachable with wider permissions; on close it is removed only if it is still ours.

**Client.** :func:`send_command` (what ``qasr-live ctl`` calls) raises :class:`DaemonNotRunning` naming the
socket path and how to start the daemon when nobody listens.

**Signals** (:func:`install_signal_handlers`): ``SIGUSR1`` = ``toggle``, ``SIGUSR2`` = ``cancel`` — for key
bindings that can only send signals: ``systemctl --user kill -s USR1 qasr-live``, or
``kill -USR1 "$(cat "$XDG_RUNTIME_DIR/qasr-live/pid")"``. (Handy uses SIGUSR2 for toggle; here the more common
action gets the first signal.) Push-to-talk needs separate press and release bindings and therefore the socket
(``qasr-live ctl ptt-press`` / ``ptt-release``; Sway: ``bindsym --release``, Hyprland: ``bindr``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from qasr_live.errors import DaemonNotRunning, ProtocolError, QasrError
from qasr_live.events import ControlAction
from qasr_live.runtime import RuntimeFiles, already_running, instance_lock, resolve_runtime_dir

__all__ = [
    "CTL_COMMANDS",
    "SIGNAL_ACTIONS",
    "CtlServer",
    "command_action",
    "install_signal_handlers",
    "send_command",
]

log = logging.getLogger(__name__)

#: ctl command -> ControlAction (``status`` has none: it asks the status callback).
CTL_COMMANDS: dict[str, ControlAction | None] = {
    "start": ControlAction.START,
    "stop": ControlAction.STOP,
    "toggle": ControlAction.TOGGLE,
    "cancel": ControlAction.CANCEL,
    "finalize": ControlAction.FINALIZE,
    "ptt-press": ControlAction.PTT_PRESS,
    "ptt-release": ControlAction.PTT_RELEASE,
    "status": None,
}
#: Signals the daemon reacts to, and the action each one triggers.
SIGNAL_ACTIONS: dict[signal.Signals, ControlAction] = {
    signal.SIGUSR1: ControlAction.TOGGLE,
    signal.SIGUSR2: ControlAction.CANCEL,
}

_MAX_LINE = 64 * 1024
_START_HINT = "start it with `qasr-live serve` (or `systemctl --user start qasr-live`)"

ActionCallback = Callable[[ControlAction], "Mapping[str, Any] | Awaitable[Mapping[str, Any] | None] | None"]
StatusCallback = Callable[[], "Mapping[str, Any] | Awaitable[Mapping[str, Any]]"]


def command_action(command: str) -> ControlAction | None:
    """The action of a ctl command (``None`` for ``status``); ``ProtocolError`` for an unknown command.

    ``ptt_press`` spellings (with an underscore) are accepted as well.
    """
    name = _canonical(command) if isinstance(command, str) else None
    if name not in CTL_COMMANDS:
        raise ProtocolError(f"unknown command {command!r}; known: {', '.join(CTL_COMMANDS)}")
    return CTL_COMMANDS[name]


def _canonical(command: str) -> str:
    return command.strip().lower().replace("_", "-")


# --------------------------------------------------------------------------------------------- server


class CtlServer:
    """The ctl socket server; ``await start()``, ``await close()`` (or ``async with``).

    ``path``: the socket (``RuntimeFiles.ctl_socket``). ``on_action``: called (sync or async) with the
    ControlAction of each command; a dict it returns is merged into the reply. ``get_status``: called (sync or
    async) for ``status``; its dict is the reply's ``status``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        on_action: ActionCallback,
        get_status: StatusCallback,
        *,
        read_timeout_s: float = 5.0,
        lock: bool = True,
    ):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name.removesuffix(".sock") + ".lock")
        self._lock: contextlib.ExitStack | None = contextlib.ExitStack() if lock else None
        self._on_action = on_action
        self._get_status = get_status
        self.read_timeout_s = read_timeout_s
        self._server: asyncio.base_events.Server | None = None
        self._inode: tuple[int, int] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def for_runtime(
        cls, runtime: RuntimeFiles, on_action: ActionCallback, get_status: StatusCallback, *, lock: bool = True
    ) -> CtlServer:
        return cls(runtime.ctl_socket, on_action, get_status, lock=lock)

    async def start(self) -> None:
        """Take the single-instance lock (unless the owner holds it), replace a stale socket, bind (0600), serve."""
        if self._server is not None:
            return
        if self._lock is not None:
            self._lock.enter_context(instance_lock(self.lock_path, self.path))
        try:
            self._check_existing_socket()
            sock = self._bind()
            self._server = await asyncio.start_unix_server(self._handle, sock=sock, limit=_MAX_LINE)
        except BaseException:
            if self._lock is not None:
                self._lock.close()
            raise
        log.info("ctl: listening on %s", self.path)

    def _check_existing_socket(self) -> None:
        try:
            info = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise QasrError(f"{self.path} exists and is not a socket; remove it, or set another control.runtime_dir")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("ctl: replacing the stale socket %s (its daemon is gone)", self.path)
            return  # stale: replaced atomically by _bind's rename
        except OSError as e:
            raise QasrError(f"cannot check the existing socket {self.path}: {e}") from None
        else:
            raise already_running(self.lock_path, self.path)
        finally:
            probe.close()

    def _bind(self) -> socket.socket:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if len(os.fsencode(tmp)) > 107:
            raise QasrError(
                f"control.runtime_dir: {self.path.parent} is too long a path for a Unix socket "
                "(at most about 90 characters); choose a shorter directory"
            )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
            info = self.path.stat()
            self._inode = (info.st_dev, info.st_ino)
            sock.listen(64)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return sock

    async def close(self) -> None:
        """Stop serving, finish the connections in progress (briefly), remove our socket, drop the lock."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=1.0)
            for task in pending:
                task.cancel()
        await server.wait_closed()
        try:
            info = self.path.stat()
            if self._inode == (info.st_dev, info.st_ino):
                self.path.unlink()
        except FileNotFoundError:
            pass
        if self._lock is not None:
            self._lock.close()

    async def __aenter__(self) -> CtlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            reply = await self._reply(reader)
            try:
                data = json.dumps(reply, ensure_ascii=False, default=str).encode()
            except UnicodeEncodeError:  # a lone surrogate echoed from the request: \u escapes are still JSON
                data = json.dumps(reply, default=str).encode()
            writer.write(data + b"\n")
            await asyncio.wait_for(writer.drain(), self.read_timeout_s)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _reply(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(reader.readline(), self.read_timeout_s)
        except TimeoutError:
            return {"ok": False, "error": f"no command received within {self.read_timeout_s:g} s"}
        except (ValueError, asyncio.LimitOverrunError):
            return {"ok": False, "error": f"command line longer than {_MAX_LINE} bytes"}
        try:
            command = _parse_request(line)
            action = command_action(command)
        except ProtocolError as e:
            return {"ok": False, "error": str(e)}
        name = _canonical(command)
        try:
            if action is None:
                status = await _maybe_await(self._get_status())
                return {"ok": True, "command": name, "status": dict(status or {})}
            extra = await _maybe_await(self._on_action(action))
        except QasrError as e:
            return {"ok": False, "command": name, "error": str(e)}
        except Exception as e:
            log.exception("ctl: %s failed", name)
            return {"ok": False, "command": name, "error": f"internal error: {type(e).__name__}: {e}"}
        reply: dict[str, Any] = {"ok": True, "command": name, "action": action}
        if isinstance(extra, Mapping):
            reply.update({k: v for k, v in extra.items() if k not in ("command", "action")})
        return reply


def _parse_request(line: bytes) -> str:
    """The command of one request line: ``{"command": "..."}`` or a bare word."""
    try:
        text = line.decode().strip()
    except UnicodeDecodeError:
        raise ProtocolError("the request is not UTF-8") from None
    if not text:
        raise ProtocolError('empty request; send one JSON line such as {"command": "toggle"}')
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ProtocolError(f"the request is not valid JSON: {e}") from None
        except RecursionError:  # `{"a":[[[[...` deeper than Python's stack
            raise ProtocolError('the request is nested too deeply; send {"command": "..."}') from None
        command = data.get("command") if isinstance(data, dict) else None
        if not isinstance(command, str):
            raise ProtocolError('the request needs a "command" string, e.g. {"command": "toggle"}')
        return command
    return text


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


# --------------------------------------------------------------------------------------------- client


def send_command(runtime_dir: str | os.PathLike[str] | None, command: str, timeout: float = 5.0) -> dict[str, Any]:
    """Send one ctl command to the daemon of ``runtime_dir`` (``control.runtime_dir``; ``None`` = the default
    directory) and return its JSON reply (``{"ok": ..., ...}``; a refused command has ``ok`` false and an
    ``error``). Raises ``ProtocolError`` for an unknown command, :class:`DaemonNotRunning` when no daemon answers
    and ``QasrError`` when it does not reply within ``timeout`` seconds."""
    command_action(command)  # unknown commands fail here, without a daemon
    name = _canonical(command)
    path = RuntimeFiles(resolve_runtime_dir(os.fspath(runtime_dir) if runtime_dir is not None else None)).ctl_socket
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise DaemonNotRunning(f"no qasr-live daemon is running: {path} does not exist; {_START_HINT}") from None
        except ConnectionRefusedError:
            raise DaemonNotRunning(
                f"no qasr-live daemon is running: nobody listens on {path} (left by a daemon that stopped); "
                f"{_START_HINT}"
            ) from None
        except PermissionError:
            raise QasrError(f"cannot connect to {path}: permission denied (is the daemon another user's?)") from None
        except TimeoutError:
            raise QasrError(f"the daemon on {path} did not accept the connection within {timeout:g} s") from None
        sock.sendall((json.dumps({"command": name}) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise QasrError(f"the daemon on {path} did not answer {name!r} within {timeout:g} s") from None
    except (ConnectionResetError, BrokenPipeError) as e:
        raise QasrError(f"the daemon on {path} closed the connection: {e}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(data.decode())
    except ValueError:
        raise QasrError(f"the daemon on {path} sent an unreadable reply: {data[:200]!r}") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise QasrError(f"the daemon on {path} sent an unexpected reply: {reply!r}")
    return reply


# --------------------------------------------------------------------------------------------- signals


def install_signal_handlers(
    loop: asyncio.AbstractEventLoop, on_action: Callable[[ControlAction], Any]
) -> Callable[[], None]:
    """Call ``on_action("toggle")`` on SIGUSR1 and ``on_action("cancel")`` on SIGUSR2 (from the loop; an async
    callback is scheduled as a task). Returns a function that removes the handlers."""

    tasks: set[asyncio.Future[Any]] = set()

    def make(action: ControlAction) -> Callable[[], None]:
        def handler() -> None:
            log.info("ctl: signal -> %s", action)
            try:
                result = on_action(action)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result, loop=loop)
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            except Exception:
                log.exception("ctl: the %s signal handler failed", action)

        return handler

    for sig, action in SIGNAL_ACTIONS.items():
        loop.add_signal_handler(sig, make(action))

    def remove() -> None:
        for sig in SIGNAL_ACTIONS:
            loop.remove_signal_handler(sig)

    return remove
