"""This process owning the Wayland clipboard and offering **every** saved MIME type at once, through the
data-control protocol (what clipboard managers use): the Wayland counterpart of the X11 ``XClipboardOwner``.

``wl-copy`` offers one type per process, so without this a restored clipboard keeps only its richest type. The
protocol is spoken with `pywayland <https://pypi.org/project/pywayland/>`_ (optional: ``pip install
qasr-live[wayland]``), never hand-written:

* ``ext-data-control-v1`` (the standard one: wlroots 0.19/sway 1.11, KWin 6.3, Hyprland, niri, COSMIC): its
  bindings ship in pywayland's wheel;
* ``wlr-data-control-unstable-v1`` (older wlroots compositors, sway 1.7-1.10, and KWin): pywayland does not ship
  it, so its bindings are generated at run time by pywayland's own scanner from the protocol XML a system
  package installs (``wlr-protocols``; on Debian 12 ``librust-wayland-protocols-dev``), looked for in
  :data:`WLR_XML_GLOBS`.

GNOME (mutter) speaks neither: there, as without pywayland, the clipboard comes back as one type
(:func:`~qasr_live.outputs.typing.clipboard.restore_wayland`).
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import logging
import os
import queue
import select
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from qasr_live.errors import TypingBackendError

__all__ = ["WLR_XML_GLOBS", "WaylandClipboardOwner", "data_control_protocols", "wayland_socket"]

log = logging.getLogger("qasr_live.outputs.typing.chain")

#: Where system packages put the wlr-data-control protocol XML (first match wins).
WLR_XML_GLOBS = (
    "/usr/share/wlr-protocols/unstable/wlr-data-control-unstable-v1.xml",  # Arch, Fedora, Debian 13 wlr-protocols
    "/usr/local/share/wlr-protocols/unstable/wlr-data-control-unstable-v1.xml",
    # Debian/Ubuntu: the Rust crates' sources carry the XML (librust-wayland-protocols(-wlr)-dev)
    "/usr/share/cargo/registry/wayland-protocols-wlr-*/wlr-protocols/unstable/wlr-data-control-unstable-v1.xml",
    "/usr/share/cargo/registry/wayland-protocols-*/wlr-protocols/unstable/wlr-data-control-unstable-v1.xml",
)


def _load_wlr(xml: str) -> ModuleType:
    """Generate pywayland bindings for the wlr protocol XML with pywayland's scanner and import them as a module
    of ``pywayland.protocol`` (the generated code imports ``wl_seat`` relatively, from ``.wayland``)."""
    from pywayland.scanner import Protocol

    protocol = Protocol.parse_file(xml)
    name = f"pywayland.protocol.{protocol.name}"
    with tempfile.TemporaryDirectory(prefix="qasr-wayland-") as out:
        imports = {iface.name: protocol.name for iface in protocol.interface} | {"wl_seat": "wayland"}
        protocol.output(out, imports)
        spec = importlib.util.spec_from_file_location(name, Path(out) / f"{protocol.name}.py")
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load the bindings generated from {xml}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


@functools.cache
def data_control_protocols() -> tuple[tuple[str, Any], ...]:
    """The data-control managers this process can speak, preferred first: (global name, pywayland interface).
    Empty without pywayland (or without any protocol binding); the reason is logged once."""
    managers: list[tuple[str, Any]] = []
    try:
        from pywayland.protocol.ext_data_control_v1 import ExtDataControlManagerV1
    except ImportError as e:
        log.info("typing: no ext-data-control bindings (%s)", e)
    else:
        managers.append(("ext_data_control_manager_v1", ExtDataControlManagerV1))
    xml = next((hit for pattern in WLR_XML_GLOBS for hit in sorted(glob.glob(pattern))), None)
    if xml is not None:
        try:
            module = _load_wlr(xml)
        except (ImportError, OSError, SyntaxError, ValueError) as e:  # no pywayland, or an XML it cannot read
            log.info("typing: cannot load wlr-data-control from %s: %s", xml, e)
        else:
            managers.append(("zwlr_data_control_manager_v1", module.ZwlrDataControlManagerV1))
    if not managers:
        log.info(
            "typing: Wayland clipboard restore keeps one type: install pywayland (pip install qasr-live[wayland]) "
            "for all of them"
        )
    return tuple(managers)


def wayland_socket(env: Mapping[str, str]) -> str:
    """The compositor's socket path for an environment (``XDG_RUNTIME_DIR`` + ``WAYLAND_DISPLAY``)."""
    display = env.get("WAYLAND_DISPLAY") or "wayland-0"
    if os.path.isabs(display):
        return display
    runtime = env.get("XDG_RUNTIME_DIR")
    if not runtime:
        raise TypingBackendError("XDG_RUNTIME_DIR is not set: cannot find the Wayland compositor's socket")
    return os.path.join(runtime, display)


class WaylandClipboardOwner:
    """This process owns the Wayland clipboard and serves ``types`` (MIME type → bytes) from a thread until
    another client takes the clipboard (``lost``: the thread ends then) or :meth:`close` is called. ``served`` is
    set when a window asked for a type. Raises :class:`TypingBackendError` when the compositor or its
    data-control protocol is not there."""

    def __init__(self, env: Mapping[str, str], types: dict[str, bytes]) -> None:
        managers = dict(data_control_protocols())
        if not managers:
            raise TypingBackendError("no Wayland data-control protocol (pywayland missing): pip install pywayland")
        from pywayland.client import Display
        from pywayland.protocol.wayland import WlSeat

        self.socket = wayland_socket(env)
        self.env = dict(env)
        self.served = threading.Event()
        self.lost = threading.Event()
        self._commands: queue.SimpleQueue[tuple[dict[str, bytes], threading.Event]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._pipe_open = True
        self._stop = False
        self._source: Any = None
        self._seen: Any = None  # the clipboard's offer as the compositor last announced it to this client
        self._introduced: list[Any] = []
        self._seat: Any = None
        self._manager: Any = None
        self._device: Any = None
        self._types: dict[str, bytes] = {}
        self._display = Display(self.socket)
        try:
            self._display.connect()
        except ValueError:
            self._close_pipe()
            raise TypingBackendError(f"cannot connect to the Wayland compositor at {self.socket}") from None
        found: dict[str, tuple[int, int]] = {}
        self._registry = registry = self._display.get_registry()

        def on_global(_registry: Any, name: int, iface: str, version: int) -> None:
            found.setdefault(iface, (name, version))  # a handler returning a value upsets pywayland's callback

        registry.dispatcher["global"] = on_global
        self._display.roundtrip()
        offered = [g for g in managers if g in found]
        if not offered or "wl_seat" not in found:
            self._disconnect()
            self._close_pipe()
            raise TypingBackendError(
                "this compositor offers no data-control protocol (GNOME does not): the clipboard is restored as one "
                "type"
            )
        self.protocol = offered[0]
        name = found[self.protocol][0]
        manager_iface = managers[self.protocol]
        self._seat = seat = registry.bind(found["wl_seat"][0], WlSeat, 1)
        # version 1: the clipboard only (version 2 adds the primary selection, which is not ours to touch)
        self._manager = registry.bind(name, manager_iface, 1)
        self._device = self._manager.get_data_device(seat)
        self._device.dispatcher["finished"] = lambda _d: self.lost.set()
        self._device.dispatcher["data_offer"] = self._data_offer
        self._device.dispatcher["selection"] = self._selection
        self._offer(types)
        if self._display.roundtrip() < 0:  # the compositor refused (a protocol error) or went away
            self._disconnect()
            self._close_pipe()
            raise TypingBackendError(f"the Wayland compositor at {self.socket} refused the clipboard")
        self._thread = threading.Thread(target=self._serve, name="qasr-wl-clipboard", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self.lost.is_set()

    @property
    def types(self) -> dict[str, bytes]:
        """What is served now."""
        return dict(self._types)

    def set_types(self, types: dict[str, bytes], timeout: float = 2.0) -> None:
        """Serve ``types`` from now on, as a new selection (``served`` cleared); returns once the compositor has
        it. :class:`TypingBackendError` when the owner stopped meanwhile (make a new one)."""
        done = threading.Event()
        self.served.clear()
        self._commands.put((types, done))
        if self._pipe_open:
            os.write(self._wake_w, b"x")
        deadline = time.monotonic() + timeout
        while not done.wait(0.05):
            # the thread ends when another client took the clipboard: it will not pick this up
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise TypingBackendError("the Wayland clipboard owner stopped before serving the clipboard")

    def _offer(self, types: dict[str, bytes]) -> None:
        """A new source offering every type, made the selection (on the serving thread, or before it starts)."""
        old = self._source
        source = self._manager.create_data_source()
        for mime in types:
            source.offer(mime)
        source.dispatcher["send"] = self._send
        source.dispatcher["cancelled"] = self._cancelled
        self._types = dict(types)
        self._source = source
        self._device.set_selection(source)
        if old is not None:
            old.destroy()

    def _send(self, source: Any, mime: str, fd: int) -> None:
        data = self._types.get(mime, b"") if source is self._source else b""
        self.served.set()
        # the reader may be slow or gone: write from a thread of its own so the event loop never blocks
        threading.Thread(target=_write_all, args=(fd, data), name="qasr-wl-clipboard-send", daemon=True).start()

    def _data_offer(self, _device: Any, offer: Any) -> None:
        # each clipboard change introduces an offer to this client too; held until its selection event names it
        # (pywayland keeps no reference of its own: an unheld offer is collected before that event arrives)
        self._introduced.append(offer)

    def _selection(self, _device: Any, offer: Any) -> None:
        # the offer is never read: destroy it and the one it replaces
        for old in [self._seen, *self._introduced]:
            if old is not None and old is not offer:
                old.destroy()
        self._seen, self._introduced = offer, []

    def _cancelled(self, source: Any) -> None:
        if source is self._source:  # another client set the clipboard: it is theirs now
            self._source = None
            self.lost.set()
        source.destroy()

    def _serve(self) -> None:
        fd = self._display.get_fd()
        try:
            while not self._stop:
                while not self._commands.empty():
                    types, done = self._commands.get()
                    self.lost.clear()
                    self._offer(types)
                    self._display.roundtrip()  # the compositor has the selection before set_types() returns
                    done.set()
                self._display.dispatch(block=False)
                self._display.flush()
                if self.lost.is_set():
                    break  # another client's clipboard now: nothing left to serve
                ready, _, _ = select.select([fd, self._wake_r], [], [], 0.5)
                if self._wake_r in ready:
                    os.read(self._wake_r, 64)
                if fd in ready:
                    self._display.dispatch(block=True)
        except (RuntimeError, OSError):  # the compositor went away: the clipboard went with it
            log.debug("clipboard: the Wayland clipboard owner stopped", exc_info=True)
        self.lost.set()

    def close(self) -> None:
        """Stop serving (the clipboard empties, as when any application that owns it exits)."""
        self._stop = True
        if self._pipe_open:
            os.write(self._wake_w, b"x")
        if self._thread is not threading.current_thread():
            self._thread.join(2.0)
        if self._thread.is_alive():  # stuck in libwayland: freeing what it uses would crash the process
            log.warning("clipboard: the Wayland clipboard thread did not stop; its connection is left open")
            return
        self._disconnect()
        self._close_pipe()

    def _disconnect(self) -> None:
        """Destroy every object of this connection, then close it. pywayland frees a proxy it still holds when
        the garbage collector gets to it, by then after the connection was freed (a crash), and it finds the
        connection of an object the compositor creates (an offer) through any live ``wl_registry`` of the
        process: so nothing of this connection may outlive it, its registry least of all."""
        from pywayland.protocol.wayland import WlRegistry

        proxies = [*self._introduced, self._seen, self._source, self._device, self._manager, self._seat]
        self._introduced, self._seen, self._source = [], None, None
        for proxy in proxies:
            if proxy is not None and not proxy.destroyed:
                proxy.destroy()
        if self._registry._ptr is not None:
            WlRegistry.registry.pop(self._registry._ptr, None)
        self._registry.destroy()
        self._display.flush()
        self._display.disconnect()

    def _close_pipe(self) -> None:
        pipe, self._pipe_open = self._pipe_open, False
        if pipe:  # once only: a closed descriptor's number may belong to another file by now
            os.close(self._wake_r)
            os.close(self._wake_w)


def _write_all(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as e:  # the window closed its end (it stopped reading): nothing to deliver to
        log.debug("clipboard: a paste reader went away: %s", e)
    finally:
        os.close(fd)
