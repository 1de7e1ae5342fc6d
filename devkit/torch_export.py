"""The torch export of the Qwen3-ASR audio tower (dev-only): trace the official module with torch.onnx.

`qasr-live export` builds the same two graphs without torch (qasr_live/export/encoder_graph.py); this is the
cross-check the tests compare it with, and the Frontend/Backend modules the demo-model training reuses.

frontend: one or more 100-frame mel chunks (B, 128, 100) -> (B, 13, d_model). Three stride-2 convs, the linear
          projection and the sinusoidal positions 0..12, which restart in every chunk as in the official model.
backend:  rows (B, T, d_model) + additive attention mask (B, 1, T, T) -> (B, T, output_dim). The transformer
          layers, ln_post and the two-layer projector to the LLM width. The caller supplies the mask, so the
          block-diagonal 8 s windows the model was trained with are honoured (the official CPU path ignores them).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHUNK_FRAMES = 100
OPSET = 18


class Frontend(nn.Module):
    positions: torch.Tensor  # a buffer

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        # `tower`, the official Qwen3ASRAudioEncoder (transformers), has untyped submodules and config
        self.tower: Any = tower
        official: Any = tower  # mypy narrows self.tower to nn.Module right after the assignment
        rows = official.positional_embedding.positional_embedding[:13].clone()
        self.register_buffer("positions", rows, persistent=False)

    def forward(self, chunk_mel: torch.Tensor) -> torch.Tensor:
        t = self.tower
        x = chunk_mel.unsqueeze(1)
        x = nn.functional.gelu(t.conv2d1(x))
        x = nn.functional.gelu(t.conv2d2(x))
        x = nn.functional.gelu(t.conv2d3(x))
        b, c, f, n = x.shape
        x = t.conv_out(x.permute(0, 3, 1, 2).reshape(b, n, c * f))
        out: torch.Tensor = x + self.positions
        return out


class Backend(nn.Module):
    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower: Any = tower

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        t = self.tower
        b, n, d = hidden_states.shape
        x = hidden_states
        for layer in t.layers:
            attn = layer.self_attn
            heads = attn.num_heads
            h = layer.self_attn_layer_norm(x)
            q = attn.q_proj(h).reshape(b, n, heads, -1).transpose(1, 2)
            k = attn.k_proj(h).reshape(b, n, heads, -1).transpose(1, 2)
            v = attn.v_proj(h).reshape(b, n, heads, -1).transpose(1, 2)
            scores = torch.matmul(q, k.transpose(2, 3)) * attn.scaling + attention_mask
            weights = torch.softmax(scores, dim=-1)
            h = torch.matmul(weights, v).transpose(1, 2).reshape(b, n, d)
            x = x + attn.out_proj(h)
            h = layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))
            x = x + h
        x = t.ln_post(x)
        out: torch.Tensor = t.proj2(t.act(t.proj1(x)))
        return out


def export_encoder(tower: nn.Module, out_dir: Path, frontend_name: str, backend_name: str) -> None:
    """Write the fp32 frontend and backend graphs of `tower` (the official Qwen3ASRAudioEncoder)."""
    tower = tower.float().eval()
    config: Any = tower.config
    d_model = config.d_model
    with torch.no_grad():
        mel = torch.randn(2, config.num_mel_bins, CHUNK_FRAMES)
        _export(
            Frontend(tower),
            (mel,),
            out_dir / frontend_name,
            ["chunk_mel"],
            ["chunk_out"],
            {"chunk_mel": {0: "batch"}, "chunk_out": {0: "batch"}},
        )
        rows = torch.randn(2, 30, d_model)
        mask = torch.zeros(2, 1, 30, 30)
        _export(
            Backend(tower),
            (rows, mask),
            out_dir / backend_name,
            ["hidden_states", "attention_mask"],
            ["last_hidden_state"],
            {
                "hidden_states": {0: "batch", 1: "time"},
                "attention_mask": {0: "batch", 2: "time", 3: "time"},
                "last_hidden_state": {0: "batch", 1: "time"},
            },
        )


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    # The TorchScript exporter: deterministic, one self-contained file, and dynamic axes that are easy to
    # state; the graphs are plain convs, matmuls and layer norms. Chosen on purpose, so torch's deprecation
    # notices about it (one for the exporter, one for its logging helper) say nothing new.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
