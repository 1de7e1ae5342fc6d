"""Read an audio file into float32 mono samples at 16 kHz, in [-1, 1], whole or in blocks.

WAV files (8-bit unsigned, 16/24/32-bit integer, 32/64-bit float PCM, WAVE_FORMAT_EXTENSIBLE, any channel
count, a sample rate within ``MIN_RATE``..``MAX_RATE``) are parsed here and read a block at a time: memory is
proportional to the block, never to the file (a 3-hour WAV is not loaded to be transcribed). Channels are
averaged and the signal is resampled with ``scipy.signal.resample_poly``, block by block with overlapping margins
so that the blocks join into exactly what one call on the whole file gives. Anything else (mp3, flac, ogg, m4a,
compressed WAV, ...) is decoded by the ``ffmpeg`` executable when it is on PATH, its output read as it comes.
Every failure is an ``AudioError`` naming the file and the fix.

``open_audio(path, start=, duration=)`` checks the file (header, bounds, the cut) and returns an ``AudioFile``
whose ``blocks()`` yields the samples; ``load_audio(path)`` joins them.
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from qasr_live.audio.pcm import SAMPLE_RATE
from qasr_live.errors import AudioError

__all__ = ["BLOCK_SECONDS", "MAX_RATE", "MIN_RATE", "AudioFile", "WavInfo", "load_audio", "open_audio"]

_FFMPEG_HINT = "install ffmpeg (`sudo apt install ffmpeg` or `brew install ffmpeg`) or convert the file to WAV"
# Below 1 kHz nothing is speech (and a header claiming 1 Hz would make resampling blow a small file up
# ×16000); above 768 kHz no recorder writes. Both bounds are checked before a sample is read.
MIN_RATE = 1000
MAX_RATE = 768_000
BLOCK_SECONDS = 30.0
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


@dataclass(frozen=True, slots=True)
class WavInfo:
    """What a WAV header says: sample kind ("u", "i" or "f"), bytes per sample, channels, rate, where the
    frames start and how many whole frames the file holds."""

    kind: str
    width: int
    channels: int
    rate: int
    data_offset: int
    frames: int

    @property
    def frame_bytes(self) -> int:
        return self.width * self.channels


class AudioFile:
    """A checked audio file, cut to [start, start + duration) seconds; ``blocks()`` reads it anew each call."""

    def __init__(
        self,
        path: Path,
        wav: WavInfo | None,
        sample_rate: int,
        start: float,
        duration: float | None,
        first: int = 0,
        count: int = 0,
    ) -> None:
        self.path, self.wav, self.sample_rate = path, wav, sample_rate
        self.start, self.duration = start, duration
        self._first, self._count = first, count  # WAV: frames of the cut, at the file's rate

    @property
    def seconds(self) -> float | None:
        """Length of the (cut) audio; None when only decoding tells (ffmpeg formats)."""
        if self.wav is not None:
            return self._count / self.wav.rate
        return None

    def blocks(self, block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
        """Float32 mono blocks at ``sample_rate`` (about ``block_seconds`` each; the last may be shorter)."""
        if self.wav is None:
            yield from _ffmpeg_blocks(self.path, self.sample_rate, self.start, self.duration, block_seconds)
            return
        yield from _wav_blocks(self.path, self.wav, self._first, self._count, self.sample_rate, block_seconds)


def open_audio(
    path: str | Path, sample_rate: int = SAMPLE_RATE, *, start: float = 0.0, duration: float | None = None
) -> AudioFile:
    """Check ``path`` (readable, a WAV header that holds together, or ffmpeg for other formats; the cut within
    the file) without reading its samples, except to look for NaN in float WAVs."""
    path = Path(path)
    if not math.isfinite(start) or start < 0:
        raise AudioError(f"--start {start}: must be a number of seconds >= 0")
    if duration is not None and (not math.isfinite(duration) or duration <= 0):
        raise AudioError(f"--duration {duration}: must be a number of seconds > 0")
    _check_readable(path)
    with open(path, "rb") as f:
        wav = read_wav_header(f, path)
    if wav is None:
        if shutil.which("ffmpeg") is None:
            kind = path.suffix.lstrip(".").lower() or "this"
            raise AudioError(
                f"{path}: the {kind} format needs ffmpeg to decode (it is not a WAV file this program can read "
                f"directly); {_FFMPEG_HINT}"
            )
        return AudioFile(path, None, sample_rate, start, duration)
    _check_length(path, wav.frames, wav.rate)
    first = round(start * wav.rate)
    if first >= wav.frames:
        raise AudioError(
            f"{path}: --start {start:g} s is beyond the end of the audio ({wav.frames / wav.rate:.3f} s); "
            "give a start inside the file"
        )
    count = wav.frames - first if duration is None else min(wav.frames - first, max(1, round(duration * wav.rate)))
    if wav.kind == "f":
        _check_finite(path, wav)
    return AudioFile(path, wav, sample_rate, start, duration, first, count)


def load_audio(
    path: str | Path, sample_rate: int = SAMPLE_RATE, *, start: float = 0.0, duration: float | None = None
) -> np.ndarray:
    """Return the samples of ``path`` as a 1-D float32 array at ``sample_rate`` Hz, mono, in [-1, 1]."""
    audio = open_audio(path, sample_rate, start=start, duration=duration)
    parts = list(audio.blocks())
    out = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if audio.wav is None:
        _check_samples(Path(path), out.reshape(-1, 1), sample_rate)
    return out


# --- WAV ----------------------------------------------------------------------------------------------------


def read_wav_header(f: BinaryIO, path: Path) -> WavInfo | None:
    """Parse a RIFF/WAVE header; None when the file is not a PCM/float WAV (ffmpeg may decode it). A WAV whose
    header is broken (truncated, no data chunk, zero or absurd rate, channels or sample size) is an AudioError:
    no decoder would do better with it."""
    head = f.read(12)
    if not head.startswith(b"RIFF"):
        return None
    if len(head) < 12:
        raise _truncated(path, "inside the RIFF header")
    if head[8:12] != b"WAVE":
        return None
    size = os.fstat(f.fileno()).st_size
    fmt: tuple[int, int, int, int] | None = None  # (tag, channels, rate, bits)
    pos = 12
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            what = "fmt" if fmt is None else "data"
            raise _truncated(path, f"at byte {pos}, before its {what} chunk")
        cid, csize = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        pos += 8
        if cid == b"fmt ":
            if csize < 16:
                raise AudioError(f"{path}: the WAV fmt chunk is {csize} bytes, less than 16; the file is corrupt")
            body = f.read(min(csize, 64))
            if len(body) < min(csize, 64):
                raise _truncated(path, "inside its fmt chunk")
            tag, channels, rate, _byte_rate, _align, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == _EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack("<H", body[24:26])[0]  # the sub-format GUID starts with the format tag
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            if fmt is None:
                raise AudioError(f"{path}: the WAV data chunk comes before its fmt chunk; the file is corrupt")
            return _wav_info(path, fmt, pos, csize, size)
        pos += csize + (csize & 1)  # chunks are padded to an even size
        if pos > size:
            raise _truncated(path, f"inside its {cid.decode('latin-1')!r} chunk")
        f.seek(pos)


def _wav_info(path: Path, fmt: tuple[int, int, int, int], offset: int, declared: int, size: int) -> WavInfo | None:
    tag, channels, rate, bits = fmt
    if tag not in (_PCM, _FLOAT):
        return None  # A-law, ADPCM, mp3-in-WAV...: ffmpeg's job
    if channels == 0:
        raise AudioError(f"{path}: the WAV header says 0 channels; the file is corrupt — re-export it")
    if rate == 0:
        raise AudioError(f"{path}: the WAV header says a sample rate of 0 Hz; the file is corrupt — re-export it")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(
            f"{path}: the WAV header says {rate} Hz, outside {MIN_RATE}..{MAX_RATE} Hz; the header is wrong, or "
            "resample the audio (e.g. `ffmpeg -i IN -ar 16000 OUT.wav`)"
        )
    kinds = {(_PCM, 8): "u", (_PCM, 16): "i", (_PCM, 24): "i", (_PCM, 32): "i", (_FLOAT, 32): "f", (_FLOAT, 64): "f"}
    kind = kinds.get((tag, bits))
    if kind is None:
        sort = "float" if tag == _FLOAT else "integer"
        raise AudioError(f"{path}: unsupported WAV sample type ({bits}-bit {sort}); convert it to 16-bit PCM WAV")
    width = bits // 8
    # a writer that never came back to fill in the size (a stream, a crash) leaves 0 or 0xFFFFFFFF: the data
    # then runs to the end of the file, and a file cut short holds only what is there
    available = max(0, size - offset)
    data = available if declared == 0xFFFFFFFF else min(declared, available)
    return WavInfo(kind, width, channels, rate, offset, data // (width * channels))


def _truncated(path: Path, where: str) -> AudioError:
    return AudioError(f"{path}: the WAV header is truncated ({where}); the file is incomplete — copy it again")


def _read_frames(f: BinaryIO, wav: WavInfo, first: int, count: int) -> np.ndarray:
    """Frames [first, first + count) as float64 mono."""
    f.seek(wav.data_offset + first * wav.frame_bytes)
    raw = f.read(count * wav.frame_bytes)
    raw = raw[: len(raw) - len(raw) % wav.frame_bytes]
    if wav.kind == "u":
        values = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128.0) / 128.0
    elif wav.kind == "f":
        values = np.frombuffer(raw, "<f4" if wav.width == 4 else "<f8").astype(np.float64)
    elif wav.width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        ints = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8  # left-justified: the sign bit is bit 31
        values = ints.astype(np.float64) / 2.0**31
    else:
        values = np.frombuffer(raw, "<i2" if wav.width == 2 else "<i4").astype(np.float64) / 2.0 ** (8 * wav.width - 1)
    frames = values.reshape(-1, wav.channels)
    mono: np.ndarray = frames[:, 0] if wav.channels == 1 else frames.mean(axis=1)
    return mono


def _wav_blocks(
    path: Path, wav: WavInfo, first: int, count: int, sample_rate: int, block_seconds: float
) -> Iterator[np.ndarray]:
    g = math.gcd(wav.rate, sample_rate)
    up, down = sample_rate // g, wav.rate // g
    # Blocks start at multiples of `down` input frames, where an output sample falls exactly; each is resampled
    # with `margin` frames of its neighbours on both sides (more than the filter's half-length, 10 × max(up,
    # down) taps at the up-sampled rate), so its output equals that slice of resample_poly on the whole cut.
    block = max(1, math.ceil(block_seconds * wav.rate / down)) * down
    margin = 0 if up == down else math.ceil((10 * max(up, down) / up + 2) / down) * down
    try:
        with open(path, "rb") as f:
            for s in range(0, count, block):
                e = min(count, s + block)
                if up == down:
                    yield np.clip(_read_frames(f, wav, first + s, e - s), -1.0, 1.0).astype(np.float32)
                    continue
                from scipy.signal import resample_poly  # here: the daemon's file sources rarely resample (75 MB)

                s0, e0 = max(0, s - margin), min(count, e + margin)
                y = resample_poly(_read_frames(f, wav, first + s0, e0 - s0), up, down)
                lo = (s - s0) * up // down
                n_out = (-(-e * up // down) if e == count else e * up // down) - s * up // down
                yield np.clip(y[lo : lo + n_out], -1.0, 1.0).astype(np.float32)
    except OSError as exc:  # the file went away or the disk failed while it was read
        raise AudioError(f"{path}: cannot be read ({exc.strerror or exc}); check the file and the disk") from exc


def _check_length(path: Path, frames: int, rate: int) -> None:
    if frames == 0 or frames / rate < 0.001:
        raise AudioError(
            f"{path}: holds no audio ({frames} samples at {rate} Hz, less than 1 ms); "
            "check that the recording is not empty or truncated"
        )


def _check_finite(path: Path, wav: WavInfo) -> None:
    """A float WAV with NaN or infinite samples is corrupt; scanned block by block before anything is decoded."""
    count, first_bad = 0, -1
    step = 1 << 20
    with open(path, "rb") as f:
        f.seek(wav.data_offset)
        for pos in range(0, wav.frames, step):
            raw = f.read(min(step, wav.frames - pos) * wav.frame_bytes)
            frames = np.frombuffer(raw, "<f4" if wav.width == 4 else "<f8").reshape(-1, wav.channels)
            bad = ~np.isfinite(frames).all(axis=1)
            n = int(bad.sum())
            if n and first_bad < 0:
                first_bad = pos + int(np.argmax(bad))
            count += n
    if count:
        raise AudioError(
            f"{path}: {count} sample(s) are NaN or infinite, the first at {first_bad / wav.rate:.3f} s; "
            "the file is corrupt — re-export or re-record it"
        )


# --- everything else: ffmpeg --------------------------------------------------------------------------------


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: no such file; check the path (relative paths start at {Path.cwd()})")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file; pass the path of a file inside it")
    try:
        with open(path, "rb") as f:
            first = f.read(1)
    except PermissionError as exc:
        raise AudioError(f"{path}: permission denied; make the file readable (e.g. `chmod a+r {path}`)") from exc
    except OSError as exc:
        raise AudioError(f"{path}: cannot be read ({exc.strerror or exc}); check the file and the disk") from exc
    if not first:
        raise AudioError(f"{path}: the file is empty (0 bytes); record or copy the audio again")


def _check_samples(path: Path, frames: np.ndarray, rate: int) -> None:
    """Reject empty (< 1 ms) audio and audio holding NaN or infinite samples. ``frames`` is (n, channels)."""
    _check_length(path, frames.shape[0], rate)
    bad = ~np.isfinite(frames).all(axis=1)
    count = int(bad.sum())
    if count:
        first = int(np.argmax(bad)) / rate
        raise AudioError(
            f"{path}: {count} sample(s) are NaN or infinite, the first at {first:.3f} s; "
            "the file is corrupt — re-export or re-record it"
        )


def _ffmpeg_blocks(
    path: Path, sample_rate: int, start: float, duration: float | None, block_seconds: float
) -> Iterator[np.ndarray]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        kind = path.suffix.lstrip(".").lower() or "this"
        raise AudioError(f"{path}: the {kind} format needs ffmpeg to decode; {_FFMPEG_HINT}")
    cmd = [ffmpeg, "-nostdin", "-v", "error"]
    if start > 0:
        cmd += ["-ss", f"{start:.6f}"]
    cmd += ["-i", str(path)]
    if duration is not None:
        cmd += ["-t", f"{duration:.6f}"]
    # -rematrix_maxval 1: for float output ffmpeg would otherwise downmix stereo as (L + R) / sqrt(2), 3 dB
    # louder than the WAV path's average and clipping at full scale; normalised, stereo gives (L + R) / 2.
    cmd += ["-rematrix_maxval", "1", "-f", "f32le", "-ac", "1", "-ar", str(sample_rate), "-"]
    block_bytes = max(1, int(block_seconds * sample_rate)) * 4
    # stderr to a file: a pipe nobody reads while stdout is drained could fill and stall ffmpeg
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors)
        except OSError as exc:
            raise AudioError(f"{path}: could not run {ffmpeg} ({exc}); check the ffmpeg installation") from exc
        assert proc.stdout is not None
        got, done = 0, False
        try:
            while True:
                raw = proc.stdout.read(block_bytes)
                if not raw:
                    break
                usable = len(raw) - len(raw) % 4
                got += usable // 4
                if usable:
                    yield np.clip(np.frombuffer(raw[:usable], dtype="<f4"), -1.0, 1.0).astype(np.float32)
            done = True
        finally:
            if not done:  # the consumer stopped early (or failed): no one reads the rest
                proc.kill()
            proc.stdout.close()
            rc = proc.wait()
        if rc != 0:
            errors.seek(0)
            lines = errors.read().decode("utf-8", "replace").strip().splitlines()
            last = lines[-1] if lines else f"exit status {rc}"
            raise AudioError(
                f"{path}: ffmpeg could not decode the file: {last}; "
                "check that it is a complete audio file, or convert it to WAV"
            )
        if got == 0 and start > 0:
            raise AudioError(f"{path}: --start {start:g} s is beyond the end of the audio; give a start inside it")
