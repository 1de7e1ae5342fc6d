"""`qasr-live transcribe` as a user runs it (a real subprocess on the embedded demo model): segments printed as
they are decoded (a pipe: one line each, the first before the file is done; a terminal: running text), the
progress bar on stderr, --start/--duration, and broken WAV headers as one clear error with exit status 2."""

from __future__ import annotations

import os
import pty
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from qasr_live.model_store import DEMO_MODEL

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = DEMO_MODEL / "sample.wav"


def _cmd(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "qasr_live", "transcribe", *map(str, args), "--model", str(DEMO_MODEL)]


@pytest.fixture
def setup(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("engine:\n  segment_seconds: 5\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QASR")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "cfg"), XDG_DATA_HOME=str(tmp_path / "data"))
    rate, pcm = wavfile.read(SAMPLE)
    long_wav = tmp_path / "long.wav"
    wavfile.write(long_wav, rate, np.tile(pcm, 4))  # 34 s: 7 segments of 5 s
    return config, env, long_wav


def test_a_pipe_gets_each_segment_as_a_line_while_decoding(setup):
    config, env, long_wav = setup
    proc = subprocess.Popen(
        [*_cmd(long_wav), "--config", str(config), "-q", "--language", "English", "--progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        first = proc.stdout.readline()
        running = proc.poll() is None
        rest, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert first.strip() and running, "the first segment's line came only when the file was done"
    lines = [first.rstrip("\n"), *rest.splitlines()]
    assert len(lines) >= 4 and all(line.strip() for line in lines)
    assert "transcribing" in err and "34.4/34.4" in err  # tqdm's bar, in seconds of audio


def test_a_terminal_gets_running_text(setup, tmp_path):
    config, env, _ = setup
    main, secondary = pty.openpty()
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        proc = subprocess.Popen(
            [*_cmd(SAMPLE), "--config", str(config), "-q", "--language", "English"],
            stdout=secondary, stderr=stderr, cwd=ROOT, env=env,
        )  # fmt: skip
    os.close(secondary)
    out = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(main)
    proc.wait(timeout=30)
    text = out.decode().replace("\r\n", "\n")
    assert proc.returncode == 0, (tmp_path / "stderr.txt").read_text()
    assert text.count("\n") == 1 and text.endswith("\n") and len(text.split()) >= 5  # segments on one line


def test_start_and_duration(setup, tmp_path):
    config, env, _ = setup
    out = tmp_path / "out"
    proc = subprocess.run(
        [*_cmd(SAMPLE), "--config", str(config), "-q", "--start", "2", "--duration", "4", "--format", "json",
         "--out-dir", str(out)],
        capture_output=True, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    import json

    doc = json.loads((out / "sample.json").read_text())
    assert doc["segments"][0]["start"] == pytest.approx(2.0) and doc["segments"][-1]["end"] == pytest.approx(6.0)


def _header(rate: int = 16000, channels: int = 1) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * 2 * channels, 2 * channels, 16)
    data = bytes(3200)
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    ("blob", "extra", "message"),
    [
        (_header()[:30], [], "WAV header is truncated"),
        (_header(rate=0), [], "sample rate of 0 Hz"),
        (_header(rate=1), [], "1 Hz, outside"),
        (_header(), ["--start", "9"], "beyond the end"),
        (_header(), ["--duration", "-3"], "--duration -3.0"),
    ],
    ids=["truncated", "rate-0", "rate-1", "start-beyond-end", "negative-duration"],
)
def test_bad_input_is_one_line_and_exit_2(setup, tmp_path, blob, extra, message):
    config, env, _ = setup
    wav = tmp_path / "bad.wav"
    wav.write_bytes(blob)
    out = tmp_path / "out"
    proc = subprocess.run(
        [*_cmd(wav), "--config", str(config), "--format", "txt,json", "--out-dir", str(out), *extra],
        capture_output=True, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("qasr-live: error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in proc.stderr
    assert not out.exists()  # nothing half-written
