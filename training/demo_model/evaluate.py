"""Measure an exported demo model (or export a checkpoint first) with the real runtime, as the tests do.

    python3 -m training.demo_model.evaluate MODEL_DIR [--n 200] [--long 125 [--seeds 1,2,3,4,5,6,7,99]]
    python3 -m training.demo_model.evaluate --checkpoint CKPT_DIR [--n 40]     # exports into a temporary dir

Prints the WER on held-out sentences (held-out voice and training voices separately), the words emitted on
no-speech clips and, with --long, the WER of long dictations and the duplicated/dropped words near their
segment boundaries.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from devkit.demo_speech import (
    DemoRecognizer,
    boundary_errors,
    dictation,
    heldout_set,
    no_speech_clip,
    normalize,
    synthesize,
    wer,
)


def evaluate(
    model_dir: Path, n: int, long_seconds: float, seeds: list[int], encoder: str, decoder: str, show: int
) -> None:
    t0 = time.time()
    rec = DemoRecognizer(model_dir, encoder, decoder)
    print(f"model {model_dir} (encoder {rec.model.encoder_precision}, decoder {rec.model.decoder_precision})")
    groups: dict[str, tuple[list[str], list[str]]] = {"held-out voice": ([], []), "training voices": ([], [])}
    for k, (text, voice) in enumerate(heldout_set(n)):
        hyp = rec(synthesize(text, *voice)).text
        refs, hyps = groups["held-out voice" if k < n // 2 else "training voices"]
        refs.append(text)
        hyps.append(hyp)
        if normalize(text) != normalize(hyp) and show > 0:
            show -= 1
            print(f"  REF {text}\n  HYP {hyp}")
    all_refs = [r for g in groups.values() for r in g[0]]
    all_hyps = [h for g in groups.values() for h in g[1]]
    for name, (refs, hyps) in groups.items():
        rate, errors, words = wer(refs, hyps)
        print(f"WER {name}: {100 * rate:.2f} % ({errors}/{words} words, {len(refs)} sentences)")
    rate, errors, words = wer(all_refs, all_hyps)
    print(f"WER all: {100 * rate:.2f} % ({errors}/{words} words, {len(all_refs)} sentences)")
    rng = np.random.default_rng(7)
    emitted = [rec(no_speech_clip(rng.uniform(0.5, 8.0), rng)).text for _ in range(30)]
    print(f"no speech: {sum(len(normalize(t)) for t in emitted)} words on {len(emitted)} clips {emitted[:3]}")
    if long_seconds:
        totals: Counter[str] = Counter()
        for seed in seeds:
            audio, texts = dictation(long_seconds, seed=seed)
            result = rec(audio)
            counts = boundary_errors(" ".join(texts), [s.text for s in result.segments])
            rate, errors, words = wer([" ".join(texts)], [result.text])
            print(f"long {len(audio) / 16000:.0f} s (seed {seed}): WER {100 * rate:.2f} % ({errors}/{words}), {counts}")
            totals.update(errors=errors, words=words, **{k: counts[k] for k in ("boundaries", "duplicated", "dropped")})
        if len(seeds) > 1:
            print(
                f"long, {len(seeds)} dictations: WER {100 * totals['errors'] / totals['words']:.2f} % "
                f"({totals['errors']}/{totals['words']}), {totals['duplicated']} duplicated / {totals['dropped']} "
                f"dropped words near {totals['boundaries']} joins"
            )
    rec.close()
    print(f"{time.time() - t0:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, nargs="?")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--long", type=float, default=0.0, help="seconds of continuous dictation (0 = none)")
    parser.add_argument(
        "--seeds",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[99],
        help="dictations to run with --long, by seed (99: the gate's; 1,2,3,4,5,6,7,99: the docs' eight)",
    )
    parser.add_argument("--encoder", default="auto")
    parser.add_argument("--decoder", default="auto")
    parser.add_argument("--show", type=int, default=5, help="errors to print")
    args = parser.parse_args()
    if args.checkpoint:
        from qasr_live.export.exporter import export_checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            out = export_checkpoint(
                args.checkpoint, Path(tmp) / "model", ("fp32",), ("f16",), progress=lambda _line: None
            )
            evaluate(out, args.n, args.long, args.seeds, args.encoder, args.decoder, args.show)
    else:
        evaluate(args.model, args.n, args.long, args.seeds, args.encoder, args.decoder, args.show)


if __name__ == "__main__":
    main()
