"""PortAudio (sounddevice) access: the input devices, choosing one by name, and running PortAudio calls safely.

Choosing a device
    ``audio.device`` is matched case-insensitively against the names of the *input* devices PortAudio lists
    (:func:`list_input_devices`, what ``qasr-live devices`` prints); a whole-name match wins over partial ones,
    several partial matches are narrowed to the default host API (Windows lists each device once per API), and
    a name that still matches several devices or none is an :class:`~qasr_live.errors.AudioDeviceError` listing
    the devices and naming ``audio.device`` in config.yaml. ``None`` is the system's default input. Indexes are
    never stored: the name is resolved again at every (re)open, after re-enumerating when needed (PortAudio
    enumerates devices once, at initialisation, so a hot-plugged device is invisible until it is
    re-initialised: :func:`refresh_devices`).

One call at a time
    Every PortAudio control call (initialise, terminate, enumerate, open, close) holds one process-wide lock.
    :func:`portaudio_call` runs such a call on a short-lived daemon thread, so the asyncio loop never waits on
    PortAudio, even when a driver hangs. ``refresh_devices()``/``list_input_devices(refresh=True)`` terminate
    and re-initialise PortAudio: no other stream of this process may be open at that moment (the daemon has
    only its microphone, closed while reopening).

sounddevice is imported on first use (:func:`portaudio`): importing it initialises PortAudio, and a missing
PortAudio library is then an ``AudioDeviceError`` with the fix, not an import failure of the whole program.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from qasr_live.errors import AudioDeviceError

__all__ = [
    "InputDevice",
    "default_hostapi_name",
    "find_input_device",
    "list_input_devices",
    "portaudio",
    "portaudio_call",
    "query_input_devices",
    "refresh_devices",
    "reinitialize",
]

_LOGGER = logging.getLogger(__name__)

_T = TypeVar("_T")
_CONFIG_HINT = (
    "set audio.device in config.yaml to (part of) one of these names, or to null for the system default "
    "(`qasr-live devices` lists them)"
)
_PA_LOCK = threading.Lock()  # one PortAudio control call at a time (init/terminate/enumerate/open/close)


def portaudio() -> Any:
    """The sounddevice module, imported on first use (it initialises PortAudio at import).

    A missing PortAudio library is an :class:`~qasr_live.errors.AudioDeviceError` naming the package to install.
    """
    try:
        import sounddevice
    except OSError as exc:  # PortAudio library not found
        raise AudioDeviceError(
            f"the PortAudio library could not be loaded ({exc}); install it "
            "(`sudo apt install libportaudio2`, `brew install portaudio`)"
        ) from exc
    return sounddevice


@dataclass(frozen=True, slots=True)
class InputDevice:
    """An input device as PortAudio lists it (``index`` is only valid until devices are re-enumerated)."""

    index: int
    name: str
    hostapi: str
    channels: int  # maximum input channels
    default_samplerate: float
    is_default: bool

    def describe(self) -> str:
        default = ", system default" if self.is_default else ""
        return f"{self.name!r} ({self.hostapi}, {self.channels} ch, {self.default_samplerate:g} Hz{default})"


def refresh_devices() -> None:
    """Re-initialise PortAudio so that it enumerates the devices again (hot-plugged or removed ones)."""
    with _PA_LOCK:
        reinitialize(portaudio())


def reinitialize(sd: Any) -> None:
    """Terminate and re-initialise PortAudio (``sd``: :func:`portaudio`); only with the lock held, i.e. inside
    a :func:`portaudio_call`, and with no stream of this process open."""
    try:
        sd._terminate()
    except Exception as exc:  # not initialised, or a driver that fails to shut down: initialise anyway
        _LOGGER.debug("PortAudio terminate failed (%s)", exc, exc_info=True)
    sd._initialize()


def query_input_devices(sd: Any) -> list[InputDevice]:
    """The input devices ``sd`` (:func:`portaudio`) lists now, without re-enumerating; only with the lock held
    (inside a :func:`portaudio_call`). :func:`list_input_devices` is the same for callers without the lock."""
    try:
        default_in = sd.default.device[0]
        if default_in is None or (isinstance(default_in, int) and default_in < 0):
            default_in = sd.query_devices(kind="input")["index"]
    except Exception:  # no default input (PortAudioError) or an odd host API: then no device is the default
        _LOGGER.debug("PortAudio reports no default input device", exc_info=True)
        default_in = -1
    apis = sd.query_hostapis()
    out = []
    for d in sd.query_devices():
        if d["max_input_channels"] > 0:
            out.append(
                InputDevice(
                    index=int(d["index"]),
                    name=str(d["name"]),
                    hostapi=str(apis[d["hostapi"]]["name"]),
                    channels=int(d["max_input_channels"]),
                    default_samplerate=float(d["default_samplerate"]),
                    is_default=int(d["index"]) == default_in,
                )
            )
    return out


def list_input_devices(refresh: bool = False) -> list[InputDevice]:
    """The input devices PortAudio knows, in its order; ``refresh`` re-enumerates first (see module doc)."""
    with _PA_LOCK:
        sd = portaudio()
        if refresh:
            reinitialize(sd)
        return query_input_devices(sd)


def default_hostapi_name(sd: Any) -> str | None:
    """The name of PortAudio's default host API (ALSA, WASAPI, Core Audio ...), None when it has none."""
    try:
        return str(sd.query_hostapis(sd.default.hostapi)["name"])
    except Exception:  # no host API at all (PortAudioError): matching then simply prefers none
        _LOGGER.debug("PortAudio reports no default host API", exc_info=True)
        return None


def find_input_device(
    name: str | None, devices: Sequence[InputDevice], default_hostapi: str | None = None
) -> InputDevice:
    """The device ``name`` designates among ``devices`` (see the module docstring for the rules); ``default_hostapi``
    (:func:`default_hostapi_name`) narrows several partial matches."""
    listing = "\n".join(f"  - {d.describe()}" for d in devices) or "  (none: no input device is available)"
    if name is None:
        for d in devices:
            if d.is_default:
                return d
        raise AudioDeviceError(
            f"there is no default input device (audio.device in config.yaml is null); "
            f"available input devices:\n{listing}\n{_CONFIG_HINT}"
        )
    wanted = name.strip().casefold()
    exact = [d for d in devices if d.name.strip().casefold() == wanted]
    matches = exact or [d for d in devices if wanted in d.name.casefold()]
    if len(matches) > 1 and default_hostapi is not None:
        preferred = [d for d in matches if d.hostapi == default_hostapi]
        if preferred:
            matches = preferred
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise AudioDeviceError(
            f"audio.device {name!r} in config.yaml matches no input device; available input devices:\n"
            f"{listing}\n{_CONFIG_HINT}"
        )
    found = "\n".join(f"  - {d.describe()}" for d in matches)
    raise AudioDeviceError(
        f"audio.device {name!r} in config.yaml matches {len(matches)} input devices:\n{found}\n"
        f"use more of the name so that it matches only one; all input devices:\n{listing}"
    )


async def portaudio_call(fn: Callable[..., _T], *args: Any) -> _T:
    """Run ``fn(*args)`` on a fresh daemon thread holding the PortAudio lock; await its result.

    Not the loop's default executor: a hung driver call must neither block the loop nor keep the process
    from exiting. If the awaiting task is cancelled, the call still completes on its thread.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def run() -> None:
        try:
            with _PA_LOCK:
                result = fn(*args)
        except BaseException as exc:
            outcome: tuple[bool, Any] = (False, exc)
        else:
            outcome = (True, result)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name="qasr-portaudio", daemon=True).start()
    return await future
