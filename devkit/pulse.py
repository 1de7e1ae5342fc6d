"""A private PulseAudio server for tests, with a null sink used as a virtual microphone.

Whatever is played into the sink comes out of its monitor source, which is the server's default source, so a
program under test "hears" what the test plays. The server is the test's own: its socket, runtime, state and
config directories live under a directory the test gives (``tmp_path``), its clients find it through
environment variables only, and it never touches (or even looks for) the PulseAudio / PipeWire of the machine
running the tests::

    with PulseAudio(tmp_path) as pulse:
        proc = subprocess.Popen(cmd, env=pulse.child_env())  # a daemon under test
        with pulse.client_env():  # or this process itself (sounddevice / PortAudio)
            source = MicrophoneSource(device=pulse.device_name)
            ...
            pulse.play("speech.wav")  # or pulse.play(samples, rate=16000); waits until played

What the pieces are, and why:

* The server: ``pulseaudio -n -F script`` (no default.pa: only the modules listed here, so no hardware, no
  D-Bus, no X11 bell, no autospawn), user mode, ``--exit-idle-time=-1`` (it never quits on its own),
  ``--daemonize=no`` (the ``Popen`` *is* the server), anonymous auth on its own socket ``<root>/native``.
  ``HOME``/``XDG_*``/``PULSE_*`` of the server point into ``<root>``. It is started in its own session and,
  when entered from the main thread (pytest fixtures are), dies with the test process (``PR_SET_PDEATHSIG``),
  so even a killed test run leaks no server; its clients (players, the keep-awake recorder) end with it.
* Readiness: ``__enter__`` returns only once ``pactl info`` answers and the sink exists; a server that exits
  early raises with the tail of its log (``<root>/pulseaudio.log``).
* The virtual microphone: ``module-null-sink sink_name=<sink>`` (48 kHz stereo, like common hardware); the
  default sink is the sink and the default source its monitor.
* Clients: :attr:`env` holds only the variables to add (:meth:`child_env` is a whole environment for
  ``Popen``, :meth:`client_env` patches ``os.environ`` for a ``with`` block): ``PULSE_SERVER`` (the socket),
  ``PULSE_COOKIE`` and ``PULSE_CLIENTCONFIG`` (``autospawn = no``: a client never starts a server of its own),
  and ``ALSA_CONFIG_PATH``.
* PortAudio (sounddevice) has no PulseAudio backend on Linux: it reaches PulseAudio through ALSA's ``pulse``
  plugin (Debian package ``libasound2-plugins``). ``ALSA_CONFIG_PATH`` adds ``<root>/asound.conf`` to the
  system's ``alsa.conf``; it defines an ALSA PCM named :attr:`device_name` (= the sink name, ``qasr_test_mic``)
  that records the sink's monitor, so the test microphone appears in ``sounddevice.query_devices()`` under its
  own name (as well as through the generic ``pulse``/``default`` devices) and can be selected by name.
  PortAudio enumerates devices once, at ``import sounddevice`` (``Pa_Initialize``): a process that imported it
  before the variables were set must re-initialise PortAudio (``qasr_live.audio.capture.list_input_devices(
  refresh=True)`` does, and ``MicrophoneSource`` does it by itself when a name is not found).
* Keep-awake: an idle null sink renders in 2 s chunks, so a recorder that connects to its monitor can wait up
  to 2 s for its first sample (a quirk of the virtual device; real sources do not do this). A ``parec`` with a
  20 ms latency stays attached to the monitor (``keep_awake=True``, the default), which makes the sink render
  every ~20 ms and the first block of a new stream arrive as it would from a real microphone (``__enter__`` and
  :meth:`load_sink` wait until it receives audio). It only records (into a thread that discards the data) and
  mixes nothing into the sink.
* :meth:`play` runs ``paplay`` into the sink (a WAV path or float samples in [-1, 1]); :meth:`unload_sink` and
  :meth:`load_sink` simulate a microphone being unplugged and plugged back in; :meth:`pactl` runs anything
  else against this server.

Everything is stopped and reaped by ``__exit__`` (players, keep-awake recorder, server: SIGTERM, then SIGKILL
after 5 s), also when the block raises. Tests that need the server skip (not fail) when ``pulseaudio``,
``pactl``, ``paplay``/``parec`` or the ALSA pulse plugin are missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devkit.desktop import stop_process

__all__ = ["PulseAudio", "require_pulse"]

_ALSA_CONF = Path("/usr/share/alsa/alsa.conf")
_ALSA_PULSE_PLUGIN = "libasound_module_pcm_pulse.so"
_PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu/alsa-lib", "/usr/lib/aarch64-linux-gnu/alsa-lib", "/usr/lib/alsa-lib")
# Variables that would point a client at the machine's own sound server.
_SOUND_VARS = ("PULSE_SERVER", "PULSE_COOKIE", "PULSE_CLIENTCONFIG", "PULSE_SINK", "PULSE_SOURCE", "ALSA_CONFIG_PATH")


def _missing_requirements() -> list[str]:
    missing = [
        f"{exe} (apt-get install pulseaudio pulseaudio-utils)"
        for exe in ("pulseaudio", "pactl", "paplay", "parec")
        if shutil.which(exe) is None
    ]
    if not _ALSA_CONF.is_file():
        missing.append(f"{_ALSA_CONF} (apt-get install libasound2)")
    if not any((Path(d) / _ALSA_PULSE_PLUGIN).is_file() for d in _PLUGIN_DIRS):
        missing.append(f"the ALSA pulse plugin {_ALSA_PULSE_PLUGIN} (apt-get install libasound2-plugins)")
    return missing


def require_pulse() -> None:
    """Skip the calling test unless everything :class:`PulseAudio` needs is installed."""
    missing = _missing_requirements()
    if missing:
        pytest.skip("needs " + ", ".join(missing))


def _pdeathsig_usable() -> bool:
    """PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process: only a child
    started by the main thread may use it (a child started from a worker thread, e.g. ``asyncio.to_thread``,
    would be killed when that thread is retired)."""
    return sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread()


def _die_with_parent() -> None:  # preexec_fn: SIGTERM the child when the test process dies (Linux)
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


class PulseAudio:
    """A private PulseAudio server with a null sink as virtual microphone, for a ``with`` block.

    ``root``: an empty-or-new directory for its socket, state, logs and configs (a pytest ``tmp_path``);
    ``sink_name``: name of the null sink (its monitor, ``<sink_name>.monitor``, is the default source, and the
    ALSA/PortAudio device :attr:`device_name` has the same name); ``rate``/``channels``: the sink's format;
    ``keep_awake``: see the module docstring.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        sink_name: str = "qasr_test_mic",
        rate: int = 48000,
        channels: int = 2,
        keep_awake: bool = True,
        start_timeout: float = 15.0,
    ):
        self.root = Path(root).resolve()
        self.sink_name = sink_name
        self.rate, self.channels = rate, channels
        self.keep_awake = keep_awake
        self.start_timeout = start_timeout
        self.socket = self.root / "native"
        self.log_path = self.root / "pulseaudio.log"
        self.proc: subprocess.Popen | None = None
        self.sink_module: int | None = None
        self._keep_awake: subprocess.Popen | None = None
        self._players: list[subprocess.Popen] = []
        self._log: Any = None

    # --- what clients need ---------------------------------------------------------------------------

    @property
    def device_name(self) -> str:
        """The PortAudio (ALSA) input device that records the virtual microphone."""
        return self.sink_name

    @property
    def monitor(self) -> str:
        """The PulseAudio source name of the virtual microphone."""
        return f"{self.sink_name}.monitor"

    @property
    def env(self) -> dict[str, str]:
        """Variables a client (subprocess or this process) needs to use this server and only it."""
        return {
            "PULSE_SERVER": f"unix:{self.socket}",
            "PULSE_COOKIE": str(self.root / "cookie"),
            "PULSE_CLIENTCONFIG": str(self.root / "client.conf"),
            "ALSA_CONFIG_PATH": f"{_ALSA_CONF}:{self.root / 'asound.conf'}",
        }

    def child_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """A full environment for a subprocess: ``base`` (default ``os.environ``) without any sound-server
        variable of its own, plus :attr:`env`."""
        out = {k: v for k, v in (os.environ if base is None else base).items() if k not in _SOUND_VARS}
        out.update(self.env)
        return out

    def client_env(self) -> contextlib.AbstractContextManager[None]:
        """A context manager that applies :attr:`env` to ``os.environ`` (for clients in this process, such as
        sounddevice) and restores the previous values on exit."""
        return self._patched_environ()

    @contextlib.contextmanager
    def _patched_environ(self) -> Iterator[None]:
        saved = {k: os.environ.get(k) for k in (*_SOUND_VARS, *self.env)}
        for k in _SOUND_VARS:
            os.environ.pop(k, None)
        os.environ.update(self.env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    # --- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> PulseAudio:
        require_pulse()
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("home", "config", "state", "runtime"):
            (self.root / sub).mkdir(mode=0o700, exist_ok=True)
        if len(str(self.socket)) > 100:  # sockaddr_un.sun_path is 108 bytes
            raise RuntimeError(f"socket path too long for a Unix socket: {self.socket}")
        (self.root / "client.conf").write_text("autospawn = no\n")
        (self.root / "asound.conf").write_text(
            f"pcm.{self.sink_name} {{\n"
            "    type pulse\n"
            f'    device "{self.monitor}"\n'
            f'    hint {{ show on description "qasr test microphone ({self.monitor})" }}\n'
            "}\n"
        )
        script = self.root / "server.pa"
        script.write_text(
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket}\n"
            f"{self._sink_load_line()}\n"
            f"set-default-sink {self.sink_name}\n"
            f"set-default-source {self.monitor}\n"
        )
        server_env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "XDG_", "DBUS_"))}
        server_env.pop("ALSA_CONFIG_PATH", None)
        server_env.update(
            HOME=str(self.root / "home"),
            XDG_CONFIG_HOME=str(self.root / "config"),
            XDG_RUNTIME_DIR=str(self.root / "runtime"),
            PULSE_RUNTIME_PATH=str(self.root / "runtime"),
            PULSE_STATE_PATH=str(self.root / "state"),
            DBUS_SESSION_BUS_ADDRESS="disabled:",
        )
        server_env.pop("DISPLAY", None)
        try:
            self._log = open(self.log_path, "wb")
            self.proc = subprocess.Popen(
                [
                    "pulseaudio",
                    "-n",
                    "-F",
                    str(script),
                    "--daemonize=no",
                    "--system=false",
                    "--exit-idle-time=-1",
                    "--use-pid-file=no",
                    "--realtime=no",
                    "--high-priority=no",
                    "--log-target=stderr",
                    "--log-level=warning",
                ],
                env=server_env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                start_new_session=True,
                preexec_fn=_die_with_parent if _pdeathsig_usable() else None,
            )
            self._wait_ready()
            self.sink_module = self._find_sink_module()
            if self.keep_awake:
                self._start_keep_awake()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for player in self._players:
            stop_process(player, timeout=2)
        self._players.clear()
        stop_process(self._keep_awake, timeout=2)
        self._keep_awake = None
        proc, self.proc = self.proc, None
        stop_process(proc)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _sink_load_line(self) -> str:
        return (
            f"load-module module-null-sink sink_name={self.sink_name} rate={self.rate} channels={self.channels} "
            f"sink_properties=device.description=qasr-test-microphone"
        )

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"pulseaudio exited with status {self.proc.returncode}: {self.log_tail()}")
            if self.socket.exists():
                done = self._run(["pactl", "info"], check=False, timeout=5)
                if done.returncode == 0:
                    return
                last = done.stderr.strip()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"pulseaudio did not answer within {self.start_timeout:.0f} s ({last}): {self.log_tail()}"
                )
            time.sleep(0.05)

    def _run(self, cmd: list[str], *, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess:
        done = subprocess.run(
            cmd,
            env=self.child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def pactl(self, *args: str, timeout: float = 10.0) -> str:
        """Run ``pactl ARGS`` against this server; return its stdout; raise with its stderr on failure."""
        return self._run(["pactl", *args], timeout=timeout).stdout

    def _find_sink_module(self) -> int:
        for line in self.pactl("list", "short", "modules").splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] == "module-null-sink" and f"sink_name={self.sink_name}" in parts[2]:
                return int(parts[0])
        raise RuntimeError(f"the null sink {self.sink_name} is not loaded: {self.log_tail()}")

    def _start_keep_awake(self, timeout: float = 5.0) -> None:
        """Attach the keep-awake recorder and wait until it receives audio: from then on the sink renders in
        small chunks (the first chunk can take up to the idle sink's 2 s)."""
        stop_process(self._keep_awake, timeout=2)
        proc = self._keep_awake = subprocess.Popen(
            ["parec", "-d", self.monitor, "--latency-msec=20", "--rate=8000", "--channels=1", "--format=s16le"],
            env=self.child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # no PDEATHSIG: it ends with the server anyway (and see _die_with_parent)
        )
        receiving = threading.Event()

        def drain() -> None:  # read and discard until parec exits; the first bytes mean "awake"
            assert proc.stdout is not None
            with proc.stdout:
                while proc.stdout.read1(65536):
                    receiving.set()

        threading.Thread(target=drain, name="pulse-keep-awake", daemon=True).start()
        if not receiving.wait(timeout):
            raise RuntimeError(f"parec on {self.monitor} received nothing within {timeout:.0f} s: {self.log_tail()}")

    # --- the virtual microphone --------------------------------------------------------------------------

    def sink_loaded(self) -> bool:
        return any(
            line.split("\t")[1:2] == [self.sink_name] for line in self.pactl("list", "short", "sinks").splitlines()
        )

    def unload_sink(self) -> None:
        """Remove the null sink (and so the microphone): recorders of its monitor lose their stream."""
        if self.sink_module is not None:
            self.pactl("unload-module", str(self.sink_module))
            self.sink_module = None
        stop_process(self._keep_awake, timeout=2)
        self._keep_awake = None

    def load_sink(self) -> None:
        """(Re)create the null sink under the same name, as the default sink/source again."""
        if self.sink_module is None:
            args = self._sink_load_line().split()[1:]
            self.sink_module = int(self.pactl("load-module", *args).strip())
            self.pactl("set-default-sink", self.sink_name)
            self.pactl("set-default-source", self.monitor)
        if self.keep_awake:
            self._start_keep_awake()

    def play(
        self, audio: str | Path | np.ndarray, *, rate: int = 16000, wait: bool = True, timeout: float = 60.0
    ) -> subprocess.Popen:
        """Play a WAV file, or float samples in [-1, 1] (mono, or (frames, channels)) at ``rate``, into the sink.

        ``wait=True`` returns when ``paplay`` has finished (the audio has been rendered into the sink); with
        ``wait=False`` the caller may ``wait()`` on the returned process; ``__exit__`` stops it in any case.
        """
        if isinstance(audio, np.ndarray):
            path = self.root / f"play-{time.monotonic_ns()}.wav"
            frames = audio.reshape(len(audio), -1)
            pcm = np.clip(np.rint(frames * 32767.0), -32768, 32767).astype("<i2")
            with wave.open(str(path), "wb") as w:
                w.setnchannels(frames.shape[1])
                w.setsampwidth(2)
                w.setframerate(rate)
                w.writeframes(pcm.tobytes())
        else:
            path = Path(audio)
        proc = subprocess.Popen(
            ["paplay", f"--device={self.sink_name}", str(path)],
            env=self.child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE if wait else subprocess.DEVNULL,
            start_new_session=True,
        )
        self._players = [p for p in self._players if p.poll() is None]
        self._players.append(proc)
        if wait:
            try:
                _, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                stop_process(proc)
                raise
            if proc.returncode != 0:
                raise RuntimeError(f"paplay {path} failed ({proc.returncode}): {err.decode(errors='replace')}")
        return proc
