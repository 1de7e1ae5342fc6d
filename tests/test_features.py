"""Mel features against the official WhisperFeatureExtractor, and the encoder length formula."""

import numpy as np
import pytest
import transformers

from qasr_live.engine.features import feature_output_length, log_mel


@pytest.fixture(scope="module")
def whisper():
    return transformers.WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, n_fft=400)


def reference(whisper, audio):
    out = whisper(audio, sampling_rate=16000, padding=True, truncation=False, return_attention_mask=True)
    n = int(out["attention_mask"].sum())
    return out["input_features"][0][:, :n]


rng = np.random.default_rng(0)
CASES = {
    "random": rng.standard_normal(16000 * 3).astype(np.float32) * 0.1,
    "silence": np.zeros(16000, dtype=np.float32),
    "clipped": np.clip(rng.standard_normal(12345).astype(np.float32) * 3.0, -1, 1),
    "odd_length": (np.sin(np.arange(16000 * 2 + 77) * 0.05) * 0.5).astype(np.float32),
    "tiny_level": rng.standard_normal(9999).astype(np.float32) * 1e-6,
    "long": rng.standard_normal(16000 * 12 + 159).astype(np.float32) * 0.3,
}


@pytest.mark.parametrize("name", CASES)
def test_log_mel_matches_whisper_feature_extractor(whisper, name):
    audio = CASES[name]
    ours = log_mel(audio)
    ref = reference(whisper, audio)
    assert ours.shape == ref.shape == (128, len(audio) // 160)
    assert np.max(np.abs(ours - ref)) <= 1e-4


def test_output_length_formula_known_values():
    known = {0: 0, 1: 1, 50: 7, 99: 13, 100: 13, 101: 14, 250: 33, 400: 52, 4000: 520}
    assert {n: feature_output_length(n) for n in known} == known
