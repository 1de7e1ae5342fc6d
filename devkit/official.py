"""Access to the official `qwen-asr` implementation (dev only: random checkpoints, the reference, the torch
cross-check of the exporter; the runtime package never imports it)."""

from __future__ import annotations

from typing import Any

from qasr_live.errors import ExportError


def official_classes() -> tuple[Any, Any, Any]:  # qwen_asr's (transformers) classes are untyped
    """(Qwen3ASRConfig, Qwen3ASRForConditionalGeneration, Qwen3ASRProcessor) from the `qwen-asr` package."""
    try:
        from qwen_asr.core.transformers_backend import (
            Qwen3ASRConfig,
            Qwen3ASRForConditionalGeneration,
            Qwen3ASRProcessor,
        )
    except ImportError as e:
        raise ExportError(
            f"the dev tools need the official implementation ({e}). Install the export extra: "
            "`bash scripts/install.sh --export` (pip install -e '.[export]' plus `qwen-asr --no-deps`)."
        ) from e
    return Qwen3ASRConfig, Qwen3ASRForConditionalGeneration, Qwen3ASRProcessor
