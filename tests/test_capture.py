"""Audio capture and sources: the streaming resampler, device selection, file/stdin sources, and a real
microphone — a private PulseAudio null sink (devkit/pulse.py) recorded through PortAudio, with real signals
played into it, the sink removed and restored, and open/close cycles timed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from devkit.pulse import PulseAudio
from qasr_live.audio.capture import MicrophoneSource
from qasr_live.audio.devices import InputDevice, find_input_device, list_input_devices
from qasr_live.audio.files import load_audio
from qasr_live.audio.resample import StreamResampler
from qasr_live.audio.sources import FileSource, StdinSource, open_source
from qasr_live.config import AudioConfig
from qasr_live.errors import AudioDeviceError

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000


def chirp(rate: int, seconds: float, f0: float = 50.0, f1: float = 7000.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return 0.6 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * seconds)))


def sine(freq: float, seconds: float, amp: float = 0.3, rate: int = RATE) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(round(rate * seconds)) / rate)


def write_wav16(path: Path, samples: np.ndarray, rate: int = RATE) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())


# --- resampler --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [44100, 48000, 22050, 32000, 8000, 16000])
def test_resampler_block_by_block_equals_whole(rate):
    """Random block sizes (1 to 3000 samples): the streamed output is resample_poly of the whole chirp (no
    click, gap or repeat at any boundary), and after every block exactly available(n) samples are out."""
    x = chirp(rate, 1.5)
    rng = np.random.default_rng(rate)
    r = StreamResampler(rate)
    outs, pos = [], 0
    while pos < len(x):
        step = int(rng.integers(1, 3000))
        outs.append(r.process(x[pos : pos + step]))
        pos = min(pos + step, len(x))
        assert r.n_out == sum(len(o) for o in outs) == r.available(pos)
    outs.append(r.flush())
    got = np.concatenate(outs)
    g = np.gcd(rate, RATE)
    want = resample_poly(x, RATE // g, rate // g)
    assert len(got) == len(want) == r.total(len(x))
    assert np.max(np.abs(got - want)) < 1e-12
    assert r.delay * 1000 / rate <= 1.3  # lookahead in ms (0.6 ms from 44.1/48 kHz, 1.25 ms from 8 kHz)


def test_resampler_sample_counts_add_up_over_time():
    """Ten minutes of 30 ms blocks at 44.1 kHz: the output count never drifts from n_in × 16000 / 44100 by
    more than the filter's lookahead, and after flush it is exactly ceil(n_in × 16000 / 44100)."""
    r = StreamResampler(44100)
    block = np.zeros(1323)
    n_in = 0
    lookahead = r.delay * RATE / 44100 + 1
    for _ in range(20000):  # 600 s
        r.process(block)
        n_in += len(block)
        assert abs(r.n_out - n_in * RATE / 44100) <= lookahead
    assert r.n_out == 20000 * 480 - 10  # 10 outputs (0.6 ms) wait for the next input
    r.flush()
    assert r.n_out == -(-n_in * RATE // 44100) == 20000 * 480


# --- device selection -------------------------------------------------------------------------------------

DEVICES = [
    InputDevice(0, "HDA Intel PCH: ALC892 Analog (hw:0,0)", "ALSA", 2, 44100.0, False),
    InputDevice(1, "USB Audio Device: - (hw:1,0)", "ALSA", 1, 48000.0, False),
    InputDevice(2, "pulse", "ALSA", 32, 44100.0, False),
    InputDevice(3, "pulse monitor", "ALSA", 2, 44100.0, False),
    InputDevice(4, "default", "ALSA", 32, 44100.0, True),
    InputDevice(5, "Microphone (USB Audio Device)", "MME", 1, 44100.0, False),
]


def test_find_input_device_rules():
    assert find_input_device("usb audio device: -", DEVICES).index == 1  # case-insensitive substring
    assert find_input_device("PULSE", DEVICES).index == 2  # a whole-name match beats "pulse monitor"
    assert find_input_device(None, DEVICES).index == 4  # the system default
    # one device listed by two host APIs (Windows): the default API's entry, else ambiguous
    assert find_input_device("usb audio", DEVICES, default_hostapi="MME").index == 5
    assert find_input_device("usb audio", DEVICES, default_hostapi="ALSA").index == 1
    with pytest.raises(AudioDeviceError, match="matches 2 input devices"):
        find_input_device("usb audio", DEVICES)


def test_find_input_device_errors_name_the_key_and_list_devices():
    with pytest.raises(AudioDeviceError) as err:
        find_input_device("Blue Yeti", DEVICES)
    text = str(err.value)
    assert "audio.device 'Blue Yeti' in config.yaml matches no input device" in text
    for d in DEVICES:
        assert repr(d.name) in text
    assert "qasr-live devices" in text and "null for the system default" in text

    with pytest.raises(AudioDeviceError) as err:
        find_input_device("hw:", DEVICES)
    text = str(err.value)
    assert "matches 2 input devices" in text and "ALC892" in text and "USB Audio Device: -" in text

    with pytest.raises(AudioDeviceError, match="there is no default input device"):
        find_input_device(None, [d for d in DEVICES if not d.is_default])


# --- file and stdin sources -------------------------------------------------------------------------------


async def drain(source, *, limit_s: float = 30.0) -> list[np.ndarray]:
    blocks = []

    async def run():
        async for block in source:
            blocks.append(block)

    await asyncio.wait_for(run(), limit_s)
    return blocks


def test_file_source_delivers_exactly_the_file(tmp_path):
    pcm = np.random.default_rng(1).integers(-32768, 32768, 16000 + 123, dtype=np.int64).astype(np.int16)
    pcm[:2] = (-32768, 32767)
    path = tmp_path / "noise.wav"
    write_wav16(path, pcm)

    async def main():
        src = FileSource(path, block_ms=30, realtime=False)
        await src.start()
        blocks = await drain(src)
        assert await src.read() is None
        return src, blocks

    src, blocks = asyncio.run(main())
    assert [len(b) for b in blocks[:-1]] == [480] * (len(blocks) - 1) and len(blocks[-1]) == (16123 % 480 or 480)
    got = np.concatenate(blocks)
    assert got.dtype == np.int16 and np.array_equal(got, pcm)
    assert src.clock == len(pcm) == src.stats.samples and src.stats.blocks == len(blocks)


def test_file_source_realtime_pacing_and_stop(tmp_path):
    path = tmp_path / "tone.wav"
    write_wav16(path, (sine(440, 0.6) * 32767).astype(np.int16))

    async def main():
        src = FileSource(path, block_ms=20, realtime=True)
        await src.start()
        t0 = time.monotonic()
        first = await src.read()
        t_first = time.monotonic() - t0
        blocks = [first, *await drain(src)]
        elapsed = time.monotonic() - t0
        await src.start()  # again from the beginning; stop() in the middle ends the session
        await src.read()
        await src.stop()
        assert await src.read() is None
        return t_first, elapsed, blocks

    t_first, elapsed, blocks = asyncio.run(main())
    assert sum(len(b) for b in blocks) == 9600
    assert 0.015 <= t_first < 0.2  # the first 20 ms block is due after 20 ms
    assert 0.58 <= elapsed < 1.5, elapsed


def test_file_source_bad_file_fails_at_start(tmp_path):
    from qasr_live.errors import AudioError

    with pytest.raises(AudioError, match="no such file"):
        asyncio.run(FileSource(tmp_path / "missing.wav").start())


_STDIN_CHILD = textwrap.dedent(
    """
    import asyncio, hashlib, json, sys
    from qasr_live.audio.sources import StdinSource

    async def main():
        src = StdinSource(block_ms=30)
        await src.start()
        sizes, digest = [], hashlib.sha256()
        async for block in src:
            sizes.append(len(block))
            digest.update(block.astype("<i2").tobytes())
        print(json.dumps({"sizes": sizes, "sha256": digest.hexdigest(), "clock": src.clock,
                          "overruns": src.stats.overruns}))

    asyncio.run(main())
    """
)


def test_stdin_source_through_a_real_pipe():
    """A child process reads its stdin with StdinSource while we write in odd-sized chunks (splitting
    samples across writes) with pauses: it gets exactly our samples in 480-sample blocks, then EOF, and
    a trailing half sample is dropped."""
    pcm = np.random.default_rng(2).integers(-32768, 32768, 5000, dtype=np.int64).astype("<i2")
    data = pcm.tobytes() + b"\x7f"  # plus half a sample
    proc = subprocess.Popen(
        [sys.executable, "-c", _STDIN_CHILD],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None
        pos = 0
        for i, size in enumerate([1, 999, 1, 3333, 7, 2048, 1111]):
            proc.stdin.write(data[pos : pos + size])
            proc.stdin.flush()
            pos += size
            if i % 2:
                time.sleep(0.02)
        proc.stdin.write(data[pos:])
        out, err = proc.communicate(timeout=30)  # closes stdin: EOF
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["sizes"] == [480] * 10 + [200]
    assert result["sha256"] == hashlib.sha256(pcm.tobytes()).hexdigest()
    assert result["clock"] == 5000 and result["overruns"] == 0
    assert b"half a sample" in err


def test_stdin_source_backpressure_loses_nothing():
    """A slow consumer behind a small queue: the reader thread waits (the pipe throttles the writer)
    instead of dropping blocks."""
    pcm = np.arange(48000, dtype=np.int64).astype(np.int16)  # 3 s of a ramp
    read_fd, write_fd = os.pipe()

    def writer():
        with os.fdopen(write_fd, "wb") as f:
            f.write(pcm.tobytes())

    async def main():
        src = StdinSource(read_fd, block_ms=10, max_queue_s=0.05)
        await src.start()
        blocks = []
        while (block := await src.read()) is not None:
            blocks.append(block)
            if len(blocks) % 50 == 0:
                await asyncio.sleep(0.05)  # the consumer lags now and then
        return src, blocks

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        src, blocks = asyncio.run(main())
    finally:
        thread.join(10)
        os.close(read_fd)
    assert np.array_equal(np.concatenate(blocks), pcm)
    assert src.stats.overruns == 0 and src.clock == len(pcm)


def test_open_source_chooses_from_config(tmp_path):
    assert isinstance(open_source(AudioConfig(device="usb", block_ms=20)), MicrophoneSource)
    mic = open_source(AudioConfig(device="usb", block_ms=20, reopen_after_silence_s=3.0))
    assert (mic.device, mic.block_ms, mic.reopen_after_silence_s) == ("usb", 20, 3.0)
    assert isinstance(open_source(AudioConfig(source="-")), StdinSource)
    file_source = open_source(AudioConfig(source=str(tmp_path / "a.wav")))
    assert isinstance(file_source, FileSource) and file_source.realtime


# --- a real microphone: PulseAudio null sink ------------------------------------------------------------


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    with PulseAudio(tmp_path_factory.mktemp("pulse")) as server, server.client_env():
        yield server


async def record(source: MicrophoneSource, during, *, tail_s: float = 0.3) -> np.ndarray:
    """Run ``during()`` (a coroutine function) while reading the started source; stop it; return all audio
    (what the reader got, then what ``drain()`` hands over after ``stop()``)."""
    blocks: list[np.ndarray] = []
    flowing = asyncio.Event()

    async def reader():
        while True:
            blocks.append(await source.read())
            flowing.set()

    task = asyncio.create_task(reader())
    try:
        # sound played before the device delivers its first block is not recorded by any microphone
        await asyncio.wait_for(flowing.wait(), 10)
        await during()
        await asyncio.sleep(tail_s)
    finally:
        await source.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        blocks.extend(source.drain())
    assert source.pending == 0 and source.clock >= sum(len(b) for b in blocks)
    return np.concatenate(blocks) if blocks else np.zeros(0, np.int16)


def loud_region(x: np.ndarray, threshold: float = 0.02) -> tuple[int, int]:
    """First and last 10 ms frame above an RMS threshold, as sample indexes."""
    frames = x[: len(x) // 160 * 160].astype(np.float64).reshape(-1, 160) / 32768
    loud = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > threshold)
    assert len(loud), "nothing audible was captured"
    return int(loud[0]) * 160, (int(loud[-1]) + 1) * 160


def peak_hz(x: np.ndarray) -> float:
    n = 1 << (len(x) * 4 - 1).bit_length()  # zero-padded for a fine frequency grid
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    return float(np.fft.rfftfreq(n, 1 / RATE)[np.argmax(spectrum)])


def source_outputs(pulse: PulseAudio) -> int:
    return len(pulse.pactl("list", "short", "source-outputs").splitlines())


def test_devices_listed_and_errors_against_a_real_server(pulse):
    names = [d.name for d in list_input_devices(refresh=True)]
    assert pulse.device_name in names, names

    async def main(name):
        await MicrophoneSource(name).start()

    with pytest.raises(AudioDeviceError) as err:
        asyncio.run(main("no such microphone"))
    assert "audio.device 'no such microphone' in config.yaml matches no input device" in str(err.value)
    assert repr(pulse.device_name) in str(err.value)
    with pytest.raises(AudioDeviceError, match="matches 2 input devices"):
        asyncio.run(main("UL"))  # "pulse" and "default"


def test_microphone_captures_a_sine_burst_selected_by_name(pulse, report):
    tone = sine(1000, 0.5, amp=0.3)

    async def main():
        src = MicrophoneSource("QASR_TEST", reopen_after_silence_s=0)  # by part of its name, any case
        t0 = time.monotonic()
        await src.start()
        start_s = time.monotonic() - t0
        assert src.native_rate == 44100 and "qasr_test_mic" in (src.stats.device or "")

        async def play():
            await asyncio.sleep(0.1)
            await asyncio.to_thread(pulse.play, tone)

        audio = await record(src, play)
        return src, start_s, audio

    src, start_s, audio = asyncio.run(main())
    assert audio.dtype == np.int16
    begin, end = loud_region(audio)
    assert abs((end - begin) - len(tone)) <= 480, (begin, end)  # the whole burst, at 16 kHz, nothing lost
    burst = audio[begin + 800 : end - 800].astype(np.float64) / 32768
    assert abs(peak_hz(burst) - 1000) < 2
    rms = np.sqrt((burst**2).mean())
    assert abs(rms / (0.3 / np.sqrt(2)) - 1) < 0.05, rms  # unity gain through sink, monitor and resamplers
    assert src.stats.overruns == 0 and src.stats.input_overflows == 0 and src.stats.reopens == 0
    line = f"capture: start() {start_s * 1e3:.0f} ms, open→first block {src.open_latency_s * 1e3:.0f} ms"
    print(line)
    report(line)


def test_microphone_captures_espeak_speech(tmp_path):
    # its own sound server: nothing an earlier test played (or left playing) can mix into the recording
    with PulseAudio(tmp_path / "pulse") as pulse, pulse.client_env():
        _capture_speech(pulse, tmp_path)


def _capture_speech(pulse, tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng (apt-get install espeak-ng)")
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "Dictation test, one two three."], check=True, timeout=30)
    ref = load_audio(wav).astype(np.float64)

    async def main():
        src = MicrophoneSource(pulse.device_name, reopen_after_silence_s=0)
        await src.start()
        return await record(src, lambda: asyncio.to_thread(pulse.play, wav))

    audio = asyncio.run(main()).astype(np.float64) / 32768
    # The chain (espeak 22.05 kHz -> PulseAudio 48 kHz -> capture resampled to 16 kHz) shifts phases, so compare
    # 10 ms energy envelopes rather than waveforms: align them, then every syllable's loudness contour must be
    # there, in place and complete (compared where the reference speaks: a device may click when it opens).

    def envelope(x: np.ndarray) -> np.ndarray:  # 10 ms log energy; 50 dB below the peak and quieter = floor
        frames = x[: len(x) // 160 * 160].reshape(-1, 160)
        energy = np.log10(np.mean(frames**2, axis=1) + 1e-12)
        return np.maximum(energy, energy.max() - 5.0)

    a, b = envelope(audio), envelope(ref)
    assert len(a) >= len(b), "the recording is shorter than the speech"
    speech = b > b.min()
    scores = [float(np.corrcoef(a[k : k + len(b)][speech], b[speech])[0, 1]) for k in range(len(a) - len(b) + 1)]
    lag = int(np.argmax(scores))
    # Observed: 0.89-0.92 (resampling chain, 10 ms jitter); a recording that misses the first syllables scores
    # 0.56-0.79, noise or silence about 0.
    assert speech.mean() > 0.3 and scores[lag] > 0.85, (lag, scores[lag])


def test_microphone_reopens_when_the_device_disappears(pulse, caplog):
    """The sink (the microphone) is unloaded while recording: the stream dies, reopen attempts fail and are
    logged with backoff, the sink comes back, capture resumes by itself and hears a tone played after it."""
    caplog.set_level(logging.INFO, logger="qasr_live.audio.capture")

    async def main():
        src = MicrophoneSource(pulse.device_name, reopen_after_silence_s=0, stall_timeout_s=3, backoff_s=(0.1, 0.4))
        await src.start()
        clocks = []

        async def scenario():
            await asyncio.sleep(0.2)
            clocks.append(src.clock)
            await asyncio.to_thread(pulse.unload_sink)
            await asyncio.sleep(0.6)
            assert src.stats.reopens == 1 and src.stats.errors >= 2, src.stats  # the loss + failed attempts
            await asyncio.to_thread(pulse.load_sink)
            for _ in range(100):
                if src.stats.opens >= 2:
                    break
                await asyncio.sleep(0.05)
            clocks.append(src.clock)
            await asyncio.sleep(0.2)
            await asyncio.to_thread(pulse.play, sine(700, 0.4))

        audio = await record(src, scenario)
        clocks.append(src.clock)
        return src, audio, clocks

    src, audio, clocks = asyncio.run(main())
    assert src.stats.opens >= 2 and src.stats.reopens >= 1, src.stats
    assert clocks == sorted(clocks) and clocks[-1] > clocks[1]
    begin, end = loud_region(audio)
    assert abs(peak_hz(audio[begin + 800 : end - 800].astype(np.float64)) - 700) < 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("reopening the input device" in m for m in messages)
    assert any("reopen attempt 1 failed" in m for m in messages)
    assert any("reopened after" in m for m in messages)


def test_microphone_start_with_retry_waits_for_a_missing_device(pulse):
    """start(retry=True) while the microphone is absent (a daemon started at login before the sound server):
    no exception, attempts go on in the background, and capture begins when the device appears."""

    async def main():
        await asyncio.to_thread(pulse.unload_sink)
        src = MicrophoneSource(pulse.device_name, reopen_after_silence_s=0, backoff_s=(0.1, 0.3))
        try:
            with pytest.raises(AudioDeviceError, match="cannot open input device 'qasr_test_mic'"):
                await src.start()
            await src.start(retry=True)
            await asyncio.sleep(0.5)
            assert src.running and src.stats.opens == 0 and src.stats.errors >= 2, src.stats
        finally:
            await asyncio.to_thread(pulse.load_sink)
        block = await asyncio.wait_for(src.read(), 5)
        await src.stop()
        return src, block

    src, block = asyncio.run(main())
    assert block is not None and src.stats.opens == 1


def test_microphone_reopens_after_digital_silence_with_backoff(pulse):
    """Nothing plays, so the monitor is exact zeros: reopen after 0.3 s of it, then after 0.6 s, 1.2 s ...;
    blocks keep coming throughout and the clock only grows."""

    async def main():
        src = MicrophoneSource(pulse.device_name, reopen_after_silence_s=0.3)
        await src.start()
        return src, await record(src, lambda: asyncio.sleep(1.6), tail_s=0)

    src, audio = asyncio.run(main())
    assert not audio.any()
    assert src.stats.silence_reopens == 2 and src.stats.reopens == 2, src.stats  # at 0.3 s and 0.9 s
    assert src.stats.opens == 3 and src.stats.errors == 0
    assert len(audio) > 1.2 * RATE


def test_microphone_stall_watchdog(pulse):
    """A suspended sink delivers nothing (no error, no callback): after stall_timeout_s the stream is
    reopened; once the sink resumes, audio flows again."""

    async def main():
        src = MicrophoneSource(pulse.device_name, reopen_after_silence_s=0, stall_timeout_s=0.5, backoff_s=(0.1, 0.2))
        await src.start()

        async def scenario():
            await asyncio.sleep(0.2)
            await asyncio.to_thread(pulse.pactl, "suspend-sink", pulse.sink_name, "1")
            await asyncio.sleep(1.0)
            await asyncio.to_thread(pulse.pactl, "suspend-sink", pulse.sink_name, "0")
            before = src.clock
            for _ in range(100):
                await asyncio.sleep(0.05)
                if src.clock > before + RATE // 10:
                    break

        await record(src, scenario, tail_s=0)
        return src

    src = asyncio.run(main())
    assert src.stats.reopens >= 1 and "stalled" in (src.stats.last_error or ""), src.stats


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def test_microphone_open_close_cycles_release_the_device(pulse, report):
    """Push-to-talk: open per utterance. After stop() the captured audio is all queued and the device is
    released, read() waits for the next start(), the clock carries on, a press during a release leaks no
    stream; open→first-block and stop latencies measured, and the CPU cost of an open stream (over this
    process's idle baseline)."""
    base = source_outputs(pulse)  # the keep-awake recorder

    async def main():
        src = MicrophoneSource(pulse.device_name, reopen_after_silence_s=0)
        latencies, stops, clocks = [], [], []
        for _ in range(5):
            t0 = time.monotonic()
            await src.start()
            block = await src.read()
            latencies.append(time.monotonic() - t0)
            assert block is not None and block.dtype == np.int16
            assert await asyncio.to_thread(source_outputs, pulse) == base + 1
            t0 = time.monotonic()
            await src.stop()
            assert src.drain() and src.pending == 0  # everything captured is there when stop() returns
            stops.append(time.monotonic() - t0)
            with pytest.raises(TimeoutError):  # closed: read() waits for the next start()
                await asyncio.wait_for(src.read(), 0.1)
            assert await asyncio.to_thread(source_outputs, pulse) == base
            clocks.append(src.clock)
        await src.start()
        await asyncio.gather(src.stop(), src.start())  # release and press again at once
        assert src.running and await asyncio.to_thread(source_outputs, pulse) == base + 1
        await src.stop()
        assert await asyncio.to_thread(source_outputs, pulse) == base
        # CPU: this process idle (closed microphone), then with the stream open and its blocks consumed
        c0, w0 = cpu_seconds(), time.monotonic()
        await asyncio.sleep(1.5)
        idle = (cpu_seconds() - c0) / (time.monotonic() - w0)
        await src.start()
        c0, w0 = cpu_seconds(), time.monotonic()
        await record(src, lambda: asyncio.sleep(3.0), tail_s=0)
        busy = (cpu_seconds() - c0) / (time.monotonic() - w0)
        await src.close()  # ends the stream
        assert await src.read() is None
        return src, latencies, stops, clocks, idle, busy

    src, latencies, stops, clocks, idle, busy = asyncio.run(main())
    assert clocks == sorted(clocks) and src.stats.opens == 8
    ms = sorted(1e3 * x for x in latencies)
    stop_ms = sorted(1e3 * x for x in stops)
    line = (
        f"capture: open→first block {ms[0]:.0f}/{ms[2]:.0f}/{ms[4]:.0f} ms, stop()+drain() "
        f"{stop_ms[0]:.0f}/{stop_ms[2]:.0f}/{stop_ms[4]:.0f} ms (min/median/max of 5 cycles); CPU of an open "
        f"stream {100 * (busy - idle):.1f}% of a core (process {100 * busy:.1f}% open, {100 * idle:.1f}% closed)"
    )
    print(line)
    report(line)
    assert ms[2] < 500 and stop_ms[2] < 500
    assert busy - idle < 0.1


def test_microphone_overruns_are_counted_and_logged(pulse, caplog):
    """A consumer that stops reading: blocks beyond max_queue_s are dropped, counted and logged; the clock
    counts only delivered samples and delivery resumes."""
    caplog.set_level(logging.WARNING, logger="qasr_live.audio.source")

    async def main():
        src = MicrophoneSource(pulse.device_name, reopen_after_silence_s=0, max_queue_s=0.15)
        await src.start()
        await asyncio.sleep(0.8)  # not reading
        return src, await record(src, lambda: asyncio.sleep(0.3), tail_s=0)

    src, audio = asyncio.run(main())
    assert src.stats.overruns > 0 and src.stats.dropped_samples >= 480 * src.stats.overruns - 10
    assert src.clock == src.stats.samples == len(audio)
    assert any("dropped a block" in r.getMessage() for r in caplog.records)
