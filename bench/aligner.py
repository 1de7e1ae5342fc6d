"""Alignment time per minute of audio on the real-shaped Qwen3-ForcedAligner-0.6B (random weights of the real
config, built with the official classes: devkit/random_aligner.py, exported with `qasr-live export`):
``python -m bench.aligner MODEL_DIR [--minutes 1,5] [--threads 2]``.

Random weights decide nothing about the time (one causal pass whose length is fixed by the audio and the text),
so the text is a fixed English passage at 150 words per minute and the audio is noise. Prints one JSON line per
duration: seconds of audio, words, decoder positions, wall seconds (encoder + decoder + head), and seconds per
minute of audio; and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np

from qasr_live.engine.aligner import Aligner
from qasr_live.engine.model_dir import open_model_dir

PASSAGE = [
    "speech",
    "recognition",
    "turns",
    "spoken",
    "words",
    "into",
    "written",
    "text",
    "and",
    "the",
    "aligner",
    "tells",
    "when",
    "each",
    "word",
    "was",
    "said",
    "so",
    "that",
    "subtitles",
    "can",
    "follow",
    "the",
    "voice",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--minutes", default="1,5")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    t0 = time.perf_counter()
    aligner = Aligner(open_model_dir(args.model, verify=False), threads=args.threads)
    print(json.dumps({"load_seconds": round(time.perf_counter() - t0, 2)}), flush=True)
    rng = np.random.default_rng(0)
    for minutes in (float(m) for m in args.minutes.split(",")):
        seconds = min(minutes * 60, aligner.max_seconds)
        n_words = int(150 * seconds / 60)
        text = " ".join(PASSAGE[i % len(PASSAGE)] for i in range(n_words))
        audio = (rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
        positions = aligner.positions(len(audio), aligner.word_ids(text.split()))
        t1, c1 = time.perf_counter(), time.process_time()
        words = aligner.align(audio, text, "English")
        wall, cpu = time.perf_counter() - t1, time.process_time() - c1
        row = {
            "audio_seconds": seconds,
            "words": len(words),
            "positions": positions,
            "wall_seconds": round(wall, 2),
            "seconds_per_audio_minute": round(wall / (seconds / 60), 2),
            # the machine is shared: CPU seconds / threads is the wall time an idle machine would show
            "cpu_seconds": round(cpu, 2),
            "cpu_seconds_per_audio_minute": round(cpu / (seconds / 60), 2),
            "load_average": round(os.getloadavg()[0], 1),
            "threads": args.threads,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
        print(json.dumps(row), flush=True)
    aligner.close()


if __name__ == "__main__":
    main()
