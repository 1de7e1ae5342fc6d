"""Qwen3-ForcedAligner: export, runtime and parity with the official aligner on tiny random checkpoints.

The checkpoints are built with the official classes (devkit/random_aligner.py), exported by our exporter, and
run by `qasr_live.engine.aligner.Aligner` (ONNX encoder, llama.cpp decoder in embeddings mode, numpy head). The
reference is the official `Qwen3ForcedAligner` (transformers, fp32, CPU) with its audio tower honouring the 8 s
windows it was trained with (devkit.reference.windowed_attention: the CPU path ignores them).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile

from devkit.random_aligner import TINY_ALIGNER_SPECS, build_random_aligner
from qasr_live.config import AppConfig
from qasr_live.engine.align_text import display_words, fix_timestamps, split_words
from qasr_live.engine.aligner import Aligner
from qasr_live.engine.model_dir import open_model_dir
from qasr_live.errors import AlignmentError, ModelError
from qasr_live.model_store import DEMO_MODEL

TEXTS = [
    ("English", "The quick brown fox jumps over the lazy dog."),
    ("English", "Hello world, new line, comma, period, question mark! Meeting notes for Monday at 10:30 am."),
    ("Chinese", "你好世界，这是一个测试。语音识别把说话变成文字。"),
    ("Chinese", "不能算是，我们今天讨论的问题"),
    ("English", "Speech recognition turns spoken words into written text; it's fast and accurate."),
    ("Chinese", "语音识别 qasr-live 和 llama.cpp 一起工作"),
]
# (seconds, signal seed): all but two longer than one 8 s encoder window
DURATIONS = [
    (9.4, 0),
    (12.5, 1),
    (15.3, 2),
    (8.6, 3),
    (21.0, 4),
    (10.6, 5),
    (4.2, 6),
    (18.2, 7),
    (24.0, 8),
    (6.5, 9),
    (13.7, 10),
]


def make_audio(seconds: float, seed: int) -> np.ndarray:
    """Noise, chirps and modulated tones: varied audio rows, so the times vary."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    x = rng.standard_normal(t.size) * rng.uniform(0.02, 0.2)
    x += 0.3 * np.sin(2 * np.pi * (200 + 400 * t / seconds) * t) * (np.sin(2 * np.pi * 0.3 * t) > 0)
    return x.astype(np.float32)


def cases():
    """11 per checkpoint, 22 in all: every text with several durations."""
    for i, (seconds, seed) in enumerate(DURATIONS):
        language, text = TEXTS[i % len(TEXTS)]
        yield language, text, seconds, seed


@pytest.fixture(scope="session")
def aligner_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("aligner_checkpoints")
    return {name: build_random_aligner(root / name, spec) for name, spec in TINY_ALIGNER_SPECS.items()}


@pytest.fixture(scope="session")
def aligner_models(aligner_checkpoints, tmp_path_factory) -> dict[str, Path]:
    from qasr_live.export.exporter import export_checkpoint

    root = tmp_path_factory.mktemp("aligner_models")
    return {
        name: export_checkpoint(src, root / name, ("fp32",), ("f32", "q8_0"), progress=lambda _line: None)
        for name, src in aligner_checkpoints.items()
    }


def official(src: Path):
    import torch
    from qwen_asr import Qwen3ForcedAligner

    return Qwen3ForcedAligner.from_pretrained(str(src), dtype=torch.float32)


def official_run(ref, audio: np.ndarray, text: str, language: str) -> tuple[list[int], list[tuple[str, float, float]]]:
    """The official raw classes (argmax at the <timestamp> positions) and its final aligned items."""
    import torch

    from devkit.reference import windowed_attention

    _, prompt = ref.aligner_processor.encode_timestamp(text, language)
    inputs = ref.processor(text=[prompt], audio=[audio], return_tensors="pt", padding=True)
    with windowed_attention(), torch.no_grad():
        logits = ref.model.thinker(**inputs).logits
        items = ref.align(audio=(audio, 16000), text=text, language=language)[0].items
    raw = logits[0][inputs["input_ids"][0] == ref.timestamp_token_id].argmax(-1).tolist()
    return raw, [(i.text, i.start_time, i.end_time) for i in items]


@pytest.fixture(scope="module")
def references(aligner_checkpoints):
    table = {}
    for name, src in aligner_checkpoints.items():
        ref = official(src)
        table[name] = [(case, official_run(ref, make_audio(case[2], case[3]), case[1], case[0])) for case in cases()]
    return table


def test_export_writes_an_aligner_model(aligner_models):
    for model_dir in aligner_models.values():
        model = open_model_dir(model_dir, "fp32", "f32")
        assert model.kind == "qwen3-forced-aligner" and model.classifier is not None
        assert model.manifest["aligner"]["classify_num"] == np.load(model.classifier).shape[0]


def test_timestamps_equal_official_aligner(aligner_models, references, report):
    total = exact = repaired = 0
    worst = 0.0
    for name, model_dir in aligner_models.items():
        with Aligner(open_model_dir(model_dir, "fp32", "f32")) as aligner:
            for (language, text, seconds, seed), (ref_raw, ref_items) in references[name]:
                audio = make_audio(seconds, seed)
                words, raw = aligner.slots(audio, text, language)
                ours = [(w.text, w.start, w.end) for w in aligner.align(audio, text, language)]
                total += 1
                repaired += any(b < a for a, b in itertools.pairwise(raw))
                assert words == [t for t, _, _ in ref_items]
                assert raw == ref_raw, (name, text, seconds)
                worst = max(
                    worst, *(abs(a[k] - b[k]) / 0.08 for a, b in zip(ours, ref_items, strict=True) for k in (1, 2))
                )
                exact += ours == ref_items
    report(
        f"aligner parity (f32 decoder, fp32 encoder): {exact}/{total} cases exact, {repaired} repaired "
        f"(non-monotonic raw times), max difference {worst:.3f} steps of 80 ms"
    )
    assert total >= 20 and exact == total
    assert repaired >= 5  # the random heads answer out of order: the repair is exercised, not just the argmax


def test_quantized_decoder_agreement_is_reported(aligner_models, references, report):
    steps = []
    for name, model_dir in aligner_models.items():
        with Aligner(open_model_dir(model_dir, "fp32", "q8_0")) as aligner:
            for (language, text, seconds, seed), (ref_raw, _) in references[name]:
                _, raw = aligner.slots(make_audio(seconds, seed), text, language)
                steps += [abs(a - b) for a, b in zip(raw, ref_raw, strict=True)]
    same = sum(s == 0 for s in steps)
    report(f"aligner q8_0 decoder: {same}/{len(steps)} raw slots identical, max difference {max(steps)} steps")
    assert same / len(steps) >= 0.5


TEXT_CASES = [
    "Hello, world! It's 3.5 percent.",
    "你好，世界。不能算是",
    "mixed中文words and 英文 together",
    "“Quoted” text -- with dashes... and   spaces",
    "l'homme qu'il a vu, c'était à Paris",
    "Straße über Öl; naïve café",
    "123 456 seven",
    "！？。，",
    "",
]


@pytest.mark.parametrize("text", TEXT_CASES)
def test_words_equal_official_processor(text):
    from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForceAlignProcessor

    assert split_words(text, "English") == Qwen3ForceAlignProcessor().tokenize_space_lang(text)
    shown = display_words(text)
    assert len(shown) == len(split_words(text))
    if shown:  # punctuation put back, nothing lost
        assert "".join(shown).replace(" ", "") == "".join(text.split())


def test_repair_equals_official_fix_timestamp():
    from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForceAlignProcessor

    official_fix = Qwen3ForceAlignProcessor().fix_timestamp
    rng = np.random.default_rng(0)
    for n in range(1, 200):
        length = int(rng.integers(1, 40))
        values = np.sort(rng.integers(0, 300, length)) * 80.0
        swaps = int(rng.integers(0, length))  # from sorted to badly shuffled
        for _ in range(swaps):
            i, j = rng.integers(0, length, 2)
            values[i], values[j] = values[j], values[i]
        assert fix_timestamps(values.tolist()) == official_fix(values), n


def test_bad_text_and_audio_are_one_line_each(aligner_models):
    with Aligner(open_model_dir(aligner_models["aligner_mha"], "fp32", "f32")) as aligner:
        for text, audio, part in [
            ("", make_audio(2.0, 0), "nothing to align"),
            ("！？。", make_audio(2.0, 0), "no letters or digits"),
            (" ".join(["word"] * 30), make_audio(1.0, 0), "30 words but the audio lasts 1.00 s"),
            ("far too long", np.zeros(16000 * 26, dtype=np.float32), "at most 25.6 s"),
        ]:
            with pytest.raises(AlignmentError, match=part) as info:
                aligner.align(audio, text, "English")
            assert "\n" not in str(info.value)


def test_kinds_are_not_confused(aligner_models, tiny_models):
    with pytest.raises(ModelError, match="speech recognition model, not a Qwen3-ForcedAligner"):
        Aligner(open_model_dir(tiny_models["tied"]))


# --- the CLI -----------------------------------------------------------------------------------------------


def qasr(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "qasr_live", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def speech_file(tmp_path_factory) -> Path:
    """The embedded demo model's sample (8.6 s of synthetic speech), which the demo model transcribes."""
    path = tmp_path_factory.mktemp("aligner_cli") / "talk.wav"
    shutil.copy(DEMO_MODEL / "sample.wav", path)
    return path


def test_transcribe_timestamps_writes_words(aligner_models, tiny_models, speech_file, tmp_path):
    out = tmp_path / "out"
    proc = qasr(
        "transcribe",
        str(speech_file),
        "--model",
        str(DEMO_MODEL),
        "--timestamps",
        "--aligner",
        str(aligner_models["aligner_mha"]),
        "--format",
        "json,srt,vtt",
        "--out-dir",
        str(out),
        "-q",
        "--line-chars",
        "16",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "talk.json").read_text())
    segments = [s for s in doc["segments"] if split_words(s["text"])]
    assert segments, doc
    for seg in segments:
        assert [w["text"] for w in seg["words"]] == display_words(seg["text"])
        starts = [w["start"] for w in seg["words"]]
        assert starts == sorted(starts) and all(w["start"] <= w["end"] for w in seg["words"])
    srt = (out / "talk.srt").read_text()
    vtt = (out / "talk.vtt").read_text()
    assert vtt.startswith("WEBVTT\n\n") and "-->" in vtt
    lines = [line for line in srt.splitlines() if line and "-->" not in line and not line.isdigit()]
    assert all(len(line) <= 16 or " " not in line for line in lines)  # a longer line is a single word
    first_word = segments[0]["words"][0]
    assert f"{int(first_word['start'] // 60):02d}:" in srt.split("\n")[1]


def test_timestamps_without_aligner_is_refused(tiny_models, speech_file, tmp_path):
    proc = qasr(
        "transcribe",
        str(speech_file),
        "--model",
        str(tiny_models["tied"]),
        "--timestamps",
        "--format",
        "srt",
        "--out-dir",
        str(tmp_path),
        "-q",
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "needs a Qwen3-ForcedAligner" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_subtitles_without_aligner_say_so_once(tiny_models, speech_file, tmp_path):
    proc = qasr(
        "transcribe",
        str(speech_file),
        "--model",
        str(tiny_models["tied"]),
        "--format",
        "srt,vtt",
        "--out-dir",
        str(tmp_path),
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("no word times") == 1
    assert (tmp_path / "talk.srt").exists() and (tmp_path / "talk.vtt").exists()


def test_wrong_kinds_of_model_are_one_line_each(aligner_models, tiny_models, speech_file, tmp_path):
    swapped = qasr("transcribe", str(speech_file), "--model", str(aligner_models["aligner_mha"]), "-q")
    assert swapped.returncode == 3 and "a Qwen3-ForcedAligner (it times text, it cannot transcribe)" in swapped.stderr
    asr_as_aligner = qasr(
        "transcribe",
        str(speech_file),
        "--model",
        str(tiny_models["tied"]),
        "--timestamps",
        "--aligner",
        str(tiny_models["tied"]),
        "-q",
    )
    assert asr_as_aligner.returncode == 3 and "not a Qwen3-ForcedAligner" in asr_as_aligner.stderr
    for proc in (swapped, asr_as_aligner):
        assert proc.stderr.strip().count("\n") == 0, proc.stderr


# --- live captions -----------------------------------------------------------------------------------------


def test_daemon_publishes_word_times_after_each_utterance(aligner_models, tmp_path):
    """Continuous mode over a recording with recognition.timestamps: every utterance with text gets one
    utterance_words event after its utterance_end, its words those of its commits, its times on the session
    clock inside the utterance's audio; utterance_end carries the language."""
    from devkit.daemon_checks import commits_by_utterance
    from devkit.daemon_harness import RunningDaemon, write_config
    from qasr_live.audio.files import load_audio

    speech = load_audio(DEMO_MODEL / "sample.wav")
    pcm = (np.concatenate([np.zeros(8000), speech, np.zeros(24000), speech, np.zeros(16000)]) * 32767).astype(np.int16)
    wav = tmp_path / "replay.wav"
    scipy.io.wavfile.write(wav, 16000, pcm)
    config = write_config(
        tmp_path / "config.yaml",
        DEMO_MODEL,
        tmp_path,
        model={"aligner": str(aligner_models["aligner_mha"])},
        recognition={"timestamps": True},
        audio={"source": str(wav)},
        trigger={"mode": "continuous"},
        typing={"enabled": False},
        hotkeys={"enabled": False},
    )
    daemon = RunningDaemon(config, tmp_path)
    client = daemon.subscribe(since_seq=0)
    try:
        assert daemon.proc.wait(120) == 0, daemon.log()
        time.sleep(0.3)
    finally:
        client.close()
        daemon.stop()
    events = client.events
    commits = commits_by_utterance(events)
    assert len(commits) >= 2, [e["type"] for e in events]  # VAD cuts at the pauses between sentences
    starts = {e["utterance_id"]: e["audio_start"] for e in events if e["type"] == "utterance_start"}
    ends = {e["utterance_id"]: (i, e) for i, e in enumerate(events) if e["type"] == "utterance_end"}
    words = [(i, e) for i, e in enumerate(events) if e["type"] == "utterance_words"]
    assert sorted(e["utterance_id"] for _, e in words) == sorted(commits)
    for i, e in words:
        end_index, end = ends[e["utterance_id"]]
        assert i > end_index  # after the utterance ended: the aligner never holds up its commits
        assert end["language"] == e["language"]
        assert e["words"] == display_words(commits[e["utterance_id"]].strip())
        lo = starts[e["utterance_id"]]
        hi = lo + end["latency"]["audio_ms"] / 1000
        assert all(lo <= a <= b <= hi + 1e-3 for a, b in zip(e["start"], e["end"], strict=True)), (lo, hi, e)
        assert e["start"] == sorted(e["start"]) and e["align_ms"] > 0
    assert "Traceback" not in daemon.log()


def test_example_subscriber_prints_word_times(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "subscriber", Path(__file__).parents[1] / "examples" / "subscriber.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    captions = module.Captions(sys.stdout)
    for event in [
        {"type": "utterance_start", "utterance_id": "u", "audio_start": 12.0},
        {"type": "commit", "utterance_id": "u", "idx": 0, "text": "你好，世界"},
        {"type": "utterance_end", "utterance_id": "u", "reason": "silence", "latency": {}, "language": "Chinese"},
        {
            "type": "utterance_words",
            "utterance_id": "u",
            "language": "Chinese",
            "words": ["你", "好，", "世", "界"],
            "start": [12.0, 12.24, 12.8, 13.04],
            "end": [12.24, 12.56, 13.04, 13.2],
            "align_ms": 12.5,
        },
    ]:
        captions.handle(event)
    out = capsys.readouterr()
    assert "你好，世界" in out.out
    assert "(Chinese) [12.00-12.24] 你 [12.24-12.56] 好， [12.80-13.04] 世 [13.04-13.20] 界" in out.err


def test_timestamps_of_a_cut_stay_file_times(aligner_models, speech_file, tmp_path):
    """`--start` cuts the input: word times still count from the file's start and lie inside the cut."""
    out = tmp_path / "out"
    args = ["--model", str(DEMO_MODEL), "--timestamps", "--aligner", str(aligner_models["aligner_mha"])]
    proc = qasr("transcribe", str(speech_file), *args, "--start", "1.0", "--format", "json", "--out-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "talk.json").read_text())
    words = [w for s in doc["segments"] for w in s["words"]]
    assert words, doc
    assert all(1.0 <= w["start"] <= w["end"] <= doc["segments"][-1]["end"] + 1e-3 for w in words)


def test_python_api_timestamps_match_the_cli(aligner_models, speech_file, tmp_path):
    """`Engine(aligner=...)`: `transcribe(timestamps=True)` gives the words `qasr-live transcribe --timestamps`
    writes; `stream(timestamps=True)` yields segments that already carry their words."""
    from qasr_live import Engine

    aligner = aligner_models["aligner_mha"]
    out = tmp_path / "out"
    proc = qasr(
        "transcribe", str(speech_file), "--model", str(DEMO_MODEL), "--timestamps", "--aligner", str(aligner),
        "--format", "json", "--out-dir", str(out), "-q",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cli_words = [(w["text"], w["start"], w["end"]) for s in json.loads((out / "talk.json").read_text())["segments"]
                 for w in s["words"]]  # fmt: skip
    with Engine(DEMO_MODEL, aligner=aligner, config=AppConfig()) as engine:
        result = engine.transcribe(speech_file, timestamps=True)
        streamed = list(engine.stream(speech_file, timestamps=True))
    api_words = [(w.text, w.start, w.end) for s in result.segments for w in s.words]
    assert api_words == cli_words
    assert any(s.words for s in streamed) and all(s.words or not split_words(s.text) for s in streamed)


def test_python_api_timestamps_without_aligner(tmp_path):
    from qasr_live import Engine
    from qasr_live.errors import ConfigError

    with Engine(DEMO_MODEL, config=AppConfig()) as engine, pytest.raises(ConfigError, match="aligner"):
        engine.transcribe(np.zeros(16000, np.float32), timestamps=True)
