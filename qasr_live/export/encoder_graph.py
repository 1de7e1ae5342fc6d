# TEMPORARY shim, replaced on merge
"""The encoder export's interface, as the torch-free encoder_graph.py (written in parallel) provides it.

Until the merge this builds the official audio tower with torch from the weights and runs the TorchScript export
of encoder_onnx.py; the integrator replaces this file with the real torch-free one. Every torch import is inside a
function, so importing this module (and the exporter) needs no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def write_encoder_onnx(
    weights: Mapping[str, np.ndarray], audio_config: Mapping[str, Any], frontend_path: Path, backend_path: Path
) -> None:
    """Write the fp32 frontend and backend graphs of the audio tower whose float32 `weights` (named inside the
    tower) and config.json `audio_config` are given."""
    import torch
    from qwen_asr.core.transformers_backend.configuration_qwen3_asr import Qwen3ASRAudioEncoderConfig
    from qwen_asr.core.transformers_backend.modeling_qwen3_asr import Qwen3ASRAudioEncoder

    from qasr_live.export.encoder_onnx import export_encoder

    if frontend_path.parent != backend_path.parent:
        raise ValueError("the shim writes both graphs into one directory")
    tower = Qwen3ASRAudioEncoder(Qwen3ASRAudioEncoderConfig(**dict(audio_config)))
    state = {name: torch.from_numpy(np.asarray(weights[name])) for name in weights}
    tower.load_state_dict(state, strict=True)
    export_encoder(tower, frontend_path.parent, frontend_path.name, backend_path.name)


def quantize_int8(src: Path, dst: Path) -> None:
    from qasr_live.export.encoder_onnx import quantize_int8 as quantize

    quantize(src, dst)


def quantize_int4(src: Path, dst: Path) -> None:
    from qasr_live.export.encoder_onnx import quantize_int4 as quantize

    quantize(src, dst)
