"""Where audio comes from: PortAudio, the input devices, and whether ``audio.device`` names one."""

from __future__ import annotations

import sys
from pathlib import Path

from qasr_live.doctor.context import Context
from qasr_live.doctor.report import Check, Lines, first_line

__all__ = ["check_audio"]

_SHOWN = 4  # device names on the screen; --json has them all


def check_audio(ctx: Context) -> list[Check]:
    from qasr_live.audio.devices import default_hostapi_name, find_input_device, list_input_devices, portaudio
    from qasr_live.errors import AudioDeviceError

    out = Lines("Audio")
    source = ctx.cfg.audio.source
    if source is not None:
        if source != "-" and not Path(source).is_file():
            out.fail("source", f"audio.source {source!r} does not exist", "set audio.source to a WAV file, '-' or null")
        else:
            out.ok("source", f"audio.source {source!r}: the microphone is not used", source=source)
        return out
    try:
        sd = portaudio()
    except ImportError as e:
        out.fail("portaudio", f"sounddevice is not installed ({e})", f"`{sys.executable} -m pip install sounddevice`")
        return out
    except AudioDeviceError as e:  # the PortAudio library is missing: its message names it
        out.fail("portaudio", first_line(e).partition("; ")[0], "`sudo apt install libportaudio2`")
        return out
    out.ok("portaudio", f"sounddevice {sd.__version__}, {sd.get_portaudio_version()[1].split(',')[0]}")
    try:
        devices = list_input_devices()
        hostapi = default_hostapi_name(sd)
    except sd.PortAudioError as e:
        out.fail("devices", f"PortAudio cannot list devices: {e}", "check that PipeWire or PulseAudio runs")
        return out
    listing = [d.describe() for d in devices]
    if not devices:
        fix = "connect a microphone; check that PipeWire or PulseAudio runs (`pactl info`) and ALSA reaches it"
        out.fail("devices", "PortAudio lists no input device", fix, devices=listing)
        return out
    names = ", ".join(repr(d.name) for d in devices[:_SHOWN])
    if len(devices) > _SHOWN:
        names += f" and {len(devices) - _SHOWN} more"
    out.ok("devices", f"{len(devices)} input(s): {names} (`qasr-live devices` lists them)", devices=listing)
    wanted = ctx.cfg.audio.device
    try:
        chosen = find_input_device(wanted, devices, hostapi)
    except AudioDeviceError as e:  # its first line says what is wrong; the listing is the devices line's
        fix = "set audio.device in config.yaml (or --device) to (part of) a name `qasr-live devices` lists, or null"
        out.fail("audio.device", first_line(e).partition("; ")[0].rstrip(":"), fix, wanted=wanted)
        return out
    what = "null (the system default)" if wanted is None else repr(wanted)
    out.ok("audio.device", f"{what} -> {chosen.describe()}", wanted=wanted, device=chosen.name)
    return out
