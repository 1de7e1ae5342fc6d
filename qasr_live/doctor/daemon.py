"""What the daemon needs around it: its runtime directory (tokens, the running daemon), the systemd user unit,
and the WebSocket port."""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from qasr_live.doctor.context import Context
from qasr_live.doctor.report import Check, Lines
from qasr_live.service import UNIT_NAME, exec_start, installation_command, unit_path

__all__ = ["check_runtime", "check_service", "check_websocket"]


def check_runtime(ctx: Context) -> list[Check]:
    out = Lines("Runtime")
    path = ctx.runtime_dir
    if _directory_line(out, path):
        tokens = {name: path / name for name in ("token", "read-token")}
        present = [n for n, p in tokens.items() if p.exists()]
        loose = [n for n in present if _loose(tokens[n])]
        if loose:
            fix = f"`chmod 600 {' '.join(str(tokens[n]) for n in loose)}` (or delete them: the daemon makes new ones)"
            out.warn("tokens", f"readable by others: {', '.join(loose)}", fix, present=present)
        else:
            what = f"{', '.join(present)}: mode 0600" if present else "none yet (made at the first start)"
            out.ok("tokens", what, present=present)
    daemon = ctx.daemon
    if daemon.problem:
        fix = "wait for it, or restart it: `systemctl --user restart qasr-live` (or end that process)"
        out.warn("daemon", daemon.problem, fix, running=None)
    elif daemon.status is None:
        start = "`qasr-live serve` or `systemctl --user start qasr-live` starts it"
        out.ok("daemon", f"not running ({start})", running=False)
    else:
        s = daemon.status
        detail = f"running: pid {s.get('pid')}, {s.get('mode')} mode, {s.get('state')}, model {s.get('model')}"
        out.ok("daemon", detail, running=True, status=s)
    return out


def _directory_line(out: Lines, path: Path) -> bool:
    """Add the runtime directory's line; whether it exists and is ours (so its files are worth a look)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        parent = next(p for p in path.parents if p.exists())
        if os.access(parent, os.W_OK | os.X_OK):
            out.ok("directory", f"{path}: not made yet (the daemon makes it, mode 0700)", path=str(path))
        else:
            fix = "set control.runtime_dir in config.yaml to a directory you can write"
            out.fail("directory", f"{path} cannot be made: {parent} is not writable", fix, path=str(path))
        return False
    mode = stat.S_IMODE(info.st_mode)
    data = {"path": str(path), "mode": f"{mode:04o}"}
    if info.st_uid != os.getuid():
        fix = "set control.runtime_dir in config.yaml to a private directory"
        out.fail("directory", f"{path} belongs to another user (uid {info.st_uid})", fix, **data)
        return False
    if mode & 0o077:
        out.warn("directory", f"{path} is mode {mode:04o}: others can reach it", f"`chmod 700 {path}`", **data)
    else:
        out.ok("directory", f"{path} (mode {mode:04o})", **data)
    return True


def _loose(path: Path) -> bool:
    return bool(stat.S_IMODE(path.stat().st_mode) & 0o077)


def check_service(ctx: Context) -> list[Check]:
    out = Lines("Service")
    unit = unit_path()
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        fix = "start the daemon with your session instead (autostart `qasr-live serve`)"
        out.warn("systemd", "systemctl not found: no systemd user service here", fix)
    else:
        enabled, problem = _systemctl(systemctl, "is-enabled")
        active, problem2 = _systemctl(systemctl, "is-active")
        problem = problem or problem2
        if problem:
            fix = "log in through a systemd session (or start the daemon yourself with `qasr-live serve`)"
            out.warn("systemd", f"no systemd user manager reachable: {problem}", fix, unit_file=str(unit))
        elif enabled in ("not-found", "") and not unit.exists():
            out.ok("systemd", f"{UNIT_NAME} not installed (optional: `qasr-live install-service`)", installed=False)
        elif active == "failed":
            fix = "read why: `journalctl --user -u qasr-live -e`, fix it, then `systemctl --user restart qasr-live`"
            out.warn("systemd", f"{UNIT_NAME} is {enabled} and failed", fix, enabled=enabled, active=active)
        else:
            out.ok("systemd", f"{UNIT_NAME} is {enabled}, {active}", enabled=enabled, active=active)
    if not unit.exists():
        return out
    argv = exec_start(unit.read_text(errors="replace")) or []
    ours = shlex.split(installation_command())
    config = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None
    data = {"unit": str(unit), "exec_start": argv, "config": config}
    note = f" --config {config}" if config else " (default config)"
    fix = "rewrite the unit for this installation: `qasr-live install-service`"
    if argv[: len(ours)] == ours:
        out.ok("exec start", f"{unit}: runs this installation ({sys.executable}){note}", **data)
    elif not argv:
        out.warn("exec start", f"{unit} has no ExecStart", fix, **data)
    elif argv[0] == "/usr/bin/env" or not Path(argv[0]).is_absolute():
        found = shutil.which(argv[1] if argv[0] == "/usr/bin/env" and len(argv) > 1 else argv[0])
        out.warn("exec start", f"{unit}: runs {' '.join(argv[:2])} from PATH ({found or 'not found'})", fix, **data)
    elif not Path(argv[0]).exists():
        out.warn("exec start", f"{unit}: runs {argv[0]}, which does not exist: the service cannot start", fix, **data)
    else:
        out.warn("exec start", f"{unit}: runs {argv[0]}, not this installation ({sys.executable})", fix, **data)
    return out


def _systemctl(systemctl: str, verb: str) -> tuple[str, str | None]:
    """(answer, None) of `systemctl --user VERB qasr-live`, or ("", why) when no user manager answers."""
    try:
        done = subprocess.run(
            [systemctl, "--user", verb, UNIT_NAME], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return "", str(e)
    answer = done.stdout.strip()
    if answer:  # is-enabled / is-active print their answer (and exit non-zero for "disabled", "inactive"...)
        return answer.splitlines()[0], None
    err = done.stderr.strip()
    if "unit file state" in err and "No such file" in err:  # is-enabled reads unit files, even without a bus
        return "not-found", None
    return "", err.splitlines()[-1] if err else f"exit {done.returncode}"  # e.g. "Failed to connect to bus: ..."


def check_websocket(ctx: Context) -> list[Check]:
    out = Lines("WebSocket")
    ws = ctx.cfg.websocket
    status = ctx.daemon.status or {}
    served = urlsplit(str(status.get("websocket") or ""))
    data = {"host": ws.host, "port": ws.port}
    if not ws.enabled:
        out.ok("port", "off (websocket.enabled: false): no captions, no WebSocket control", **data)
        return out
    if ws.host not in ("127.0.0.1", "localhost", "::1"):
        fix = "set websocket.host: 127.0.0.1 unless other machines must read your dictation"
        out.warn("host", f"websocket.host {ws.host!r} exposes your dictation beyond this machine", fix, **data)
    if served.port is not None and (ws.port in (0, served.port)):
        detail = f"{served.netloc} in use by the running daemon (pid {status.get('pid')})"
        out.ok("port", detail, **data, url=served.geturl(), daemon=True)
        return out
    if ws.port == 0:
        out.ok("port", f"websocket.port 0: any free port on {ws.host} (written to the runtime directory)", **data)
        return out
    problem = _bind_problem(ws.host, ws.port)
    if problem is None:
        out.ok("port", f"{ws.host}:{ws.port} is free", **data)
    elif problem.errno == errno.EADDRINUSE:
        owner = _port_owner(ws.port)
        by = f"{owner} (not a qasr-live daemon of this runtime directory)" if owner else "another program"
        out.fail(
            "port",
            f"{ws.host}:{ws.port} is in use by {by}",
            f"set websocket.port in config.yaml to a free port (or 0 for any), or stop {owner or 'that program'}",
            **data,
            owner=owner,
        )
    else:
        fix = "set websocket.host to 127.0.0.1 and websocket.port to a free port above 1023 (or 0)"
        out.fail("port", f"cannot bind {ws.host}:{ws.port}: {problem.strerror or problem}", fix, **data)
    return out


def _bind_problem(host: str, port: int) -> OSError | None:
    """Why the daemon could not listen on host:port (None: it could), tried like asyncio's server does."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return OSError(errno.EADDRNOTAVAIL, f"websocket.host {host!r} does not resolve ({e.strerror})")
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # what asyncio's create_server sets
            try:
                sock.bind(address)
                sock.listen(1)
            except OSError as e:
                return e
    return None


def _port_owner(port: int) -> str | None:
    """``pid N (name)`` of a process of ours listening on TCP ``port`` (Linux /proc; others' sockets stay hidden)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return f"pid {proc.name} ({(proc / 'comm').read_text().strip()})"
        except OSError:  # another user's process, or one that just ended
            continue
    return None
