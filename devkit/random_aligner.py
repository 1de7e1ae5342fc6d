"""Random-weight Qwen3-ForcedAligner checkpoints, built with the official `qwen-asr` classes.

The aligner is a Qwen3-ASR thinker whose output head is a classifier over `classify_num` timestamp slots of
`timestamp_segment_time` ms (80) instead of the vocabulary (official `Qwen3ASRThinkerForConditionalGeneration`:
`"forced_aligner" in config.model_type` -> `lm_head = Linear(hidden, classify_num)`). Its config.json is what the
real Qwen3-ForcedAligner-0.6B ships: `thinker_config.model_type = "qwen3_forced_aligner"`, `classify_num`, and
`timestamp_token_id` / `timestamp_segment_time` at the top level. Dev-only (torch, transformers, qwen-asr).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from devkit.random_checkpoint import TINY_SPECS, RandomModelSpec, build_random_checkpoint
from qasr_live.engine.prompt import TIMESTAMP

ALIGNER_MODEL_TYPE = "qwen3_forced_aligner"
SEGMENT_MS = 80

# The real Qwen3-ForcedAligner-0.6B (engine.md 2.2): a 1024-wide, 24-layer audio tower, the 0.6B text model,
# 152064 embedding rows, a 5000-slot classifier (400 s of 80 ms slots).
QWEN3_ALIGNER_0_6B = RandomModelSpec(
    qwen_vocab=True,
    audio_d_model=1024,
    audio_layers=24,
    audio_heads=16,
    audio_ffn=4096,
    downsample_hidden=480,
    text_hidden=1024,
    text_layers=28,
    text_heads=16,
    text_kv_heads=8,
    head_dim=128,
    text_ffn=3072,
    tie_word_embeddings=False,
    vocab_size=152064,
)
REAL_CLASSIFY_NUM = 5000

# Tiny aligners for the parity tests. Random heads give near-uniform scores whose argmax flips under any rounding
# of f32 vs llama.cpp: `logit_scale` widens the margins, as a trained head has them, and f16-exact weights let
# an f16 GGUF hold exactly the reference's weights. 320 slots = 25.6 s of audio.
TINY_ALIGNER_SPECS = {
    "aligner_mha": RandomModelSpec(
        init_std=0.1, f16_exact_weights=True, tie_word_embeddings=False, logit_scale=4.0, seed=11
    ),
    "aligner_gqa": replace(TINY_SPECS["untied_gqa"], logit_scale=4.0, seed=12),  # the ASR tests' GQA sizes
}
TINY_CLASSIFY_NUM = 320


def build_random_aligner(
    out_dir: str | Path, spec: RandomModelSpec, classify_num: int = TINY_CLASSIFY_NUM, decorrelate: int = 4
) -> Path:
    """Write a random-weight Qwen3-ForcedAligner checkpoint to out_dir (layout of the Hugging Face one).
    `decorrelate` > 0: make the head see what varies (see `_decorrelate_head`)."""
    from transformers import AutoTokenizer

    out = Path(out_dir)
    # The tokenizer of the ASR builder carries <timestamp>; its id is needed before the config exists, so the
    # checkpoint is built with the aligner extras and the id patched in from the saved tokenizer.
    spec = replace(spec, extra={**spec.extra, "model_type": ALIGNER_MODEL_TYPE, "classify_num": classify_num})
    build_random_checkpoint(out, spec)
    timestamp_id = AutoTokenizer.from_pretrained(out).convert_tokens_to_ids(TIMESTAMP)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    # transformers writes a sub-config's class model_type; the real checkpoint names the aligner there
    config["thinker_config"]["model_type"] = ALIGNER_MODEL_TYPE
    config["thinker_config"]["classify_num"] = classify_num
    config["timestamp_token_id"] = timestamp_id
    config["timestamp_segment_time"] = SEGMENT_MS
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    if decorrelate:
        _decorrelate_head(out, decorrelate, spec.dtype)
    return out


def _decorrelate_head(src: Path, k: int, dtype: str) -> None:
    """A random transformer's final states share one dominant direction (and a few strong ones), so a random
    head answers the same slot for every word: alignment would be trivially equal everywhere. A trained head
    ignores what all positions share; this one is made to, by removing from its rows the mean and the top `k`
    principal directions of its inputs on a calibration prompt. The rest of the model stays random, so parity
    still compares the whole computation."""
    import numpy as np
    import torch
    from qwen_asr import Qwen3ForcedAligner
    from safetensors.torch import load_file, save_file

    aligner = Qwen3ForcedAligner.from_pretrained(str(src), dtype=torch.float32)
    thinker = aligner.model.thinker
    captured: list[torch.Tensor] = []
    hook = thinker.lm_head.register_forward_hook(lambda _m, args, _out: captured.append(args[0][0]))
    n = 16000 * 12
    t = np.arange(n) / 16000
    audio = np.random.default_rng(99).standard_normal(n) * 0.1 + 0.3 * np.sin(2 * np.pi * 330 * t) * (t > 5)
    text = "calibration words here and there 你好世界 one two three four five six seven eight nine"
    _, prompt = aligner.aligner_processor.encode_timestamp(text, "English")
    inputs = aligner.processor(text=[prompt], audio=[audio.astype(np.float32)], return_tensors="pt", padding=True)
    with torch.no_grad():
        thinker(**inputs)
    hook.remove()
    states = captured[0][inputs["input_ids"][0] == aligner.timestamp_token_id]
    mean = states.mean(0)
    _, _, v = torch.linalg.svd(states - mean, full_matrices=False)
    basis, _ = torch.linalg.qr(torch.cat([mean[None] / mean.norm(), v[:k]]).T)
    weights_file = src / "model.safetensors"
    tensors = load_file(str(weights_file))
    head = tensors["thinker.lm_head.weight"].float()
    head = head - (head @ basis) @ basis.T
    tensors["thinker.lm_head.weight"] = head.half().float().to(getattr(torch, dtype))  # f16-exact as the rest
    save_file(tensors, str(weights_file), metadata={"format": "pt"})
