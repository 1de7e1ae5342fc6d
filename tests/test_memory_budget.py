"""The memory settings of issue 24 (docs/performance.md "Memory budget"): the decoder context sized from what a
prompt can need, and the encoder's frontend run one chunk at a time without prepacked weights."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from qasr_live.config import EngineConfig, StreamingConfig
from qasr_live.engine.encoder import AudioEncoder
from qasr_live.engine.features import feature_output_length, log_mel
from qasr_live.engine.loading import MIN_N_CTX, PROMPT_TOKENS, TEXT_TOKENS_PER_SECOND, context_size, open_decoder
from qasr_live.engine.model_dir import encoder_file, open_model_dir
from qasr_live.streaming.recognizer import PARTIAL_MAX_NEW_TOKENS


@pytest.mark.parametrize("segment_seconds", [5.0, 12.5, 30.0, 120.0])
@pytest.mark.parametrize("memory_tokens", [0, 400, 2000])
@pytest.mark.parametrize("max_new_tokens", [16, 512])
def test_context_holds_the_largest_streaming_prompt(segment_seconds, memory_tokens, max_new_tokens) -> None:
    engine = EngineConfig(segment_seconds=segment_seconds, max_new_tokens=max_new_tokens)
    n_ctx = context_size(engine, memory_tokens=memory_tokens)
    clip = feature_output_length(int(segment_seconds * 100)) + int(segment_seconds * TEXT_TOKENS_PER_SECOND)
    # what StreamingRecognizer._overhead reserves to generate, for this very n_ctx
    reserve = min(max_new_tokens, max(PARTIAL_MAX_NEW_TOKENS, n_ctx // 8))
    assert n_ctx >= PROMPT_TOKENS + memory_tokens + clip + reserve
    assert n_ctx >= MIN_N_CTX and n_ctx % 256 == 0
    assert n_ctx - 256 < max(MIN_N_CTX, PROMPT_TOKENS + memory_tokens + clip + max_new_tokens)  # no slack beyond


def test_configured_context_wins_and_defaults_size_the_daemon_below_2048() -> None:
    assert context_size(EngineConfig(n_ctx=4096), memory_tokens=400) == 4096
    daemon = context_size(EngineConfig(), memory_tokens=StreamingConfig().memory_tokens)
    assert daemon < 2048  # the KV cache it replaces: 230 MB at 2048 for the 0.6B model


def test_open_decoder_takes_the_sized_context(tiny_models) -> None:
    model = open_model_dir(tiny_models["tied"], "fp32", "f32")
    engine = EngineConfig(segment_seconds=5.0, max_new_tokens=16)
    n_ctx = context_size(engine, memory_tokens=100)
    with open_decoder(model, engine, n_ctx=n_ctx) as decoder:
        assert decoder.n_ctx == n_ctx
    with open_decoder(model, dataclasses.replace(engine, n_ctx=1024)) as decoder:
        assert decoder.n_ctx == 1024  # offline and other callers: engine.n_ctx, else 2048


def test_int8_frontend_rows_of_a_chunk_do_not_depend_on_its_batch(tiny_models) -> None:
    """The int8 frontend quantizes activations with one scale per run: run together, a loud chunk changed a quiet
    one's rows. One chunk per run: a chunk's rows are the same however the caller batches."""
    model = tiny_models["tied"]
    enc = AudioEncoder(model / encoder_file("frontend", "int8"), model / encoder_file("backend", "int8"))
    rng = np.random.default_rng(7)
    quiet = log_mel((rng.standard_normal(16000) * 0.001).astype(np.float32))[:, :100]
    loud = log_mel((rng.standard_normal(16000) * 0.5).astype(np.float32))[:, :100]
    together = enc.frontend(np.stack([quiet, loud, quiet]))
    alone = enc.frontend(quiet[None])
    assert together.shape == (3, *alone.shape[1:])
    np.testing.assert_array_equal(together[0], alone[0])
    np.testing.assert_array_equal(together[2], alone[0])
    np.testing.assert_array_equal(together[1], enc.frontend(loud[None])[0])
