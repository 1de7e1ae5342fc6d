"""load_audio: WAV variants, resampling, ffmpeg decoding and every error message."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from qasr_live.audio import files
from qasr_live.audio.files import load_audio
from qasr_live.errors import AudioError

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not on PATH (apt-get install -y ffmpeg)")


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def write_riff(path: Path, fmt_chunk: bytes, data: bytes) -> None:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
    body += b"data" + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def int24_bytes(values: np.ndarray) -> bytes:
    """Packed 3-byte little-endian frames."""
    v = values.astype("<i4").view(np.uint8).reshape(-1, 4)
    return v[:, :3].tobytes()


# --- WAV sample formats -----------------------------------------------------------------------------------


def test_int16_exact_scaling(tmp_path):
    raw = np.zeros(1600, dtype=np.int16)
    raw[:4] = [0, 16384, -32768, 32767]
    path = tmp_path / "a.wav"
    wavfile.write(path, 16000, raw)
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1 and len(out) == 1600
    np.testing.assert_array_equal(out[:4], np.array([0.0, 0.5, -1.0, 32767 / 32768], dtype=np.float32))


def test_uint8_is_offset_binary(tmp_path):
    raw = np.full(160, 128, dtype=np.uint8)
    raw[:4] = [0, 64, 128, 255]
    path = tmp_path / "u8.wav"
    wavfile.write(path, 16000, raw)
    out = load_audio(path)
    np.testing.assert_allclose(out[:4], [-1.0, -0.5, 0.0, 127 / 128])
    assert np.all(out[4:] == 0.0)


@pytest.mark.parametrize(
    ("dtype", "values", "expected"),
    [
        (np.int32, [0, 2**30, -(2**31), 2**31 - 1], [0.0, 0.5, -1.0, 1.0]),
        (np.float32, [0.0, 0.25, -0.75, 1.0], [0.0, 0.25, -0.75, 1.0]),
        (np.float64, [0.0, 0.125, -1.0, 0.5], [0.0, 0.125, -1.0, 0.5]),
    ],
)
def test_int32_and_float_wavs(tmp_path, dtype, values, expected):
    raw = np.zeros(800, dtype=dtype)
    raw[:4] = values
    path = tmp_path / "x.wav"
    wavfile.write(path, 16000, raw)
    out = load_audio(path)
    assert out.dtype == np.float32 and len(out) == 800
    np.testing.assert_allclose(out[:4], expected, atol=1e-7)


def test_float_wav_is_clipped_to_unit_range(tmp_path):
    raw = np.zeros(160, dtype=np.float32)
    raw[:2] = [1.5, -3.0]
    path = tmp_path / "loud.wav"
    wavfile.write(path, 16000, raw)
    np.testing.assert_array_equal(load_audio(path)[:2], [1.0, -1.0])


def test_24bit_wave_module(tmp_path):
    values = np.zeros(320, dtype=np.int32)
    values[:4] = [2**22, -(2**23), 2**23 - 1, -(2**21)]
    path = tmp_path / "24.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(16000)
        w.writeframes(int24_bytes(values))
    out = load_audio(path)
    assert len(out) == 320
    np.testing.assert_allclose(out[:4], [0.5, -1.0, (2**23 - 1) / 2**23, -0.25], atol=1e-7)


def test_wave_format_extensible_24bit_stereo(tmp_path):
    n = 480
    left = np.full(n, 2**22, dtype=np.int32)  # 0.5
    right = np.full(n, -(2**21), dtype=np.int32)  # -0.25
    frames = np.stack([left, right], axis=1).reshape(-1)
    guid_pcm = struct.pack("<IHH", 1, 0, 0x10) + bytes([0x80, 0, 0, 0xAA, 0, 0x38, 0x9B, 0x71])
    fmt = struct.pack("<HHIIHH", 0xFFFE, 2, 16000, 16000 * 6, 6, 24)
    fmt += struct.pack("<HHI", 22, 24, 0x3) + guid_pcm
    path = tmp_path / "ext.wav"
    write_riff(path, fmt, int24_bytes(frames))
    out = load_audio(path)
    assert len(out) == n
    np.testing.assert_allclose(out, 0.125, atol=1e-7)


def test_stereo_channels_are_averaged(tmp_path):
    n = 1600
    left = sine(440, 16000, n / 16000, amp=0.6)
    right = np.full(n, -0.2)
    path = tmp_path / "stereo.wav"
    wavfile.write(path, 16000, np.stack([left, right], axis=1).astype(np.float32))
    out = load_audio(path)
    assert out.shape == (n,)
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-6)


def test_three_channels_int16_averaged(tmp_path):
    raw = np.zeros((160, 3), dtype=np.int16)
    raw[:, 0], raw[:, 1], raw[:, 2] = 16384, -8192, 3 * 8192
    path = tmp_path / "three.wav"
    wavfile.write(path, 16000, raw)
    np.testing.assert_allclose(load_audio(path), (0.5 - 0.25 + 0.75) / 3, atol=1e-7)


# --- resampling ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_resampled_length_and_pitch(tmp_path, rate, dtype):
    x = sine(440, rate, 1.0)
    raw = (x * 32767).astype(np.int16) if dtype is np.int16 else x.astype(np.float32)
    path = tmp_path / f"sine_{rate}.wav"
    wavfile.write(path, rate, raw)
    out = load_audio(path)
    assert out.dtype == np.float32
    assert len(out) == 16000
    assert peak_hz(out, 16000) == pytest.approx(440, abs=1.0)
    mid = out[2000:-2000]
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_resample_length_rounds_up_for_odd_lengths(tmp_path):
    path = tmp_path / "odd.wav"
    n = 44100 // 3 + 7
    wavfile.write(path, 44100, (sine(440, 44100, n / 44100) * 32767).astype(np.int16))
    assert len(load_audio(path)) == -(-n * 160 // 441)


def test_other_target_rate(tmp_path):
    path = tmp_path / "s.wav"
    wavfile.write(path, 48000, sine(1000, 48000, 0.5).astype(np.float32))
    out = load_audio(path, sample_rate=8000)
    assert len(out) == 4000
    assert peak_hz(out, 8000) == pytest.approx(1000, abs=2.0)


# --- errors -------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="no such file") as exc:
        load_audio(path)
    assert str(path) in str(exc.value)


def test_directory(tmp_path):
    with pytest.raises(AudioError, match="is a directory") as exc:
        load_audio(tmp_path)
    assert str(tmp_path) in str(exc.value)


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "secret.wav"
    wavfile.write(path, 16000, np.zeros(160, dtype=np.int16))
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # root reads anything: simulate the refusal instead

            def refuse(*args, **kwargs):
                raise PermissionError(13, "Permission denied", str(path))

            monkeypatch.setattr(files, "open", refuse, raising=False)
        with pytest.raises(AudioError, match="permission denied") as exc:
            load_audio(path)
        assert str(path) in str(exc.value) and "chmod" in str(exc.value)
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="empty") as exc:
        load_audio(path)
    assert str(path) in str(exc.value)


def test_wav_with_no_samples(tmp_path):
    path = tmp_path / "nothing.wav"
    wavfile.write(path, 16000, np.zeros(0, dtype=np.int16))
    with pytest.raises(AudioError, match="no audio") as exc:
        load_audio(path)
    assert str(path) in str(exc.value) and "0 samples" in str(exc.value)


def test_wav_shorter_than_one_ms(tmp_path):
    path = tmp_path / "blip.wav"
    wavfile.write(path, 48000, np.ones(47, dtype=np.int16))  # 0.98 ms
    with pytest.raises(AudioError, match="less than 1 ms") as exc:
        load_audio(path)
    assert str(path) in str(exc.value)
    wavfile.write(path, 48000, np.ones(48, dtype=np.int16))  # exactly 1 ms is fine
    assert len(load_audio(path)) == 16


def test_nan_and_inf_samples(tmp_path):
    raw = np.zeros((16000, 2), dtype=np.float32)
    raw[8000, 1] = np.nan
    raw[12000, 0] = np.inf
    raw[12001, :] = -np.inf
    path = tmp_path / "bad.wav"
    wavfile.write(path, 16000, raw)
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    msg = str(exc.value)
    assert str(path) in msg and "3 sample(s) are NaN or infinite" in msg and "0.500 s" in msg


# --- ffmpeg -------------------------------------------------------------------------------------------------


def empty_path(monkeypatch, tmp_path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    monkeypatch.setenv("PATH", str(bare))


def test_missing_ffmpeg_message(tmp_path, monkeypatch):
    path = tmp_path / "speech.mp3"
    path.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(400))
    empty_path(monkeypatch, tmp_path)
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    msg = str(exc.value)
    assert str(path) in msg and "mp3 format needs ffmpeg" in msg
    assert "sudo apt install ffmpeg" in msg and "brew install ffmpeg" in msg and "convert the file to WAV" in msg


def test_ffmpeg_failure_reports_last_stderr_line(tmp_path, monkeypatch):
    empty_path(monkeypatch, tmp_path)
    fake = tmp_path / "bin" / "ffmpeg"
    fake.write_text("#!/bin/sh\necho 'first complaint' >&2\necho 'the real reason' >&2\nexit 1\n")
    fake.chmod(0o755)
    path = tmp_path / "x.ogg"
    path.write_bytes(b"OggS" + bytes(100))
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    msg = str(exc.value)
    assert str(path) in msg and "ffmpeg could not decode" in msg and "the real reason" in msg
    assert "first complaint" not in msg


def test_ffmpeg_output_is_used(tmp_path, monkeypatch):
    """A fake ffmpeg proves the arguments and that stdout is read as f32le."""
    cat = shutil.which("cat")
    empty_path(monkeypatch, tmp_path)
    payload = tmp_path / "payload.raw"
    np.full(320, 0.25, dtype="<f4").tofile(payload)
    args = tmp_path / "args.txt"
    fake = tmp_path / "bin" / "ffmpeg"
    fake.write_text(f'#!/bin/sh\necho "$@" > {args}\n{cat} {payload}\n')
    fake.chmod(0o755)
    path = tmp_path / "y.m4a"
    path.write_bytes(bytes(100))
    out = load_audio(path)
    assert out.dtype == np.float32 and len(out) == 320 and np.all(out == 0.25)
    assert args.read_text().split() == [
        "-nostdin", "-v", "error", "-i", str(path), "-rematrix_maxval", "1",
        "-f", "f32le", "-ac", "1", "-ar", "16000", "-",
    ]  # fmt: skip


@needs_ffmpeg
def test_real_ffmpeg_rejects_garbage(tmp_path):
    path = tmp_path / "garbage.mp3"
    path.write_bytes(b"this is not audio at all " * 200)
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    msg = str(exc.value)
    assert str(path) in msg and "ffmpeg could not decode" in msg


@needs_ffmpeg
@pytest.mark.parametrize("ext", ["flac", "mp3"])
def test_real_ffmpeg_decodes(tmp_path, ext):
    src = tmp_path / "src.wav"
    x = sine(440, 44100, 1.0)
    right = np.full_like(x, -0.2)  # different channels: the decoded mono is their average, as for WAV
    wavfile.write(src, 44100, (np.stack([x, right], axis=1) * 32767).astype(np.int16))
    path = tmp_path / f"speech.{ext}"
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-i", str(src), str(path)], check=True)
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    if ext == "flac":
        assert len(out) == 16000
    else:  # mp3 decoders may keep a few ms of encoder padding
        assert abs(len(out) - 16000) < 1200
    assert peak_hz(out, 16000) == pytest.approx(440, abs=2.0)
    mid = out[2000:14000]
    assert mid.mean() == pytest.approx(-0.1, abs=0.01)
    assert np.sqrt(np.mean((mid - mid.mean()) ** 2)) == pytest.approx(0.25 / np.sqrt(2), rel=0.1)


@needs_ffmpeg
def test_wav_scipy_cannot_read_goes_to_ffmpeg(tmp_path):
    src = tmp_path / "src.wav"
    wavfile.write(src, 8000, (sine(440, 8000, 1.0) * 32767).astype(np.int16))
    path = tmp_path / "alaw.wav"
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-i", str(src), "-c:a", "pcm_alaw", str(path)], check=True)
    with pytest.raises(ValueError):
        wavfile.read(path)  # A-law is not PCM: scipy refuses it
    out = load_audio(path)
    assert len(out) == 16000
    assert peak_hz(out, 16000) == pytest.approx(440, abs=1.0)
