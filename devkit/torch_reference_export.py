"""The exporter's former torch path, kept as a cross-check of the torch-free one: the official model loaded with
transformers (float32), the tokenizer read by transformers' fast tokenizer, the config from the official config
classes, and the same `decoder_gguf.write_gguf` fed from the model's state dict.

Dev only (tests, measurements): it needs torch, transformers and `qwen-asr`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from devkit.official import official_classes
from qasr_live.engine.model_dir import decoder_file
from qasr_live.errors import ExportError
from qasr_live.export.decoder_gguf import GGUFTensor, decoder_tensor_names, quantize_gguf, write_gguf

SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<|audio_pad|>",
    "<asr_text>",
    "<timestamp>",
)


def load_tokenizer_json(src: Path) -> dict[str, Any]:
    """The fast tokenizer's full description (vocab, merges, added tokens), as transformers reads the files."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(src), use_fast=True)
    except Exception as e:  # transformers raises many types for a broken tokenizer
        raise ExportError(f"cannot load the tokenizer from {src} ({e})") from e
    description: dict[str, Any] = json.loads(tok.backend_tokenizer.to_str())
    return description


def load_official(src: Path) -> Any:
    """The official model in float32 (what the old exporter loaded first, whole)."""
    _, model_cls, _ = official_classes()
    return model_cls.from_pretrained(str(src), dtype=torch.float32).eval()


def torch_decoder_source(model: Any) -> tuple[dict[str, Any], bool, list[GGUFTensor]]:
    """(text config as the official classes fill it, tied head, the GGUF tensors) of a loaded official model."""
    thinker = model.thinker
    text_config = thinker.config.text_config.to_dict()
    embed = thinker.model.embed_tokens.weight
    head = thinker.lm_head.weight
    tied = head.data_ptr() == embed.data_ptr() or bool(torch.equal(head, embed))
    state = {k: v.detach().float().numpy() for k, v in thinker.state_dict().items()}
    tensors = [
        GGUFTensor(gguf_name, tuple(state[hf].shape), lambda a=state[hf]: a)
        for gguf_name, hf in decoder_tensor_names(text_config["num_hidden_layers"], tied)
    ]
    return text_config, tied, tensors


def torch_reference_decoders(src: Path, out_dir: Path, decoders: tuple[str, ...], threads: int = 0) -> dict[str, Path]:
    """Write `decoder.{precision}.gguf` for each precision into `out_dir` the torch way; returns the paths."""
    model = load_official(src)
    text_config, _, tensors = torch_decoder_source(model)
    tokenizer = load_tokenizer_json(src)
    ids = {t["content"]: t["id"] for t in tokenizer.get("added_tokens", [])}
    special = {t: ids[t] for t in SPECIAL_TOKENS if t in ids}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for precision in decoders:
        dst = out_dir / decoder_file(precision)
        if precision == "q4_k":
            base = out_dir / "base.f32.gguf"
            write_gguf(base, "f32", text_config, tensors, tokenizer, special, src.name)
            quantize_gguf(base, dst, "q4_k", threads)
            base.unlink()
        else:
            write_gguf(dst, precision, text_config, tensors, tokenizer, special, src.name)
        paths[precision] = dst
    return paths
