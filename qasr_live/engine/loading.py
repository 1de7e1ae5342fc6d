"""Opening the decoder the way both the offline pipeline and the streaming recognizer drive it: configured from
`engine`, checked for the special tokens the prompt uses, its stop tokens, and the shortest clip the model is
given."""

from __future__ import annotations

from qasr_live.config import EngineConfig
from qasr_live.engine.decoder import Decoder
from qasr_live.engine.features import feature_output_length
from qasr_live.engine.model_dir import ModelDir
from qasr_live.engine.prompt import ASR_TEXT

MIN_SECONDS = 0.5  # the official pipeline zero-pads shorter clips to this length
# Sizing the context from the need (engine.n_ctx null). The KV cache is allocated and zeroed whole at load time, so
# every unused position is resident memory (0.6B: 112 KB each, 230 MB at 2048).
PROMPT_TOKENS = 64  # chat markers, language header and a short recognition.context; longer ones drop memory
TEXT_TOKENS_PER_SECOND = 6  # transcript tokens per second of speech, with margin (fast speech is 3-5)
MIN_N_CTX = 512
DEFAULT_N_CTX = 2048  # offline and other callers that do not size their context
N_CTX_STEP = 256


def context_size(engine: EngineConfig, *, memory_tokens: int, answer_tokens: int | None = None) -> int:
    """The decoder context for prompts of `memory_tokens` earlier positions plus one `engine.segment_seconds`
    clip (its audio rows and their text), and room to generate: `answer_tokens`, else the streaming recognizer's
    reserve (n_ctx / 8, see StreamingRecognizer._overhead). `engine.n_ctx` when set; a prompt that outgrows the
    computed size is handled as any full context is (memory dropped first, then the clip rolled over)."""
    if engine.n_ctx:
        return engine.n_ctx
    clip = feature_output_length(int(engine.segment_seconds * 100)) + int(
        engine.segment_seconds * TEXT_TOKENS_PER_SECOND
    )
    base = PROMPT_TOKENS + memory_tokens + clip
    room = answer_tokens if answer_tokens is not None else -(-base // 7)  # n >= base + n/8  <=>  n >= base * 8/7
    need = base + min(engine.max_new_tokens, room)
    return max(MIN_N_CTX, -(-need // N_CTX_STEP) * N_CTX_STEP)


def open_decoder(
    model: ModelDir,
    engine: EngineConfig,
    *,
    n_ctx: int | None = None,
    words_only: bool = False,
    spare_sequence: bool = False,
) -> Decoder:
    """The model's decoder as `engine` configures it, checked (at load time, not mid-file) to know the tokens the
    prompt uses. `n_ctx`: the context (context_size); None = `engine.n_ctx`, else DEFAULT_N_CTX (offline segments
    hold the previous segment as memory and a whole answer). `words_only`: sample only whole words (benchmarks
    that force the answer length: random weights then answer words, as speech would be). `spare_sequence`: the
    decoder can park KV entries (Decoder.park; the streaming recognizer's memory text)."""
    decoder = Decoder(
        model.decoder,
        n_ctx=n_ctx if n_ctx is not None else engine.n_ctx or DEFAULT_N_CTX,
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
        spare_sequence=spare_sequence,
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
