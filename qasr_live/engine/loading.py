"""Opening the decoder the way both the offline pipeline and the streaming recognizer drive it: configured from
`engine`, checked for the special tokens the prompt uses, its stop tokens, and the shortest clip the model is
given."""

from __future__ import annotations

from qasr_live.config import EngineConfig
from qasr_live.engine.decoder import Decoder
from qasr_live.engine.model_dir import ModelDir
from qasr_live.engine.prompt import ASR_TEXT

MIN_SECONDS = 0.5  # the official pipeline zero-pads shorter clips to this length


def open_decoder(model: ModelDir, engine: EngineConfig, *, words_only: bool = False) -> Decoder:
    """The model's decoder as `engine` configures it, checked (at load time, not mid-file) to know the tokens the
    prompt uses. `words_only`: sample only whole words (benchmarks that force the answer length: random weights
    then answer words, as speech would be)."""
    decoder = Decoder(
        model.decoder,
        n_ctx=engine.n_ctx,
        n_batch=engine.n_batch,
        threads=engine.decoder_threads,
        n_gpu_layers=engine.n_gpu_layers,
        gpu=engine.gpu,
        gpu_device=engine.gpu_device,
        kv_cache_type=engine.kv_cache_type,
        flash_attention=engine.flash_attention,
        temperature=engine.temperature,
        seed=engine.seed,
        repack=engine.repack_weights,
    )
    try:
        if words_only:
            decoder.only_sample({t for t in range(decoder.n_vocab) if _is_word(decoder.piece(t))})
        for name in (ASR_TEXT, "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|audio_start|>", "<|audio_end|>"):
            decoder.token_id(name)
    except BaseException:  # the native decoder is freed before the error goes on
        decoder.close()
        raise
    return decoder


def _is_word(piece: bytes) -> bool:
    """A whole English-like word with its leading space (b" hello"): what forced answers are made of, so that
    random-weight models commit text at word boundaries as real transcripts do."""
    return len(piece) > 2 and piece[:1] == b" " and piece[1:].isalpha()


def stop_ids(decoder: Decoder) -> set[int]:
    """The tokens that end an answer."""
    return {decoder.token_id("<|im_end|>"), decoder.token_id("<|endoftext|>")}
