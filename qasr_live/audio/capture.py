"""Microphone capture: a PortAudio input stream at the device's native rate → 16 kHz mono int16 blocks.

:class:`MicrophoneSource` is an :class:`~qasr_live.audio.source.AudioSource` (see there for ``start``/``stop``/
``read``/``clock``/``stats``). What it adds:

Device
    Chosen by name, resolved again at every (re)open (:mod:`qasr_live.audio.devices` has the rules); ``None``
    is the system's default input.

Format
    The stream runs at the device's native default sample rate (opening a 48 kHz-only USB microphone at 16 kHz
    fails with "Invalid sample rate"; common rates are tried next if even that fails), float32, mono when the
    device allows it, else its channels are averaged. A :class:`~qasr_live.audio.resample.StreamResampler`
    converts to 16 kHz block by block, exactly as if the whole recording were resampled at once.

Threads
    PortAudio calls the stream's callback on its own thread; the callback downmixes, resamples, converts to
    int16 and hands the block to the asyncio loop (``call_soon_threadsafe``) into a bounded queue
    (``max_queue_s``): if the consumer lags further behind, blocks are dropped, counted (``stats.overruns``)
    and logged. Input-overflow flags from PortAudio are counted (``stats.input_overflows``). All control calls
    (initialise, enumerate, open, close) run one at a time through
    :func:`~qasr_live.audio.devices.portaudio_call`, so the loop never waits on PortAudio.

Robustness (a supervisor task, running while the source is started)
    * The stream stops on its own (device unplugged, server gone, driver error: PortAudio's finished callback)
      or no block arrives for ``stall_timeout_s``: the stream is closed and reopened, re-enumerating devices
      first; failed attempts are retried with exponential backoff (``backoff_s``: first delay, maximum), each
      attempt logged, until it works or ``stop()`` is called.
    * ``reopen_after_silence_s`` (> 0) of pure digital silence (every sample exactly 0: what a stale or
      disconnected device delivers, never a real room): the stream is reopened the same way. If the new stream
      is silent as well (a muted microphone), the next silence reopen waits twice as long, up to
      ``max(reopen_after_silence_s, 300 s)``; real audio resets it.
    * Reopens never reset the clock: it counts delivered samples, so it stays monotonic; the gap is counted in
      ``stats`` (``reopens``, ``silence_reopens``, ``errors``, ``last_error``).

Opening and closing
    ``start()`` opens the stream and returns as soon as it runs (``stats.device`` says which device at which
    rate); :attr:`MicrophoneSource.open_latency_s` is measured from the call to the first block. ``stop()``
    closes it; when it returns, everything captured up to then (the resampler's tail included) is queued, and
    ``drain()`` hands it over without waiting. The stream itself goes on: ``read()`` simply waits while the
    device is closed and the clock continues at the next ``start()``; only ``close()`` ends it (``None``). In
    push-to-talk and toggle modes the daemon opens the microphone only while recording, so the device is free
    (no microphone indicator) and costs no CPU while idle. ``start(retry=True)`` does not fail when the device
    is missing or busy (a daemon started at login before the sound server): it keeps trying in the background
    as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import numpy as np

from qasr_live.audio.devices import (
    InputDevice,
    default_hostapi_name,
    find_input_device,
    portaudio,
    portaudio_call,
    query_input_devices,
    reinitialize,
)
from qasr_live.audio.pcm import SAMPLE_RATE, block_samples, float_to_int16
from qasr_live.audio.resample import StreamResampler
from qasr_live.audio.source import BlockSource
from qasr_live.errors import AudioDeviceError, AudioError

__all__ = ["MicrophoneSource"]

_LOGGER = logging.getLogger(__name__)

_FALLBACK_RATES = (48000, 44100, 32000, 16000)
# PortAudio errors that mean "not this format" (rather than "not this device"): paInvalidSampleRate,
# paInvalidChannelCount, paSampleFormatNotSupported
_FORMAT_ERRORS = {-9997, -9998, -9994}


# --- the stream ---------------------------------------------------------------------------------------


class _Capture:
    """One open PortAudio input stream and its resampler; the callback runs on PortAudio's thread."""

    def __init__(self, owner: MicrophoneSource, device: InputDevice, rate: int, channels: int, opened_at: float):
        assert owner._loop is not None, "a stream is opened only after start() took the running loop"
        self.owner = owner
        self.loop: asyncio.AbstractEventLoop = owner._loop
        self.device = device
        self.rate = rate
        self.channels = channels
        self.opened_at = opened_at
        self.first_block_at: float | None = None
        self.resampler = StreamResampler(rate)
        self.stream: Any = None
        self.closing = False  # set before we stop/abort it ourselves: the finished callback is then expected
        self.dead = False

    def describe(self) -> str:
        mono = "mono" if self.channels == 1 else f"{self.channels} ch → mono"
        return f"{self.device.name!r} ({self.device.hostapi}) at {self.rate} Hz {mono}"

    def callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        overflow = bool(status.input_overflow)
        silent = not indata.any()
        x = indata[:, 0] if indata.shape[1] == 1 else indata.mean(axis=1, dtype=np.float64)
        block = float_to_int16(self.resampler.process(x))
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is listening any more
            self.loop.call_soon_threadsafe(self.owner._deliver, self, block, overflow, silent)

    def finished(self) -> None:
        if not self.closing:
            self.dead = True
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(
                    self.owner._trouble_from, self, "the input stream stopped (device removed or driver error)"
                )


class MicrophoneSource(BlockSource):
    """An input device as a source of 16 kHz mono int16 blocks (see the module docstring).

    ``start()`` opens the device, ``stop()`` closes it (the stream goes on: ``read()`` waits while it is
    closed), ``close()`` also ends the stream (``read()`` returns ``None``).

    ``device``: (part of) the device's name, ``None`` = the system default; ``block_ms``: the callback's block
    length at the native rate (blocks after resampling hold ``block_ms`` of audio, ±1 sample);
    ``reopen_after_silence_s``: 0 disables the silence reopen; ``max_queue_s``: how far the consumer may lag
    before blocks are dropped; ``stall_timeout_s``: no block for this long means the stream is dead;
    ``backoff_s``: (first, maximum) delay between reopen attempts; ``latency``: PortAudio's suggested latency.
    """

    is_microphone = True

    def __init__(
        self,
        device: str | None = None,
        *,
        block_ms: int = 30,
        reopen_after_silence_s: float = 10.0,
        max_queue_s: float = 10.0,
        stall_timeout_s: float = 4.0,
        backoff_s: tuple[float, float] = (0.2, 5.0),
        latency: str | float = "high",
    ):
        super().__init__(f"microphone {device or '(default)'}", block_ms, max_queue_s)
        self.device = device
        self.reopen_after_silence_s = float(reopen_after_silence_s)
        self.stall_timeout_s = float(stall_timeout_s)
        self.backoff_s = backoff_s
        self.latency = latency
        self.open_latency_s: float | None = None  # last open: start()/reopen → first block, seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._capture: _Capture | None = None
        self._session = 0
        self._supervisor: asyncio.Task[None] | None = None
        self._trouble: asyncio.Event | None = None  # made on the loop in start()
        self._trouble_reason: tuple[str, bool] | None = None  # (what happened, whether it is an error)
        self._lifecycle = asyncio.Lock()  # start() and stop() never interleave (fast push-to-talk presses)
        self._last_block_at = 0.0
        self._silent_run = 0
        self._silence_limit_s = self.reopen_after_silence_s

    # --- public -----------------------------------------------------------------------------------------

    @property
    def native_rate(self) -> int | None:
        """Sample rate of the open stream (None when closed)."""
        return self._capture.rate if self._capture is not None else None

    @property
    def device_info(self) -> InputDevice | None:
        """The device of the open stream (None when closed)."""
        return self._capture.device if self._capture is not None else None

    async def start(self, *, retry: bool = False) -> None:
        """Open the device and start capturing; no-op when already started.

        Raises :class:`AudioDeviceError` when the device is missing, ambiguous or cannot be opened, unless
        ``retry``: then the error is logged and reopening goes on in the background (see the module doc).
        """
        async with self._lifecycle:
            if self._running:
                return
            self._loop = asyncio.get_running_loop()
            self._ended = False
            self._trouble = asyncio.Event()
            self._trouble_reason = None
            self._session += 1
            self._running = True
            try:
                await self._open(refresh=False)
            except AudioError as exc:
                if not retry:
                    self._running = False
                    raise
                self._signal(str(exc), error=True)  # the supervisor logs it and retries with backoff
            self._supervisor = asyncio.create_task(self._supervise(), name="qasr-mic-supervisor")

    async def check(self) -> None:
        """Raise the :class:`AudioDeviceError` that ``start()`` would, without opening anything: the daemon calls
        it before loading the model, so a device that is not there is refused at start-up in every trigger mode,
        not at the first key press."""

        def find() -> InputDevice:
            sd = portaudio()
            try:
                return find_input_device(self.device, query_input_devices(sd), default_hostapi_name(sd))
            except AudioDeviceError:
                reinitialize(sd)  # as _open_blocking: a device plugged in since PortAudio enumerated
                return find_input_device(self.device, query_input_devices(sd), default_hostapi_name(sd))

        await portaudio_call(find)

    async def stop(self) -> None:
        """Close the device. When it returns, everything captured (the resampler's tail included) is queued:
        ``drain()`` takes it at once; ``read()`` returns it, then waits for the next ``start()``."""
        async with self._lifecycle:
            if not self._running:
                return
            self._running = False
            task, self._supervisor = self._supervisor, None
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    if (current := asyncio.current_task()) is not None and current.cancelling():
                        raise
            await self._close(drain=True)

    async def close(self) -> None:
        """``stop()``, and end the stream: ``read()`` returns ``None`` after the queued blocks (shutdown)."""
        await self.stop()
        self._end()

    # --- opening and closing ------------------------------------------------------------------------------

    async def _open(self, *, refresh: bool) -> None:
        t0 = time.monotonic()
        capture = await portaudio_call(self._open_blocking, self._session, refresh, t0)
        if capture is None:  # stopped meanwhile
            return
        self.stats.opens += 1
        self.stats.device = capture.describe()
        self._last_block_at = time.monotonic()
        _LOGGER.info("audio: capturing from %s (open took %.0f ms)", capture.describe(), 1e3 * (time.monotonic() - t0))

    def _open_blocking(self, session: int, refresh: bool, t0: float) -> _Capture | None:
        """On a PortAudio thread, holding the lock: resolve the device, open and start the stream."""
        if session != self._session or not self._running:
            return None
        if self._capture is not None:  # never two streams: close a leftover one first
            self._close_blocking(drain=False)
        sd = portaudio()
        if refresh:
            reinitialize(sd)
        try:
            device = find_input_device(self.device, query_input_devices(sd), default_hostapi_name(sd))
        except AudioDeviceError:
            if refresh:
                raise
            reinitialize(sd)  # maybe plugged in (or a sound server started) since PortAudio enumerated
            device = find_input_device(self.device, query_input_devices(sd), default_hostapi_name(sd))
        native = round(device.default_samplerate)
        rates = [native] + [r for r in _FALLBACK_RATES if r != native] if native > 0 else list(_FALLBACK_RATES)
        channel_options = sorted({1, min(2, device.channels), device.channels})
        refused = []  # format errors: try the next rate / channel count
        for rate in rates:
            for channels in channel_options:
                capture = _Capture(self, device, rate, channels, t0)
                try:
                    capture.stream = sd.InputStream(
                        device=device.index,
                        samplerate=rate,
                        channels=channels,
                        dtype="float32",
                        blocksize=block_samples(self.block_ms, rate),
                        latency=self.latency,
                        callback=capture.callback,
                        finished_callback=capture.finished,
                    )
                    self._capture = capture  # before start(): its first callbacks must find it current
                    capture.stream.start()
                except sd.PortAudioError as exc:
                    self._capture = None
                    if capture.stream is not None:
                        capture.closing = True
                        capture.stream.close(ignore_errors=True)
                    code = exc.args[1] if len(exc.args) > 1 else None
                    if code not in _FORMAT_ERRORS:
                        raise AudioDeviceError(
                            f"cannot open input device {device.describe()}: {exc}; check that it is still "
                            "connected and that no other program holds it exclusively "
                            "(audio.device in config.yaml selects it)"
                        ) from exc
                    refused.append(f"{rate} Hz × {channels} ch ({exc})")
                    continue
                if rate != native:
                    _LOGGER.warning("audio: %s refused its native rate %s Hz; using %d Hz", device.name, native, rate)
                return capture
        raise AudioDeviceError(
            f"input device {device.describe()} accepts none of the formats tried: {'; '.join(refused)}; "
            "choose another device with audio.device in config.yaml"
        )

    async def _close(self, *, drain: bool) -> None:
        closed = await portaudio_call(self._close_blocking, drain)
        if closed is not None:
            capture, tail = closed
            if len(tail):
                self._deliver(capture, tail, False, not tail.any())

    def _close_blocking(self, drain: bool) -> tuple[_Capture, np.ndarray] | None:
        """On a PortAudio thread, holding the lock (so after any open in flight): close the current stream."""
        capture, self._capture = self._capture, None
        if capture is None:
            return None
        capture.closing = True
        stream = capture.stream
        try:
            if drain and not capture.dead:
                stream.stop()  # waits for the callback to finish the buffers in flight
            else:
                stream.abort()
        except Exception as exc:
            _LOGGER.debug("audio: stopping the stream failed (%s)", exc, exc_info=True)
        try:
            stream.close(ignore_errors=True)
        except Exception as exc:
            _LOGGER.debug("audio: closing the stream failed (%s)", exc, exc_info=True)
        # the callback thread has finished: the resampler is ours now
        return capture, float_to_int16(capture.resampler.flush())

    # --- from the callback (on the loop) ------------------------------------------------------------------

    def _deliver(self, capture: _Capture, block: np.ndarray, overflow: bool, silent: bool) -> None:
        now = time.monotonic()
        self._last_block_at = now
        if capture.first_block_at is None:
            capture.first_block_at = now
            self.open_latency_s = now - capture.opened_at
            _LOGGER.debug("audio: first block %.0f ms after opening", 1e3 * self.open_latency_s)
        if overflow:
            self.stats.input_overflows += 1
            _LOGGER.warning("audio: input overflow (%d so far): the system lost audio", self.stats.input_overflows)
        if len(block):
            self._queue.put_nowait(block)
        if self.reopen_after_silence_s <= 0 or capture is not self._capture:
            return
        if not silent:
            self._silent_run = 0
            self._silence_limit_s = self.reopen_after_silence_s
            return
        self._silent_run += len(block)
        if self._silent_run >= self._silence_limit_s * SAMPLE_RATE:
            self._silent_run = 0
            self.stats.silence_reopens += 1
            limit = self._silence_limit_s
            self._silence_limit_s = min(2 * limit, max(self.reopen_after_silence_s, 300.0))
            self._signal(f"{limit:g} s of digital silence (all samples zero)", error=False)

    def _trouble_from(self, capture: _Capture, reason: str) -> None:
        if capture is self._capture:
            self._signal(reason, error=True)

    def _signal(self, reason: str, *, error: bool) -> None:
        if self._trouble is not None and self._trouble_reason is None:
            self._trouble_reason = (reason, error)
            self._trouble.set()

    def _note_error(self, exc: BaseException | str) -> None:
        self.stats.errors += 1
        self.stats.last_error = str(exc)

    # --- supervision --------------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        assert self._trouble is not None
        while self._running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._trouble.wait(), timeout=self.stall_timeout_s / 2)
            trouble = self._trouble_reason
            if trouble is None:
                idle = time.monotonic() - self._last_block_at
                if self._capture is None or idle < self.stall_timeout_s:
                    continue
                trouble = (f"no audio for {idle:.1f} s (stream stalled)", True)
            await self._reopen(*trouble)

    async def _reopen(self, reason: str, error: bool) -> None:
        self.stats.reopens += 1
        if error:
            self._note_error(reason)
        _LOGGER.warning("audio: %s; reopening the input device", reason)
        await self._close(drain=False)
        assert self._trouble is not None
        self._trouble_reason = None  # from here on, trouble of the new stream counts
        self._trouble.clear()
        delay, max_delay = self.backoff_s
        attempt = 0
        while self._running:
            attempt += 1
            try:
                await self._open(refresh=True)
            except AudioError as exc:
                self._note_error(exc)
                _LOGGER.warning("audio: reopen attempt %d failed: %s; next attempt in %.1f s", attempt, exc, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, max_delay)
                continue
            _LOGGER.info("audio: reopened after %d attempt(s)", attempt)
            break
        self._silent_run = 0
