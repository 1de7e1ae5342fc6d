"""Training data of the demo model: grammar sentences spoken by espeak-ng, augmented, as log-mel features.

Every utterance i is made from its own random generator seeded with (SEED, i), so the data set is the same on
every run (for a given espeak-ng version) whatever the number of worker processes. Output (in --out):

    mel.f16     float16 (total_frames, 128) log-mel frames of all clips, one after the other
    index.json  per clip: offset and frames into mel.f16, text ("" = no speech), speaker (voice+variant), settings

Held-out sentences (vocabulary.json `heldout_rule`) and the held-out voice (en-gb-x-rp) are never produced.
Run from the repository root: python3 -m training.demo_model.data --out DIR [--n N]
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from scipy.signal import butter, fftconvolve, sosfilt

from devkit.demo_speech import (
    SAMPLE_RATE,
    TRAIN_PITCHES,
    TRAIN_SPEEDS,
    TRAIN_VARIANTS,
    TRAIN_VOICES,
    colored_noise,
    is_heldout,
    no_speech_clip,
    sentence,
    synthesize,
)
from qasr_live.engine.features import log_mel

SEED = 20240604
NO_SPEECH_FRACTION = 0.06


def augment(x: np.ndarray, rng: np.random.Generator, clean: bool = False) -> tuple[np.ndarray, dict]:
    """Pauses around the speech, then a little reverb or filtering, a level and background noise (clean: only
    the pauses and the level)."""
    info: dict = {}
    lead, trail = rng.uniform(0.05, 0.5, size=2)
    x = np.concatenate([np.zeros(int(lead * SAMPLE_RATE)), x, np.zeros(int(trail * SAMPLE_RATE))])
    if clean:
        level = rng.uniform(-32.0, -16.0)
        x = x / (np.sqrt(np.mean(x**2)) + 1e-9) * 10 ** (level / 20)
        return np.clip(x, -1.0, 1.0).astype(np.float32), {"level": round(float(level), 1)}
    if rng.random() < 0.2:
        rt60 = rng.uniform(0.1, 0.4)
        t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
        ir = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)
        ir[0] = 1.0 / rng.uniform(0.05, 0.3)
        wet = fftconvolve(x, ir)[: len(x)]
        x = wet / (np.max(np.abs(wet)) + 1e-9) * np.max(np.abs(x))
        info["reverb"] = round(float(rt60), 2)
    r = rng.random()
    if r < 0.12:
        cut = rng.uniform(2500, 7000)
        x = sosfilt(butter(4, cut, "lowpass", fs=SAMPLE_RATE, output="sos"), x)
        info["lowpass"] = int(cut)
    elif r < 0.22:
        cut = rng.uniform(80, 350)
        x = sosfilt(butter(2, cut, "highpass", fs=SAMPLE_RATE, output="sos"), x)
        info["highpass"] = int(cut)
    elif r < 0.27:
        x = sosfilt(butter(4, (300, 3400), "bandpass", fs=SAMPLE_RATE, output="sos"), x)
        info["telephone"] = True
    level = rng.uniform(-38.0, -14.0)  # speech RMS, dBFS
    x = x / (np.sqrt(np.mean(x**2)) + 1e-9) * 10 ** (level / 20)
    if rng.random() < 0.75:
        snr = rng.uniform(8.0, 40.0)
        color = ("white", "pink", "brown")[int(rng.integers(3))]
        x = x + colored_noise(len(x), color, rng) * 10 ** ((level - snr) / 20)
        info["noise"] = f"{color}@{snr:.0f}dB"
    info["level"] = round(float(level), 1)
    return np.clip(x, -1.0, 1.0).astype(np.float32), info


def make_clip(i: int, clean: bool = False) -> tuple[int, np.ndarray, dict]:
    rng = np.random.default_rng([SEED, i, 1] if clean else [SEED, i])
    if rng.random() < NO_SPEECH_FRACTION:
        x = no_speech_clip(rng.uniform(0.5, 8.0), rng)
        meta = {"text": "", "speaker": "none"}
    else:
        text = sentence(rng)
        while is_heldout(text):
            text = sentence(rng)
        voice = TRAIN_VOICES[int(rng.integers(len(TRAIN_VOICES)))]
        variant = TRAIN_VARIANTS[int(rng.integers(len(TRAIN_VARIANTS)))]
        speed = int(rng.integers(TRAIN_SPEEDS[0], TRAIN_SPEEDS[1] + 1))
        pitch = int(rng.integers(TRAIN_PITCHES[0], TRAIN_PITCHES[1] + 1))
        x, info = augment(synthesize(text, voice, variant, speed, pitch), rng, clean)
        meta = {"text": text, "speaker": f"{voice}+{variant}", "speed": speed, "pitch": pitch, **info}
    return i, log_mel(x).T.astype(np.float16), meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=16000, help="number of clips")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clean", action="store_true", help="no reverb, filtering or noise on the speech")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    index: list[dict] = [{}] * args.n
    offset = 0
    with open(args.out / "mel.f16.partial", "wb") as f, Pool(args.workers) as pool:
        for i, mel, meta in pool.imap(partial(make_clip, clean=args.clean), range(args.n), chunksize=32):
            f.write(mel.tobytes())
            index[i] = {"offset": offset, "frames": len(mel), **meta}
            offset += len(mel)
            if (i + 1) % 1000 == 0:
                print(f"{i + 1}/{args.n} clips, {offset / 100 / 3600:.2f} h, {time.time() - t0:.0f} s", flush=True)
    (args.out / "mel.f16.partial").rename(args.out / "mel.f16")
    (args.out / "index.json").write_text(json.dumps(index))
    speech = [c for c in index if c["text"]]
    print(
        f"done: {len(index)} clips ({len(index) - len(speech)} without speech), {offset / 100 / 3600:.2f} h of audio,"
        f" {len({c['text'] for c in speech})} distinct sentences, {time.time() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
