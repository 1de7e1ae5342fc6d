"""Resident memory against speed for the settings that decide it: ``python -m bench.memory SIZE OUT.json``.

Each configuration runs in a fresh process (peak RSS = VmHWM of that process):
* decoder (q4_k): llama.cpp's repacked CPU weights on/off x context 4096/2048, then (unrepacked) the daemon's
  context sized from the need (engine/loading.context_size) with an f16 and a q8_0 KV cache: RSS after loading,
  peak RSS after a 400-position prefill and 64 generated tokens, prefill and generation tokens/s;
* encoder (int8): ONNX Runtime's CPU arena on/off, then (arena off, the daemon's setting) weight prepacking
  on/off x chunks per frontend run (all / 1), encoding 2, 5, 10 and 30 s clips in turn: peak RSS after loading
  and in all, and ms per audio second on the 10 s clip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.audio import speech
from bench.models import ROOT, prepare
from bench.offline import THREADS, peak_rss_mb

# "daemon" runs (python -m bench.memory SIZE OUT daemon): one repetition and 16 generated tokens, for a loaded
# machine where only the memory figures mean anything
QUICK = os.environ.get("BENCH_MEMORY_QUICK") == "1"
PROMPT_ROWS = 380  # + ~20 prompt tokens: a full decoder memory (memory_tokens 400)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def decoder_child(size: str, repack: bool, n_ctx: int, kv: str = "f16") -> dict:
    from qasr_live.engine.decoder import Decoder
    from qasr_live.engine.generation import generate
    from qasr_live.engine.model_dir import open_model_dir

    model = open_model_dir(prepare(size).model_dir, "int8", "q4_k", verify=False)
    t = time.perf_counter()
    d = Decoder(model.decoder, n_ctx=n_ctx, threads=THREADS, repack=repack, kv_cache_type=kv)
    load_s = time.perf_counter() - t
    after_load = _rss_mb()
    rows = np.random.default_rng(0).standard_normal((PROMPT_ROWS, d.n_embd)).astype(np.float32) * 0.02
    head, tail = (
        d.tokenize("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|audio_start|>"),
        d.tokenize("<|audio_end|><|im_end|>\n<|im_start|>assistant\nlanguage English<asr_text>"),
    )
    best_prefill, best_gen = float("inf"), float("inf")
    for _ in range(1 if QUICK else 3):
        d.rewind(0)
        t = time.perf_counter()
        d.feed_tokens(head, want_logits=False)
        d.feed_embeddings(rows)
        d.feed_tokens(tail)
        best_prefill = min(best_prefill, time.perf_counter() - t)
        t = time.perf_counter()
        n = len(generate(d, set(), 16 if QUICK else 64, repetition_guard=False).tokens)
        best_gen = min(best_gen, time.perf_counter() - t)
    positions = len(head) + PROMPT_ROWS + len(tail)
    return {
        "repack": repack,
        "n_ctx": n_ctx,
        "kv_cache_type": kv,
        "load_s": load_s,
        "rss_after_load_mb": after_load,
        "peak_rss_mb": peak_rss_mb(),
        "prefill_tok_s": positions / best_prefill,
        "gen_tok_s": n / best_gen,
    }


def encoder_child(size: str, arena: bool, prepack: bool = True, frontend_batch: int = 0) -> dict:
    from qasr_live.engine import encoder as encoder_module
    from qasr_live.engine.features import log_mel
    from qasr_live.engine.model_dir import open_model_dir

    model = open_model_dir(prepare(size).model_dir, "int8", "q4_k", verify=False)
    encoder_module.DISABLE_PREPACKING = not prepack
    encoder_module.FRONTEND_BATCH = frontend_batch or 1000  # 0: every chunk of a clip in one run
    encoder = encoder_module.AudioEncoder(model.frontend, model.backend, THREADS, arena=arena)
    after_load = peak_rss_mb()
    mels = {s: log_mel(speech(s, seed=int(s))) for s in (2.0, 5.0, 10.0, 30.0)}
    times = []
    for _ in range(1 if QUICK else 3):
        for seconds, mel in mels.items():
            t = time.perf_counter()
            encoder.encode(mel)
            if seconds == 10.0:
                times.append(time.perf_counter() - t)
    return {
        "arena": arena,
        "prepack": prepack,
        "frontend_batch": frontend_batch,
        "peak_rss_after_load_mb": after_load,
        "peak_rss_mb": peak_rss_mb(),
        "ms_per_audio_s": min(times) / 10.0 * 1000,
    }


def _child(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.memory", "child", *args], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    if sys.argv[1] == "child":
        kind, size, *rest = sys.argv[2:]
        if kind == "decoder":
            result = decoder_child(size, rest[0] == "1", int(rest[1]), rest[2])
        else:
            result = encoder_child(size, rest[0] == "1", rest[1] == "1", int(rest[2]))
        print(json.dumps(result))
        return 0
    from qasr_live.config import EngineConfig, StreamingConfig
    from qasr_live.engine.loading import context_size

    size, out = sys.argv[1], Path(sys.argv[2])
    only = sys.argv[3] if len(sys.argv) > 3 else "all"  # "daemon": only the daemon's before/after settings
    if only == "daemon":
        os.environ["BENCH_MEMORY_QUICK"] = "1"
    daemon_ctx = context_size(EngineConfig(), memory_tokens=StreamingConfig().memory_tokens)
    decoders = [(1, 4096, "f16"), (1, 2048, "f16"), (0, 4096, "f16")] if only == "all" else []
    decoders += [(0, 2048, "f16"), (0, daemon_ctx, "f16"), (0, daemon_ctx, "q8_0")]
    encoders = [(1, 1, 0)] if only == "all" else []  # (arena, prepack, chunks per frontend run; 0 = all)
    encoders += [(0, 1, 0), (0, 0, 0), (0, 0, 1)]
    result = {"decoder": [], "encoder": []}
    for repack, n_ctx, kv in decoders:
        result["decoder"].append(_child(["decoder", size, str(repack), str(n_ctx), kv]))
        print(f"[memory {size}] decoder {result['decoder'][-1]}", file=sys.stderr)
    for arena, prepack, batch in encoders:
        result["encoder"].append(_child(["encoder", size, str(arena), str(prepack), str(batch)]))
        print(f"[memory {size}] encoder {result['encoder'][-1]}", file=sys.stderr)
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
