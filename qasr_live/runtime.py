"""The daemon's runtime directory: ctl socket, WebSocket tokens and the port file, private to the user.

Layout of ``$XDG_RUNTIME_DIR/qasr-live`` (mode 0700; every file 0600)::

    ctl.sock      Unix socket of `qasr-live ctl`
    ctl.lock      held (flock) by the running daemon: one daemon per directory
    token         WebSocket token with the read and control scopes
    read-token    WebSocket token with the read scope only (caption overlays, loggers)
    websocket     "ws://HOST:PORT" of the running server (port 0 in config.yaml picks a free one)
    pid           process id of the running daemon

Tokens are made once and kept across restarts, so a caption tool configured with one keeps working; delete the
files to rotate them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from qasr_live.errors import AlreadyRunning, ConfigError

__all__ = [
    "RuntimeFiles",
    "Tokens",
    "already_running",
    "instance_lock",
    "lock_holder",
    "resolve_runtime_dir",
    "write_private",
]


def resolve_runtime_dir(configured: str | None) -> Path:
    """``control.runtime_dir``, else ``$XDG_RUNTIME_DIR/qasr-live``, else ``/tmp/qasr-live-UID``."""
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "qasr-live"
    return Path(tempfile.gettempdir()) / f"qasr-live-{os.getuid()}"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically to a 0600 file (never readable by others, not even for a moment)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class Tokens:
    control: str  # scopes read + control
    read: str  # scope read


@dataclass(frozen=True, slots=True)
class RuntimeFiles:
    dir: Path

    @classmethod
    def create(cls, configured: str | None) -> RuntimeFiles:
        """Resolve the directory and make sure it exists, is ours and is private (0700)."""
        path = resolve_runtime_dir(configured)
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = path.stat()
        except OSError as e:
            raise ConfigError(
                f"control.runtime_dir: cannot create {path}: {e.strerror}; choose a writable directory"
            ) from None
        if info.st_uid != os.getuid():
            raise ConfigError(
                f"control.runtime_dir: {path} belongs to another user; set control.runtime_dir to a private directory"
            )
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(path, 0o700)
        return cls(path)

    @property
    def ctl_socket(self) -> Path:
        return self.dir / "ctl.sock"

    @property
    def websocket_url_file(self) -> Path:
        return self.dir / "websocket"

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    @property
    def lock_file(self) -> Path:
        return self.dir / "ctl.lock"

    def instance_lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold the single-instance lock of this directory, or raise ``AlreadyRunning`` naming the other daemon.
        Taken before anything is loaded, so a second daemon fails at once."""
        return instance_lock(self.lock_file, self.ctl_socket)

    def tokens(self) -> Tokens:
        """The WebSocket tokens, made on first use."""
        return Tokens(control=self._token("token"), read=self._token("read-token"))

    def _token(self, name: str) -> str:
        path = self.dir / name
        try:
            token = path.read_text().strip()
            if token and stat.S_IMODE(path.stat().st_mode) & 0o077 == 0:
                return token
        except FileNotFoundError:
            pass
        token = secrets.token_urlsafe(32)
        write_private(path, token + "\n")
        return token


@contextlib.contextmanager
def instance_lock(lock_file: Path, socket: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (the kernel drops it however the holder dies; the file keeps
    the holder's pid), or raise ``AlreadyRunning`` naming the holder and ``socket``, the place it serves."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise already_running(lock_file, socket) from None
        raise
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing drops the flock; the file stays (removing it would race with a starter)


def lock_holder(lock_file: Path) -> int | None:
    """The pid holding the ``flock`` on ``lock_file``, read from ``/proc/locks`` (Linux) without touching the lock:
    taking it even for a moment could make a daemon starting at that instant fail. None: not held, or unknown."""
    try:
        info = lock_file.stat()
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    inode = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in table.splitlines():  # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2236420 0 EOF"
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode and fields[4].isdigit():
            return int(fields[4])
    return None


def already_running(lock_file: Path, socket: Path) -> AlreadyRunning:
    pid = ""
    with contextlib.suppress(OSError, ValueError):  # no readable pid: the message goes without it
        pid = f" (pid {int(lock_file.read_text().split()[0])})"
    return AlreadyRunning(
        f"another qasr-live daemon is already running{pid} on {socket}; stop it first "
        "(`systemctl --user stop qasr-live`, or end that process), or give this one another control.runtime_dir"
    )
