"""Write the Qwen3-ASR language model ("thinker" text model) as a GGUF of architecture `qwen3`.

Qwen3-ASR gives audio and text the same 1-D position on all three M-RoPE sections, so its interleaved M-RoPE
equals plain NeoX RoPE: the `qwen3` architecture (one position per token) runs it exactly, with no M-RoPE
position planes. The parity tests prove it token for token against the official model.

f32, f16 and q8_0 are written directly with gguf-py; q4_k goes through llama.cpp's own quantizer
(`llama_model_quantize`), since K-quants have no Python encoder.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qasr_live.errors import ExportError

_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


def gguf_tensors(state: dict[str, np.ndarray], n_layers: int, tied: bool) -> Iterator[tuple[str, np.ndarray]]:
    """(gguf name, float32 array) for every decoder tensor; `state` holds the thinker's `model.*` and
    `lm_head.weight` tensors under their Hugging Face names."""
    yield "token_embd.weight", state["model.embed_tokens.weight"]
    for i in range(n_layers):
        for hf, name in _LAYER_TENSORS.items():
            yield f"blk.{i}.{name}", state[f"model.layers.{i}.{hf}"]
    yield "output_norm.weight", state["model.norm.weight"]
    if not tied:  # llama.cpp falls back to token_embd when `output` is absent
        yield "output.weight", state["lm_head.weight"]


def tokenizer_vocab(tokenizer_json: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and merges for GGUF's `gpt2` (byte-level BPE) tokenizer model, every token at its
    real id. Ids without a token (the embedding table is padded past the tokenizer) become unused pads."""
    model = tokenizer_json["model"]
    tokens: list[str | None] = [None] * vocab_size
    types = [TOKEN_NORMAL] * vocab_size
    for text, idx in model["vocab"].items():
        if idx < vocab_size:
            tokens[idx] = text
    for added in tokenizer_json.get("added_tokens", []):
        idx = added["id"]
        if idx >= vocab_size:
            raise ExportError(
                f"tokenizer token {added['content']!r} has id {idx}, beyond the embedding table "
                f"({vocab_size} rows): the tokenizer does not belong to this checkpoint."
            )
        tokens[idx] = added["content"]
        types[idx] = TOKEN_CONTROL if added.get("special") else TOKEN_USER_DEFINED
    names: list[str] = []
    for idx, text in enumerate(tokens):
        if text is None:
            text = f"[PAD{idx}]"
            types[idx] = TOKEN_UNUSED
        names.append(text)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return names, types, merges


def write_gguf(
    path: Path,
    precision: str,
    text_config: dict[str, Any],
    tensors: Callable[[], Iterator[tuple[str, np.ndarray]]],
    tokenizer_json: dict[str, Any],
    special: dict[str, int],
    name: str,
) -> None:
    """Write one GGUF (precision f32, f16 or q8_0). `tensors` is called once; arrays are converted one by one."""
    import gguf

    qtypes = {
        "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
        "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
        "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    }
    qtype, ftype = qtypes[precision]
    c = text_config
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    writer = gguf.GGUFWriter(str(path), "qwen3")
    writer.add_name(name)
    writer.add_context_length(int(c.get("max_position_embeddings", 65536)))
    writer.add_embedding_length(c["hidden_size"])
    writer.add_block_count(c["num_hidden_layers"])
    writer.add_feed_forward_length(c["intermediate_size"])
    writer.add_head_count(c["num_attention_heads"])
    writer.add_head_count_kv(c["num_key_value_heads"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(c.get("rope_theta", 1e6)))
    writer.add_layer_norm_rms_eps(float(c.get("rms_norm_eps", 1e-6)))
    writer.add_file_type(int(ftype))

    tokens, types, merges = tokenizer_vocab(tokenizer_json, c["vocab_size"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(special["<|im_end|>"])
    writer.add_pad_token_id(special["<|endoftext|>"])
    writer.add_add_bos_token(False)

    for tensor_name, array in tensors():
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(tensor_name, array)
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(tensor_name, array.astype(np.float16))
        elif array.shape[-1] % 32 == 0:
            writer.add_tensor(tensor_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:  # q8_0 blocks are 32 wide; a narrower row stays f16
            writer.add_tensor(tensor_name, array.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()


def quantize_gguf(src: Path, dst: Path, precision: str, threads: int = 0) -> None:
    """K-quantize a GGUF with llama.cpp's quantizer (through llama-cpp-python's ctypes binding)."""
    import llama_cpp.llama_cpp as llama

    ftypes = {"q4_k": llama.LLAMA_FTYPE_MOSTLY_Q4_K_M}
    params = llama.llama_model_quantize_default_params()
    params.ftype = ftypes[precision]
    params.nthread = threads
    rc = llama.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise ExportError(f"llama_model_quantize({src.name} -> {dst.name}, {precision}) failed with code {rc}")


def load_tokenizer_json(src: Path) -> dict[str, Any]:
    """The fast tokenizer's full description (vocab, merges, added tokens), whatever files the checkpoint has."""
    from transformers import AutoTokenizer

    try:
        # transformers leaves AutoTokenizer.from_pretrained unannotated
        tok = AutoTokenizer.from_pretrained(str(src), use_fast=True)  # type: ignore[no-untyped-call]
    except Exception as e:  # transformers raises many types for a broken tokenizer
        raise ExportError(
            f"cannot load the tokenizer from {src} ({e}); the checkpoint needs vocab.json + "
            "merges.txt + tokenizer_config.json or tokenizer.json, as on Hugging Face."
        ) from e
    description: dict[str, Any] = json.loads(tok.backend_tokenizer.to_str())
    return description
