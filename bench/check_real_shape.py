"""Opt-in check at full size: a random-weight checkpoint with the real Qwen3-ASR-0.6B shapes (or 1.7B) goes
through `qasr-live export` and `qasr-live transcribe`, and the greedy ids are compared with the official model.

    python -m bench.check_real_shape [--size 0.6b|1.7b] [--work DIR] [--seconds 10]

Takes a few minutes and ~10 GB of disk on 2 cores. Prints timings and the agreement of each precision.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.io.wavfile

from devkit.random_checkpoint import QWEN3_ASR_0_6B, QWEN3_ASR_1_7B, build_random_checkpoint
from devkit.reference import reference_generate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("0.6b", "1.7b"), default="0.6b")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "qasr-live" / "real-shape")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    spec = QWEN3_ASR_0_6B if args.size == "0.6b" else QWEN3_ASR_1_7B
    work = args.work / args.size
    ckpt, model = work / "checkpoint", work / "model"
    timings = {}
    if not (ckpt / "model.safetensors").exists() and not (ckpt / "model.safetensors.index.json").exists():
        t = time.perf_counter()
        build_random_checkpoint(ckpt, spec)
        timings["build checkpoint"] = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "qasr_live",
            "export",
            str(ckpt),
            str(model),
            "--force",
            "--encoder",
            "fp32,int8",
            "--decoder",
            "f16,q8_0,q4_k",
        ],
        check=True,
    )
    timings["export"] = time.perf_counter() - t
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(int(args.seconds * 16000)) * 0.1).astype(np.float32)
    wav = work / "audio.wav"
    scipy.io.wavfile.write(wav, 16000, audio)
    t = time.perf_counter()
    reference = reference_generate(str(ckpt), audio, max_new_tokens=args.tokens)
    timings["official generate"] = time.perf_counter() - t
    config = work / "config.yaml"
    for decoder, encoder in (("f16", "fp32"), ("q8_0", "int8"), ("q4_k", "int8")):
        config.write_text(
            f"model:\n  encoder_precision: {encoder}\n  decoder_precision: {decoder}\n"
            f"engine:\n  repetition_guard: false\n  max_new_tokens: {args.tokens}\n"
        )
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "qasr_live",
                "transcribe",
                str(wav),
                "--model",
                str(model),
                "--config",
                str(config),
                "--format",
                "json",
                "--out-dir",
                str(work),
            ],
            check=True,
        )
        timings[f"transcribe {decoder}/{encoder}"] = time.perf_counter() - t
        ours = json.loads((work / "audio.json").read_text())["token_ids"]
        same = sum(a == b for a, b in zip(ours, reference, strict=False))
        print(
            f"{decoder}/{encoder}: {same}/{len(reference)} positions equal to the official greedy ids"
            f"{' (identical)' if ours == reference else ''}"
        )
    for name, seconds in timings.items():
        print(f"{name:28s} {seconds:7.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
