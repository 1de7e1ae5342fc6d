"""Write the Qwen3-ASR language model ("thinker" text model) as a GGUF of architecture `qwen3`.

Qwen3-ASR gives audio and text the same 1-D position on all three M-RoPE sections, so its interleaved M-RoPE
equals plain NeoX RoPE: the `qwen3` architecture (one position per token) runs it exactly, with no M-RoPE
position planes. The parity tests prove it token for token against the official model.

f32, f16 and q8_0 are written directly with gguf-py, one tensor at a time (the tensor table first, from the
shapes); q4_k goes through llama.cpp's own quantizer (`llama_model_quantize`), since K-quants have no Python
encoder. Nothing here needs torch: the tensors come from `checkpoint.Checkpoint` (or, in devkit's cross-check,
from the official torch model).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qasr_live.engine.decoder import install_log_hook
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


@dataclass(frozen=True, slots=True)
class GGUFTensor:
    """One tensor to write: its GGUF name, its shape, and how to get it as float32 (called once, when its turn
    comes, so that only one tensor is held at a time)."""

    name: str
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]


def decoder_tensor_names(n_layers: int, tied: bool) -> list[tuple[str, str]]:
    """(gguf name, Hugging Face name inside the thinker) of every decoder tensor, in the file's order."""
    names = [("token_embd.weight", "model.embed_tokens.weight")]
    for i in range(n_layers):
        names += [(f"blk.{i}.{name}", f"model.layers.{i}.{hf}") for hf, name in _LAYER_TENSORS.items()]
    names.append(("output_norm.weight", "model.norm.weight"))
    if not tied:  # llama.cpp falls back to token_embd when `output` is absent
        names.append(("output.weight", "lm_head.weight"))
    return names


def tokenizer_vocab(tokenizer_json: Mapping[str, Any], vocab_size: int) -> tuple[list[str], list[int], list[str]]:
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


def _stored(shape: tuple[int, ...], precision: str) -> tuple[str, tuple[int, ...], int]:
    """How a float32 tensor of `shape` is stored at `precision`: ("f32" | "f16" | "q8_0", the shape handed to
    gguf-py, bytes)."""
    import gguf

    n = math.prod(shape)
    if len(shape) == 1 or precision == "f32":  # norms stay f32: llama.cpp expects them so, and they are tiny
        return "f32", shape, 4 * n
    if precision == "q8_0" and shape[-1] % 32 == 0:
        byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, gguf.GGMLQuantizationType.Q8_0)
        return "q8_0", byte_shape, math.prod(byte_shape)
    return "f16", shape, 2 * n  # f16, and q8_0 rows narrower than its 32-wide blocks


def gguf_nbytes(tensors: Sequence[GGUFTensor], precision: str) -> int:
    """Bytes of tensor data a GGUF of `precision` holds (what the progress bar counts)."""
    return sum(_stored(t.shape, precision)[2] for t in tensors)


def write_gguf(
    path: Path,
    precision: str,
    text_config: Mapping[str, Any],
    tensors: Sequence[GGUFTensor],
    tokenizer_json: Mapping[str, Any],
    special: Mapping[str, int],
    name: str,
    on_tensor: Callable[[int], None] | None = None,
) -> None:
    """Write one GGUF (precision f32, f16 or q8_0). The tensor table is written from the shapes first, then
    each tensor is loaded, converted, written and dropped in turn; `on_tensor` gets the bytes of each."""
    import gguf

    qtypes = {
        "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
        "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
        "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    }
    _, ftype = qtypes[precision]
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

    plan = [(tensor, *_stored(tensor.shape, precision)) for tensor in tensors]
    numpy_dtypes = {"f32": np.float32, "f16": np.float16, "q8_0": np.uint8}
    for tensor, kind, shape, nbytes in plan:
        raw = qtypes[kind][0] if kind == "q8_0" else None
        writer.add_tensor_info(tensor.name, shape, np.dtype(numpy_dtypes[kind]), nbytes, raw_dtype=raw)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor, kind, _, nbytes in plan:
            array = np.ascontiguousarray(tensor.load(), dtype=np.float32)
            if array.shape != tensor.shape:
                raise ExportError(
                    f"{tensor.name} has shape {list(array.shape)}, its table entry {list(tensor.shape)}; "
                    "the checkpoint changed during the export: run it again."
                )
            if kind == "f16":
                data: np.ndarray = array.astype(np.float16)
            elif kind == "q8_0":
                data = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            else:
                data = array
            del array
            writer.write_tensor_data(data)
            if on_tensor is not None:
                on_tensor(nbytes)
            del data
    finally:
        writer.close()


def quantize_gguf(src: Path, dst: Path, precision: str, threads: int = 0) -> None:
    """K-quantize a GGUF with llama.cpp's quantizer (through llama-cpp-python's ctypes binding)."""
    import llama_cpp.llama_cpp as llama

    install_log_hook(llama)  # one line per tensor otherwise (310 for the 1.7B model), straight to stderr
    ftypes = {"q4_k": llama.LLAMA_FTYPE_MOSTLY_Q4_K_M}
    params = llama.llama_model_quantize_default_params()
    params.ftype = ftypes[precision]
    params.nthread = threads
    rc = llama.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise ExportError(f"llama_model_quantize({src.name} -> {dst.name}, {precision}) failed with code {rc}")
