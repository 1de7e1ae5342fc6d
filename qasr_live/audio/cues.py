"""Audible feedback while dictating: opt-in start/stop sounds, and other applications turned down while recording.

* **Sounds** (``feedback.sounds``): a short rising tone when recording starts and a falling one when it stops,
  played through PortAudio (sounddevice, the audio stack the daemon already uses for the microphone) on the
  default output, without waiting for it to finish.
* **Ducking** (``feedback.duck_volume`` below 1): while recording, every other application's playback stream
  (PulseAudio sink inputs; PipeWire serves the same interface through pipewire-pulse) is set to that fraction of
  its volume with ``pactl``, and put back afterwards — unless the user changed that stream's volume meanwhile,
  which then stays as the user set it. Streams of this process (the cues) are left alone.

Neither ever stops dictation: a missing ``pactl``, no sound server or no output device is logged once and the
cue skipped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Mapping

import numpy as np

__all__ = ["Cues", "Ducker", "tone"]

log = logging.getLogger(__name__)


def tone(rising: bool, rate: int = 48000, seconds: float = 0.12, volume: float = 0.25) -> np.ndarray:
    """Two short notes (up for start, down for stop) with soft edges, float32 mono."""
    notes = (660.0, 990.0) if rising else (990.0, 660.0)
    n = int(rate * seconds / 2)
    t = np.arange(n) / rate
    fade = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.005 * rate))
    parts = [np.sin(2 * np.pi * f * t) * fade for f in notes]
    return (np.concatenate(parts) * volume).astype(np.float32)


class Ducker:
    """Turns other applications' playback down to ``level`` (0..1) and back, through ``pactl``."""

    def __init__(self, level: float, env: Mapping[str, str] | None = None) -> None:
        self.level = level
        self.env = dict(env) if env is not None else None
        self._saved: dict[int, tuple[list[int], list[int]]] = {}  # sink input → (original, what we set)
        self._warned = False

    def _pactl(self, *args: str) -> str:
        env = dict(os.environ) if self.env is None else self.env
        exe = shutil.which("pactl", path=env.get("PATH"))
        if exe is None:
            raise OSError("pactl is not installed (pulseaudio-utils)")
        done = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=5, check=False)
        if done.returncode != 0:
            raise OSError(f"pactl {args[0]} failed: {done.stderr.strip() or done.returncode}")
        return done.stdout

    def _streams(self) -> dict[int, list[int]]:
        """Other processes' sink inputs: index → raw volume per channel."""
        out: dict[int, list[int]] = {}
        for item in json.loads(self._pactl("-f", "json", "list", "sink-inputs") or "[]"):
            props = item.get("properties", {})
            if str(props.get("application.process.id", "")) == str(os.getpid()):
                continue
            volumes = [int(ch["value"]) for ch in item.get("volume", {}).values()]
            if volumes:
                out[int(item["index"])] = volumes
        return out

    def duck(self) -> int:
        """Turn the other streams down; how many were."""
        if self.level >= 1.0:
            return 0
        try:
            for index, volumes in self._streams().items():
                if index in self._saved:
                    continue
                lowered = [int(v * self.level) for v in volumes]
                self._pactl("set-sink-input-volume", str(index), *map(str, lowered))
                self._saved[index] = (volumes, lowered)
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            self._warn(e)
        return len(self._saved)

    def restore(self) -> int:
        """Put the volumes back (streams the user changed meanwhile, or that ended, are left); how many were."""
        saved, self._saved = self._saved, {}
        if not saved:
            return 0
        restored = 0
        try:
            now = self._streams()
            for index, (original, lowered) in saved.items():
                current = now.get(index)
                if current is None or any(abs(c - w) > 656 for c, w in zip(current, lowered, strict=False)):
                    continue  # gone, or the user set a volume meanwhile (656 = 1 %)
                self._pactl("set-sink-input-volume", str(index), *map(str, original))
                restored += 1
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            self._warn(e)
        return restored

    def _warn(self, e: Exception) -> None:
        if not self._warned:
            log.warning("feedback: cannot change other applications' volume (feedback.duck_volume): %s", e)
            self._warned = True


class Cues:
    """Start/stop sounds and ducking, driven by the dictation state; calls return at once (a worker thread)."""

    def __init__(self, sounds: bool, duck_volume: float, env: Mapping[str, str] | None = None) -> None:
        self.sounds = sounds
        self.ducker = Ducker(duck_volume, env)
        self._lock = threading.Lock()
        self._recording = False
        self._sound_failed = False

    @property
    def active(self) -> bool:
        return self.sounds or self.ducker.level < 1.0

    def recording(self, on: bool) -> threading.Thread | None:
        """Recording started (``on``) or stopped: play the cue and duck/restore, on a thread (returned)."""
        with self._lock:
            if on == self._recording or not self.active:
                return None
            self._recording = on
        worker = threading.Thread(target=self._run, args=(on,), name="qasr-cues", daemon=True)
        worker.start()
        return worker

    def _run(self, on: bool) -> None:
        with self._lock:  # one change at a time, in order
            if self.sounds:
                self._play(tone(rising=on))
            if on:
                self.ducker.duck()
            else:
                self.ducker.restore()

    def _play(self, samples: np.ndarray, rate: int = 48000) -> None:
        try:
            import sounddevice as sd

            sd.play(samples, rate, blocking=True)
        except Exception as e:  # PortAudio raises many types when there is no output device: skip the cue
            if not self._sound_failed:
                log.warning("feedback: cannot play the start/stop sound: %s", e)
                self._sound_failed = True

    def close(self) -> None:
        """Put every volume back (the daemon stops while recording)."""
        with self._lock:
            self._recording = False
            self.ducker.restore()
