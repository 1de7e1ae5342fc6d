"""Real-shaped random checkpoints of Qwen3-ASR 0.6B and 1.7B, exported in every precision, cached outside git.

Random weights of the real shapes cost exactly what real weights cost: the same matrix sizes, the same
151,936-row vocabulary, the same cache sizes. Only the words are meaningless, which the benchmark handles by
forcing the answer length (bench/answers.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from devkit.random_checkpoint import QWEN3_ASR_0_6B, QWEN3_ASR_1_7B, RandomModelSpec

ROOT = Path(__file__).resolve().parents[1]
# "tiny": the test suite's default sizes, seconds to build: a smoke run of the benchmark code, not a measurement.
SIZES: dict[str, RandomModelSpec] = {"0.6b": QWEN3_ASR_0_6B, "1.7b": QWEN3_ASR_1_7B, "tiny": RandomModelSpec()}
ENCODERS = ("fp32", "int8", "int4")
DECODERS = ("f16", "q8_0", "q4_k")


def cache_dir() -> Path:
    """Where checkpoints and exports live: $QASR_BENCH_CACHE, else bench/cache (ignored by git)."""
    return Path(os.environ.get("QASR_BENCH_CACHE", ROOT / "bench" / "cache"))


@dataclass(frozen=True)
class BenchModel:
    size: str
    checkpoint: Path  # the official Hugging Face layout (what the reference loads)
    model_dir: Path  # our export: every encoder and decoder precision
    build_seconds: float | None  # None when both were already cached
    export_seconds: float | None


def prepare(size: str, log=print) -> BenchModel:
    """The cached checkpoint and export of `size`, built on first use (0.6B: ~1.5 min and 4 GB of disk on 2
    cores; 1.7B: ~4 min and 10 GB)."""
    from devkit.random_checkpoint import build_random_checkpoint
    from qasr_live.export.exporter import export_checkpoint

    base = cache_dir() / size
    checkpoint, model_dir = base / "checkpoint", base / "model"
    build_s = export_s = None
    if not any((checkpoint / f).exists() for f in ("model.safetensors", "model.safetensors.index.json")):
        log(f"[{size}] building a random checkpoint of the real shapes in {checkpoint}")
        t = time.perf_counter()
        build_random_checkpoint(checkpoint, SIZES[size])
        build_s = time.perf_counter() - t
    if not (model_dir / "manifest.json").exists():
        log(f"[{size}] exporting encoder {'/'.join(ENCODERS)} and decoder {'/'.join(DECODERS)} to {model_dir}")
        t = time.perf_counter()
        export_checkpoint(checkpoint, model_dir, ENCODERS, DECODERS, force=True, progress=log)
        export_s = time.perf_counter() - t
    return BenchModel(size, checkpoint, model_dir, build_s, export_s)
