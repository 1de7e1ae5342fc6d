"""The Python API (qasr_live.Engine) on the embedded demo model: files and arrays give the same text as the
command line, the generator yields the segments transcribe() returns, --start/--duration cuts keep input times,
errors are QasrErrors, the package import stays light; and every example of docs/api.md runs as written."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

import qasr_live
from qasr_live.config import AppConfig
from qasr_live.errors import AudioError, ConfigError, QasrError
from qasr_live.model_store import DEMO_MODEL

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = DEMO_MODEL / "sample.wav"
# Short segments so that the 8.6 s sample is several segments (the generator has something to yield in turn).
CONFIG = AppConfig()
CONFIG = dataclasses.replace(CONFIG, engine=dataclasses.replace(CONFIG.engine, segment_seconds=5.0))


def _env(tmp_path: Path) -> dict[str, str]:
    """No user config or installed models: the demo model is what `Engine()` and the CLI pick."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QASR")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_DATA_HOME=str(tmp_path / "data"))
    return env


@pytest.fixture(scope="module")
def engine():
    with qasr_live.Engine(DEMO_MODEL, language="English", config=CONFIG) as e:
        yield e


def test_file_array_and_cli_agree(engine, tmp_path):
    from_file = engine.transcribe(SAMPLE)
    rate, pcm = wavfile.read(SAMPLE)
    assert engine.transcribe(pcm, sample_rate=rate).text == from_file.text
    assert engine.transcribe(pcm.astype(np.float32) / 32768, sample_rate=rate).text == from_file.text
    assert len(from_file.segments) >= 2 and from_file.language == "English" and from_file.text
    config = tmp_path / "config.yaml"
    config.write_text("engine:\n  segment_seconds: 5\n")
    cli = subprocess.run(
        [sys.executable, "-m", "qasr_live", "transcribe", SAMPLE, "--model", DEMO_MODEL, "--config", config, "-q",
         "--language", "English"],
        capture_output=True, text=True, cwd=ROOT, env=_env(tmp_path), check=True,
    )  # fmt: skip
    # a pipe gets one line per segment, as it is decoded
    assert cli.stdout.splitlines() == [s.text for s in from_file.segments if s.text]


def test_stream_yields_the_segments_of_transcribe(engine):
    whole = engine.transcribe(SAMPLE)
    streamed = engine.stream(SAMPLE)
    first = next(streamed)
    assert first == whole.segments[0]  # the first segment comes before the rest is decoded
    assert [first, *streamed] == whole.segments


def test_cut_keeps_times_of_the_input(engine):
    part = engine.transcribe(SAMPLE, start=2.0, duration=4.0)
    assert part.segments[0].start == pytest.approx(2.0) and part.segments[-1].end == pytest.approx(6.0)
    assert part.stats.audio_seconds == pytest.approx(4.0)
    rate, pcm = wavfile.read(SAMPLE)
    from_array = engine.transcribe(pcm, sample_rate=rate, start=2.0, duration=4.0)
    assert from_array.text == part.text and from_array.segments[0].start == pytest.approx(2.0)


def test_errors_are_one_line_qasr_errors(engine, tmp_path):
    cases = [
        (lambda: engine.transcribe(SAMPLE, timestamps=True), ConfigError, "aligner"),
        (lambda: engine.transcribe(SAMPLE, start=100), AudioError, "beyond the end"),
        (lambda: engine.transcribe(SAMPLE, duration=-1), AudioError, "--duration -1"),
        (lambda: engine.transcribe(tmp_path / "missing.wav"), AudioError, "no such file"),
        (lambda: engine.transcribe(np.zeros((2, 100), np.float32)), QasrError, "mono"),
        (lambda: engine.transcribe(np.zeros(100, np.float32), start=5), QasrError, "beyond the end"),
        (lambda: engine.transcribe(SAMPLE, language="Klingon"), ConfigError, "Klingon"),
        (lambda: qasr_live.Engine(DEMO_MODEL, device="tpu"), ConfigError, "unknown device"),
        (lambda: qasr_live.Engine(tmp_path / "nope"), QasrError, "nope"),
    ]
    for call, kind, part in cases:
        with pytest.raises(kind) as exc:
            call()
        assert part in str(exc.value) and "\n" not in str(exc.value)


def test_close_and_context_manager():
    e = qasr_live.Engine(DEMO_MODEL)
    assert "open" in repr(e)
    e.close()
    e.close()  # twice is fine
    with pytest.raises(QasrError, match="closed"):
        e.transcribe(SAMPLE)
    with qasr_live.Engine(DEMO_MODEL) as inner:
        assert inner.transcribe(SAMPLE).text
    with pytest.raises(QasrError, match="closed"):
        inner.transcribe(SAMPLE)


def test_import_stays_light():
    code = (
        "import sys, qasr_live; heavy = [m for m in ('numpy', 'onnxruntime', 'llama_cpp', 'qasr_live.api') "
        "if m in sys.modules]; print(heavy); from qasr_live import Engine, Transcript, Segment, Word; "
        "print(Engine.__name__, Transcript.__name__, Segment.__name__, Word.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.splitlines() == ["[]", "Engine Transcript Segment Word"]
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        qasr_live.Nope  # noqa: B018


def _examples() -> list[str]:
    text = (ROOT / "docs" / "api.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_docs_have_examples():
    assert len(_examples()) >= 4


@pytest.mark.parametrize("index", range(len(_examples())))
def test_docs_example_runs(index, tmp_path):
    code = _examples()[index]
    shutil.copy(SAMPLE, tmp_path / "speech.wav")
    script = tmp_path / "example.py"
    script.write_text(code)
    env = _env(tmp_path)
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "every example prints something"
    assert "Traceback" not in proc.stderr
