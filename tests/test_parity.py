"""Parity with the official implementation on random-weight checkpoints of the real architecture.

The tiny checkpoints are built with the official `qwen-asr` classes and exported with our exporter. The
reference is the official model's greedy `generate` (transformers, fp32, CPU), with its audio tower made to
honour the 8 s attention windows it computes but ignores on the CPU (see reference.windowed_attention).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile

from devkit.random_checkpoint import TINY_SPECS
from devkit.reference import reference_audio_rows, reference_generate
from qasr_live.engine.encoder import AudioEncoder
from qasr_live.engine.features import log_mel
from qasr_live.engine.model_dir import encoder_file

MAX_NEW_TOKENS = 24
# (language, context) per CLI run; three audio files each -> 12 cases per checkpoint, 24 in all.
OPTION_SETS = [
    (None, ""),
    (None, "Meeting notes: qasr-live, llama.cpp and ONNX."),
    ("English", ""),
    ("Chinese", "会议记录"),
]
DURATIONS = [0.6, 2.3, 9.4, 1.0, 5.0, 12.5, 3.7, 7.9, 15.3, 8.0, 4.2, 10.6]  # seconds; five are > 8 s


def make_audio(seconds: float, seed: int) -> np.ndarray:
    """Varied non-trivial signals: noise, chirps and amplitude-modulated tones at different levels."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    kind = seed % 3
    if kind == 0:
        x = rng.standard_normal(t.size) * rng.uniform(0.02, 0.3)
    elif kind == 1:
        x = 0.3 * np.sin(2 * np.pi * (200 + 600 * t / max(seconds, 1)) * t)
    else:
        x = 0.2 * np.sin(2 * np.pi * 330 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
        x += rng.standard_normal(t.size) * 0.01
    return x.astype(np.float32)


def cases():
    for k, (language, context) in enumerate(OPTION_SETS):
        yield language, context, [(3 * k + j, DURATIONS[3 * k + j]) for j in range(3)]


def run_cli(
    model: Path,
    files: list[Path],
    out_dir: Path,
    language,
    context,
    decoder: str,
    encoder: str,
    kv_cache_type: str = "f32",
) -> list[dict]:
    config = out_dir / f"config-{decoder}-{kv_cache_type}.yaml"
    config.write_text(
        f"model:\n  encoder_precision: {encoder}\n  decoder_precision: {decoder}\n"
        f"engine:\n  kv_cache_type: {kv_cache_type}\n  repetition_guard: false\n  max_new_tokens: {MAX_NEW_TOKENS}\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "qasr_live",
        "transcribe",
        *map(str, files),
        "--model",
        str(model),
        "--config",
        str(config),
        "--format",
        "json",
        "--out-dir",
        str(out_dir),
        "-q",
    ]
    if language:
        cmd += ["--language", language]
    if context:
        cmd += ["--context", context]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [json.loads((out_dir / f"{f.stem}.json").read_text()) for f in files]


@pytest.fixture(scope="module")
def references(tiny_checkpoints, tmp_path_factory):
    """Per checkpoint: the audio files and the official greedy ids of every case."""
    return reference_table(tiny_checkpoints, tmp_path_factory.mktemp("parity_audio"))


def reference_table(checkpoints: dict[str, Path], root: Path) -> dict[str, list]:
    """Per checkpoint, per case group: (language, context, the cases' WAV files in `root`, official greedy ids)."""
    table = {}
    for name, src in checkpoints.items():
        rows = []
        for language, context, items in cases():
            files, refs = [], []
            for seed, seconds in items:
                audio = make_audio(seconds, seed)
                path = root / f"{name}-{seed}.wav"
                scipy.io.wavfile.write(path, 16000, audio)
                files.append(path)
                refs.append(reference_generate(str(src), audio, context, language, MAX_NEW_TOKENS))
            rows.append((language, context, files, refs))
        table[name] = rows
    return table


def agreement(tiny_models, references, tmp_path, decoder, encoder, kv_cache_type="f32"):
    """(cases, identical cases, mean common prefix / reference length) over all checkpoints and cases."""
    total = same = 0
    prefix_ratio = []
    mismatches = []
    for name, model in tiny_models.items():
        for language, context, files, refs in references[name]:
            results = run_cli(model, files, tmp_path, language, context, decoder, encoder, kv_cache_type)
            for path, result, ref in zip(files, results, refs, strict=True):
                ours = result["token_ids"]
                total += 1
                same += ours == ref
                common = next(
                    (i for i, (a, b) in enumerate(zip(ours, ref, strict=False)) if a != b), min(len(ours), len(ref))
                )
                prefix_ratio.append(common / max(1, len(ref)))
                if ours != ref:
                    mismatches.append(f"{path.name} lang={language} ctx={bool(context)}: ours {ours} ref {ref}")
    return total, same, float(np.mean(prefix_ratio)), mismatches


@pytest.mark.parametrize("decoder", ["f32", "f16"])
def test_greedy_token_ids_identical_to_official(tiny_models, references, tmp_path, decoder, report):
    total, same, _, mismatches = agreement(tiny_models, references, tmp_path, decoder, "fp32")
    report(f"greedy ids, decoder {decoder} + encoder fp32 (kv f32): {same}/{total} cases identical")
    assert total >= 20
    assert same == total, "\n".join(mismatches)


@pytest.mark.parametrize(("decoder", "encoder", "kv"), [("f16", "fp32", "f16"), ("q8_0", "int8", "f16")])
def test_quantized_agreement_is_reported(tiny_models, references, tmp_path, decoder, encoder, kv, report):
    total, same, prefix, _ = agreement(tiny_models, references, tmp_path, decoder, encoder, kv)
    report(
        f"greedy ids, decoder {decoder} + encoder {encoder} (kv {kv}): {same}/{total} identical, "
        f"mean common prefix {100 * prefix:.0f}% of the reference"
    )
    assert total >= 20
    # Random weights give near-tied logits, so quantization may flip late tokens; most early tokens must hold.
    assert prefix >= 0.3


def test_prompt_ids_equal_official_processor(tiny_checkpoints, tiny_models):
    """The prompt around the audio rows, tokenized by llama.cpp from the GGUF, equals the official input ids."""
    from devkit.reference import load_reference, reference_prompt
    from qasr_live.engine.decoder import Decoder
    from qasr_live.engine.prompt import prompt_head, prompt_tail

    for name, src in tiny_checkpoints.items():
        _, processor = load_reference(str(src))
        audio_id = processor.tokenizer.convert_tokens_to_ids("<|audio_pad|>")
        with Decoder(tiny_models[name] / "decoder.f32.gguf", n_ctx=512) as decoder:
            for language, context in OPTION_SETS:
                ids = processor(
                    text=[reference_prompt(processor, context, language)], audio=[np.zeros(16000)], return_tensors="np"
                )["input_ids"][0].tolist()
                first, last = ids.index(audio_id), len(ids) - ids[::-1].index(audio_id)
                assert decoder.tokenize(prompt_head(context)) == ids[:first]
                assert decoder.tokenize(prompt_tail(language)) == ids[last:]


@pytest.mark.parametrize("seconds", [0.37, 1.0, 3.3, 7.99, 8.0, 8.5, 17.3, 31.0])
def test_encoder_rows_match_official_tower(tiny_checkpoints, tiny_models, seconds, report):
    for name, src in tiny_checkpoints.items():
        audio = make_audio(seconds, int(seconds * 10))
        mel = log_mel(audio)
        model = tiny_models[name]
        ours = AudioEncoder(model / encoder_file("frontend", "fp32"), model / encoder_file("backend", "fp32"))
        rows = ours.encode(mel)
        # Up to 8 s there is one window, so the unmodified official tower is the reference; beyond, the
        # reference is the official tower evaluated window by window.
        ref = reference_audio_rows(str(src), mel, windowed=seconds > 8)
        assert rows.shape == ref.shape
        cos = np.sum(rows * ref, -1) / np.linalg.norm(rows, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert cos.min() >= 0.9999, (name, seconds, cos.min())
        int8 = AudioEncoder(model / encoder_file("frontend", "int8"), model / encoder_file("backend", "int8"))
        cos8 = (
            np.sum(int8.encode(mel) * ref, -1)
            / np.linalg.norm(int8.encode(mel), axis=-1)
            / np.linalg.norm(ref, axis=-1)
        )
        report(f"encoder {name} {seconds:5.2f} s: fp32 min cosine {cos.min():.7f}, int8 min cosine {cos8.min():.5f}")


def test_windows_matter_beyond_8_seconds(tiny_checkpoints, tiny_models):
    """Guards the test above: past 8 s our rows are far closer to the windowed reference than to the official
    full-attention rows, so matching the windowed reference really checks the windows."""
    for name, src in tiny_checkpoints.items():
        mel = log_mel(make_audio(12.0, 3))
        model = tiny_models[name]
        encoder = AudioEncoder(model / encoder_file("frontend", "fp32"), model / encoder_file("backend", "fp32"))
        rows = encoder.encode(mel)
        err_windowed = np.abs(rows - reference_audio_rows(str(src), mel, windowed=True)).max()
        err_full = np.abs(rows - reference_audio_rows(str(src), mel, windowed=False)).max()
        assert err_full > 100 * err_windowed, (name, err_full, err_windowed)


def test_specs_cover_tied_and_untied():
    assert {s.tie_word_embeddings for s in TINY_SPECS.values()} == {True, False}
