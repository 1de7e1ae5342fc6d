"""The official implementation as the reference: loading, windowed attention, greedy generation."""

from __future__ import annotations

import contextlib
from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=8)
def load_reference(src: str):
    from qwen_asr.core.transformers_backend import Qwen3ASRForConditionalGeneration, Qwen3ASRProcessor

    model = Qwen3ASRForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
    return model, Qwen3ASRProcessor.from_pretrained(src)


@contextlib.contextmanager
def windowed_attention():
    """Make the official audio tower honour its 8 s windows on the CPU.

    The tower computes `cu_seqlens` for 104-row windows, but only FlashAttention-2 reads them; the eager/sdpa
    path attends across the whole input (QwenLM/Qwen3-ASR#213). This passes the block-diagonal mask built from
    those same `cu_seqlens` (what the official `_prepare_attention_mask` would build), so the reference is the
    model as trained.
    """
    from qwen_asr.core.transformers_backend import modeling_qwen3_asr as official

    original = official.Qwen3ASRAudioAttention.forward

    def forward(self, hidden_states, cu_seqlens=None, attention_mask=None, **kwargs):
        if attention_mask is None and cu_seqlens is not None:
            n = hidden_states.shape[0]
            attention_mask = torch.full((1, 1, n, n), torch.finfo(hidden_states.dtype).min)
            for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True):
                attention_mask[..., a:b, a:b] = 0
        return original(self, hidden_states, cu_seqlens, attention_mask, **kwargs)

    official.Qwen3ASRAudioAttention.forward = forward
    try:
        yield
    finally:
        official.Qwen3ASRAudioAttention.forward = original


def reference_prompt(processor, context: str, language: str | None) -> str:
    """Exactly what the official `Qwen3ASRModel._build_text_prompt` builds."""
    messages = [
        {"role": "system", "content": context or ""},
        {"role": "user", "content": [{"type": "audio", "audio": ""}]},
    ]
    base = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return base + (f"language {language}<asr_text>" if language else "")


def reference_generate(
    src: str, audio: np.ndarray, context: str = "", language: str | None = None, max_new_tokens: int = 24
) -> list[int]:
    """Greedy token ids of the official model (windowed encoder attention), stop tokens removed."""
    model, processor = load_reference(src)
    tok = processor.tokenizer
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    inputs = processor(
        text=[reference_prompt(processor, context, language)], audio=[audio], return_tensors="pt", padding=True
    )
    with windowed_attention(), torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=max_new_tokens, eos_token_id=eos, do_sample=False, pad_token_id=eos[1]
        )
    ids = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    return [t for t in ids if t not in eos]


def reference_audio_rows(src: str, mel: np.ndarray, windowed: bool = True) -> np.ndarray:
    model, _ = load_reference(src)
    tower = model.thinker.audio_tower
    ctx = windowed_attention() if windowed else contextlib.nullcontext()
    with ctx, torch.no_grad():
        out = tower(torch.from_numpy(mel), feature_lens=torch.tensor([mel.shape[1]]))
    return out.last_hidden_state.numpy()
