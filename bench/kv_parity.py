"""Is a q8_0 KV cache exact enough to be the default? f16 KV (the default) against f16 KV with flash attention and
against q8_0 KV (which needs flash attention: llama.cpp keeps a quantized V cache only inside that kernel, so
engine/decoder.py turns it on), through the real offline pipeline:

* the embedded demo model: WER of the held-out sentences (devkit/demo_speech.py, as tests/test_demo_model.py),
  and how many transcripts and token ids are identical to the f16 run;
* the two tiny random checkpoints of the test suite (tests/test_parity.py's cases, f32 and f16 GGUFs): greedy
  token ids identical to f16 KV, and the common prefix where they differ;
* everywhere, the teacher-forced agreement: each setting re-runs the f16 run's exact token sequence (every
  `Decoder.sample` returns what the f16 run sampled there) and counts the steps where its own greedy choice is
  the same. Free runs diverge for good at the first near-tie (random weights have many); this counts how often
  the cache changes the choice at all;
* a real-shaped export (default /work/cache-c/0.6b/model: 0.6B, q4_k decoder, int8 encoder): the same on a few
  clips of synthetic speech and test signals, and the logits of the first steps (teacher-forced) against f16's:
  its random weights repeat one token whatever the audio, so there only the logits tell.

Results and the decision: docs/performance.md, "q8_0 KV cache parity".

    python -m bench.kv_parity bench/results/opt/kv_q8_0_parity.json [--sentences 200] [--real-model DIR]

A measurement, run once by hand (minutes), never by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from devkit.demo_speech import HELDOUT_VOICES, heldout_sentences, heldout_set, synthesize, wer
from qasr_live.config import EngineConfig
from qasr_live.engine.encoder import AudioEncoder
from qasr_live.engine.model_dir import open_model_dir
from qasr_live.errors import QasrError
from qasr_live.model_store import DEMO_MODEL
from qasr_live.offline.pipeline import Transcriber

#: name -> EngineConfig fields; the first is the reference
SETTINGS: dict[str, dict[str, Any]] = {
    "f16": {"kv_cache_type": "f16"},
    "f16+flash": {"kv_cache_type": "f16", "flash_attention": True},
    "q8_0": {"kv_cache_type": "q8_0"},  # flash attention turned on by the decoder
}
#: greedy, nothing that cuts or re-samples a decode: the ids show the KV cache's effect alone
EXACT = {"repetition_guard": False, "fallback_retries": 0}
#: one decoder thread everywhere: on a shared, oversubscribed machine llama.cpp's threads wait on each other (a
#: 0.6B prefill ran 20-100x slower with 2); every setting runs the same way, so the comparison is unaffected
THREADS = {"decoder_threads": 1}
#: logits compared per clip on the real-shaped model (its random weights repeat one token: ids say little there)
LOGIT_STEPS = 12


def _common(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def run_setting(
    model_dir: Path,
    encoder: str,
    decoder: str,
    engine: dict[str, Any],
    clips: list[tuple[np.ndarray, str | None, str]],
    forced: list[list[int]] | None = None,
    logits: list[np.ndarray] | None = None,
) -> tuple[list[Any], float, list[list[int]]]:
    """Transcripts of every (audio, language, context) clip with one engine setting, the wall time, and every
    `sample()` result per clip. ``forced``: the samples of a reference run, returned instead of this run's own
    (teacher forcing; the transcripts are then the reference's). ``logits``: gets the logits of the first
    `LOGIT_STEPS` samples of each clip."""
    model = open_model_dir(model_dir, encoder, decoder)
    enc = AudioEncoder(model.frontend, model.backend, threads=1)
    transcriber = Transcriber(model, EngineConfig(**engine), enc)
    own: list[list[int]] = []
    replay: list[int] = []
    real_sample = transcriber.decoder.sample

    dec = transcriber.decoder

    def sample(index: int = -1) -> int:
        if logits is not None and len(own[-1]) < LOGIT_STEPS:
            ptr = dec._llama.llama_get_logits_ith(dec._ctx, index)
            logits.append(np.ctypeslib.as_array(ptr, shape=(dec.n_vocab,)).copy())
        token = real_sample(index)
        own[-1].append(token)
        return replay.pop(0) if forced is not None else token

    transcriber.decoder.sample = sample  # type: ignore[method-assign]
    t0 = time.perf_counter()
    out = []
    try:
        for k, (audio, language, context) in enumerate(clips):
            own.append([])
            replay[:] = forced[k] if forced is not None else []
            out.append(transcriber.transcribe(audio, language, context))
    finally:
        transcriber.close()
    return out, time.perf_counter() - t0, own


def compare(
    name: str, model_dir: Path, encoder: str, decoder: str, clips: list, extra: dict[str, Any], refs: list[str] | None
) -> dict[str, Any]:
    """Every setting on the same clips: token ids against the first setting's, and WER when ``refs`` are given."""
    runs: dict[str, list[Any]] = {}
    walls: dict[str, float] = {}
    agree: dict[str, tuple[int, int]] = {}
    reference: list[list[int]] = []
    result: dict[str, Any] = {"model": str(model_dir), "encoder": encoder, "decoder": decoder, "clips": len(clips)}
    for setting, fields in SETTINGS.items():
        engine = {**extra, **fields}
        try:
            runs[setting], walls[setting], samples = run_setting(model_dir, encoder, decoder, engine, clips)
            if setting == "f16":
                reference = samples
            else:
                _, _, picks = run_setting(model_dir, encoder, decoder, engine, clips, forced=reference)
                pairs = [
                    (a, b) for ref, own in zip(reference, picks, strict=True) for a, b in zip(ref, own, strict=True)
                ]
                agree[setting] = (sum(a == b for a, b in pairs), len(pairs))
        except QasrError as e:  # e.g. q8_0 blocks of 32 do not divide a head_dim of 16 (tiny "tied")
            result[setting] = {"error": str(e)}
            print(f"{name} {setting}: {e}", flush=True)
            continue
        print(f"{name} {setting}: {walls[setting]:.1f} s", flush=True)
    base = runs["f16"]
    for setting, got in runs.items():
        same_ids = sum(a.token_ids == b.token_ids for a, b in zip(base, got, strict=True))
        prefix = [_common(a.token_ids, b.token_ids) / max(1, len(a.token_ids)) for a, b in zip(base, got, strict=True)]
        tokens = sum(len(b.token_ids) for b in got)
        row: dict[str, Any] = {
            "token_ids_equal_f16": same_ids,
            "text_equal_f16": sum(a.text == b.text for a, b in zip(base, got, strict=True)),
            "mean_common_prefix": round(float(np.mean(prefix)), 4),
            "min_common_prefix": round(float(np.min(prefix)), 4),
            "tokens": tokens,
            "wall_s": round(walls[setting], 1),
        }
        if setting in agree:
            same, steps = agree[setting]
            row["teacher_forced_agreement"] = round(same / max(1, steps), 4)
            row["teacher_forced_steps"] = steps
        if refs is not None:
            rate, errors, words = wer(refs, [t.text for t in got])
            row.update(wer=round(rate, 4), word_errors=errors, words=words)
        result[setting] = row
        print(f"{name} {setting}: {row}", flush=True)
    return result


def demo(n: int) -> dict[str, Any]:
    cases = heldout_set(n)
    clips = [(synthesize(text, *voice), None, "") for text, voice in cases]
    # the demo model's defaults (what `qasr-live transcribe` and the daemon use), only the KV cache differs
    return compare("demo", DEMO_MODEL, "auto", "auto", clips, THREADS, [text for text, _ in cases])


def tiny(work: Path) -> dict[str, Any]:
    from devkit.random_checkpoint import TINY_SPECS, build_random_checkpoint
    from qasr_live.export.exporter import export_checkpoint
    from tests.test_parity import MAX_NEW_TOKENS, cases, make_audio

    clips = [
        (make_audio(seconds, seed), language, context)
        for language, context, items in cases()
        for seed, seconds in items
    ]
    out: dict[str, Any] = {}
    for name, spec in TINY_SPECS.items():
        src = work / "checkpoints" / name
        if not (src / "config.json").exists():
            build_random_checkpoint(src, spec)
        model = work / "models" / name
        if not (model / "manifest.json").exists():
            export_checkpoint(src, model, encoders=("fp32",), decoders=("f32", "f16"), progress=lambda _line: None)
        for decoder in ("f32", "f16"):
            extra = {**EXACT, **THREADS, "max_new_tokens": MAX_NEW_TOKENS}
            out[f"{name}-{decoder}"] = compare(f"tiny {name} {decoder}", model, "fp32", decoder, clips, extra, None)
    return out


def real(model_dir: Path, max_new_tokens: int) -> dict[str, Any]:
    from tests.test_parity import make_audio

    # speech (three held-out demo sentences per clip, ~6-9 s) and test signals, auto language and forced English
    texts = heldout_sentences(9, seed=77)
    speech = [np.concatenate([synthesize(t, *HELDOUT_VOICES[0]) for t in texts[i : i + 3]]) for i in range(0, 9, 3)]
    clips = [(a, None, "") for a in speech] + [(speech[0], "English", "")]
    clips += [(make_audio(s, seed), None, "") for seed, s in ((0, 4.2), (1, 7.9))]
    extra = {**EXACT, **THREADS, "max_new_tokens": max_new_tokens}
    result = compare("real", model_dir, "int8", "q4_k", clips, extra, None)
    # The logits themselves, teacher-forced on the f16 run's tokens (the same positions in every setting): how far
    # each cache moves them, against how far apart the best two candidates are.
    ref_logits: list[np.ndarray] = []
    _, _, ref = run_setting(model_dir, "int8", "q4_k", {**extra, **SETTINGS["f16"]}, clips, logits=ref_logits)
    top2 = np.sort(np.stack(ref_logits), axis=1)[:, -2:]
    result["logits"] = {
        "positions": len(ref_logits),
        "median_top1_margin": round(float(np.median(top2[:, 1] - top2[:, 0])), 4),
    }
    for setting in ("f16+flash", "q8_0"):
        got: list[np.ndarray] = []
        run_setting(model_dir, "int8", "q4_k", {**extra, **SETTINGS[setting]}, clips, forced=ref, logits=got)
        diff = np.stack(got) - np.stack(ref_logits)
        rel = np.linalg.norm(diff, axis=1) / np.linalg.norm(np.stack(ref_logits), axis=1)
        result["logits"][setting] = {
            "relative_l2_median": float(f"{np.median(rel):.3g}"),
            "relative_l2_max": float(f"{np.max(rel):.3g}"),
            "max_abs_diff": float(f"{np.max(np.abs(diff)):.3g}"),
            "top1_equal": int(sum(int(np.argmax(a) == np.argmax(b)) for a, b in zip(got, ref_logits, strict=True))),
        }
        print(f"real logits {setting}: {result['logits'][setting]}", flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the JSON of results")
    ap.add_argument("--sentences", type=int, default=200, help="held-out sentences for the demo model's WER")
    ap.add_argument("--real-model", type=Path, default=Path("/work/cache-c/0.6b/model"))
    ap.add_argument("--real-tokens", type=int, default=48, help="max_new_tokens of the real-shaped model's decodes")
    ap.add_argument("--work", type=Path, default=Path("/tmp/qasr-kv-parity"), help="tiny checkpoints and exports")
    ap.add_argument("--skip", nargs="*", default=(), choices=("demo", "tiny", "real"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f} at start",
        "python": sys.version.split()[0],
        "settings": SETTINGS,
        "wall_s": 0.0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sections = {
        "demo": lambda: demo(args.sentences),
        "tiny": lambda: tiny(args.work),
        "real_0.6b": lambda: real(args.real_model, args.real_tokens),
    }
    for name, run in sections.items():
        if name.split("_")[0] in args.skip or (
            name == "real_0.6b" and not (args.real_model / "manifest.json").exists()
        ):
            continue
        result[name] = run()
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        args.out.write_text(json.dumps(result, indent=1) + "\n")  # after each section: a long run keeps what it has
    print(f"-> {args.out} ({result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
