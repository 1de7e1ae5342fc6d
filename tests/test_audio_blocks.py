"""Block reading of audio files (qasr_live.audio.files): blocks join into exactly the whole-file result, the
--start/--duration cut, memory bounded by a block, and the WAV header checks (truncation, rate 0, absurd rates),
with a hypothesis fuzz target over WAV headers: every input gives samples or one AudioError, nothing else."""

from __future__ import annotations

import os
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.io import wavfile
from scipy.signal import resample_poly

from qasr_live.audio.files import MAX_RATE, MIN_RATE, load_audio, open_audio
from qasr_live.errors import AudioError


def _riff(fmt: bytes, data: bytes, data_size: int | None = None) -> bytes:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data) if data_size is None else data_size) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _fmt(tag: int = 1, channels: int = 1, rate: int = 16000, bits: int = 16) -> bytes:
    align = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000, 44101])
def test_blocks_join_into_the_whole_file_result(tmp_path: Path, rate: int) -> None:
    rng = np.random.default_rng(rate)
    raw = (rng.standard_normal((int(rate * 2.3) + 17, 2)) * 8000).astype(np.int16)
    path = tmp_path / "x.wav"
    wavfile.write(path, rate, raw)
    mono = raw.astype(np.float64).mean(axis=1) / 32768.0
    expected = mono if rate == 16000 else resample_poly(mono, 16000 // np.gcd(rate, 16000), rate // np.gcd(rate, 16000))
    expected = np.clip(expected, -1, 1).astype(np.float32)
    blocks = list(open_audio(path).blocks(block_seconds=0.05))
    assert len(blocks) >= (3 if rate == 44101 else 30)  # really many blocks (44101 Hz: blocks of whole seconds)
    joined = np.concatenate(blocks)
    assert len(joined) == len(expected)
    np.testing.assert_allclose(joined, expected, atol=2e-6)


def test_start_and_duration_cut_without_reading_the_rest(tmp_path: Path) -> None:
    raw = (np.arange(16000 * 4) % 3000 - 1500).astype(np.int16)
    path = tmp_path / "ramp.wav"
    wavfile.write(path, 16000, raw)
    audio = open_audio(path, start=1.5, duration=2.0)
    assert audio.seconds == pytest.approx(2.0)
    got = np.concatenate(list(audio.blocks(block_seconds=0.3)))
    np.testing.assert_array_equal(got, (raw[24000:56000] / 32768.0).astype(np.float32))
    assert len(load_audio(path, start=3.5)) == 8000  # a duration past the end stops at the end
    assert len(load_audio(path, start=3.5, duration=100)) == 8000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": 5.0}, "beyond the end"),
        ({"start": -1.0}, "--start -1.0: must be"),
        ({"duration": 0.0}, "--duration 0.0: must be"),
        ({"duration": -2.0}, "--duration -2.0: must be"),
    ],
)
def test_bad_cuts_are_one_clear_error(tmp_path: Path, kwargs: dict[str, float], message: str) -> None:
    path = tmp_path / "a.wav"
    wavfile.write(path, 16000, np.zeros(16000, np.int16))
    with pytest.raises(AudioError, match=message):
        open_audio(path, **kwargs)


def test_memory_is_a_block_not_the_file(tmp_path: Path) -> None:
    """Ten minutes at 44.1 kHz stereo (106 MB of WAV, 211 MB as float64 frames at once): reading it block by
    block allocates a small multiple of a block."""
    path = tmp_path / "long.wav"
    rate, seconds = 44100, 600
    with open(path, "wb") as f:
        f.write(_riff(_fmt(1, 2, rate, 16), b"", data_size=rate * seconds * 4))
        chunk = (np.random.default_rng(0).standard_normal((rate * 10, 2)) * 3000).astype("<i2").tobytes()
        for _ in range(seconds // 10):
            f.write(chunk)
    audio = open_audio(path)
    assert audio.seconds == pytest.approx(seconds)
    tracemalloc.start()
    try:
        n = sum(len(b) for b in audio.blocks(block_seconds=5.0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 16000 * seconds
    assert peak < 20e6, f"peak {peak / 1e6:.1f} MB while reading blocks of 5 s"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_riff(_fmt(rate=0), b"\0" * 64), "sample rate of 0 Hz"),
        (_riff(_fmt(rate=1), b"\0" * 200_000), f"1 Hz, outside {MIN_RATE}..{MAX_RATE} Hz"),
        (_riff(_fmt(rate=5_000_000), b"\0" * 64), "5000000 Hz, outside"),
        (_riff(_fmt(channels=0), b"\0" * 64), "0 channels"),
        (_riff(_fmt(bits=12), b"\0" * 64), "unsupported WAV sample type"),
        (b"RIFF\x10\0\0\0WA", "truncated"),
        (_riff(_fmt(), b"\0" * 64)[:30], "truncated"),
        (_riff(_fmt(), b"\0" * 64)[:40], "truncated"),
    ],
)
def test_broken_headers_are_one_clear_error(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "broken.wav"
    path.write_bytes(data)
    with pytest.raises(AudioError, match=message) as exc:
        load_audio(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_every_truncation_of_a_header_is_an_audio_error(tmp_path: Path) -> None:
    whole = _riff(_fmt(), np.zeros(800, "<i2").tobytes())
    path = tmp_path / "cut.wav"
    for n in range(4, 44):  # from "RIFF" to the last header byte (shorter prefixes are not WAV: ffmpeg's)
        path.write_bytes(whole[:n])
        with pytest.raises(AudioError):
            load_audio(path)


def test_data_size_past_the_end_reads_what_is_there(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    path.write_bytes(_riff(_fmt(), np.full(1600, 16384, "<i2").tobytes(), data_size=10**9))
    out = load_audio(path)
    assert len(out) == 1600 and np.all(out == 0.5)


# A bounded budget in the normal suite; QASR_FUZZ_EXAMPLES=5000 for a longer run.
FUZZ_EXAMPLES = int(os.environ.get("QASR_FUZZ_EXAMPLES", "150"))
_FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_FUZZ_SETTINGS
@given(
    tag=st.sampled_from([1, 3, 0xFFFE]),
    channels=st.integers(0, 9),
    rate=st.one_of(st.sampled_from([0, 1, 999, 1000, 8000, 16000, 44100, 768_000, 768_001]), st.integers(0, 2**32 - 1)),
    bits=st.sampled_from([0, 8, 12, 16, 24, 32, 64]),
    fmt_extra=st.binary(max_size=30),
    data=st.binary(max_size=400),
    data_size=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    cut=st.one_of(st.none(), st.integers(0, 500)),
)
def test_fuzz_wav_headers(tmp_path: Path, tag, channels, rate, bits, fmt_extra, data, data_size, cut) -> None:
    """No header makes the reader crash, hang or allocate wildly: samples in [-1, 1] or one AudioError."""
    align = max(1, channels * bits // 8)
    fmt = struct.pack("<HHIIHH", tag, channels, rate, (rate * align) % 2**32, align % 2**16, bits) + fmt_extra
    blob = _riff(fmt, data, data_size)
    if cut is not None:
        blob = blob[:cut]
    path = tmp_path / "fuzz.wav"
    path.write_bytes(blob)
    try:
        out = load_audio(path)
    except AudioError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert out.dtype == np.float32 and out.ndim == 1
    assert np.all(np.abs(out) <= 1.0)
    assert len(out) <= len(data) * 16000 // MIN_RATE + 1  # bounded by the rate check
