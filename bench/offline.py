"""Offline measurements, one side per process: ``python -m bench.offline {ours,official} SIZE OUT.json``.

ours: encoder ms per audio second (fp32/int8/int4), decoder prefill and generation tokens/s (f16/q8_0/q4_k),
offline RTF on 60 s of speech per precision pair. official: the same quantities from the `qwen-asr`
transformers implementation (fp32, as its README runs it on a CPU) on the same weights and audio with the same
answer length. Each side runs in its own process so that thread settings and peak memory do not mix.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.answers import TOKENS_PER_SECOND, tokens_per_second
from bench.audio import speech
from bench.models import DECODERS, ENCODERS, prepare

THREADS = 2
COMPONENT_SECONDS = 10.0  # audio for the component measurements
OFFLINE_SECONDS = 60.0
GEN_TOKENS = 64
PAIRS = (("f16", "fp32"), ("q8_0", "int8"), ("q4_k", "int8"), ("q4_k", "int4"))  # decoder, encoder


def _median_time(fn, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ours(size: str) -> dict:
    from qasr_live.config import EngineConfig
    from qasr_live.engine.encoder import AudioEncoder
    from qasr_live.engine.features import log_mel
    from qasr_live.engine.generation import generate
    from qasr_live.engine.loading import open_decoder
    from qasr_live.engine.model_dir import open_model_dir
    from qasr_live.engine.prompt import build_prompt
    from qasr_live.engine.worker import EncoderWorker
    from qasr_live.offline.pipeline import Transcriber

    bench = prepare(size)
    mel = log_mel(speech(COMPONENT_SECONDS))
    seconds = mel.shape[1] / 100
    result: dict = {"encoder": {}, "decoder": {}, "offline": {}}
    rows = None
    for precision in ENCODERS:
        model = open_model_dir(bench.model_dir, precision, "q4_k")
        encoder = AudioEncoder(model.frontend, model.backend, THREADS)
        out = encoder.encode(mel)  # warm-up
        rows = out if precision == "int8" else rows
        t = _median_time(lambda encoder=encoder: encoder.encode(mel))
        result["encoder"][precision] = {"ms_per_audio_s": t / seconds * 1000, "seconds": t, "audio_s": seconds}
        print(f"[ours {size}] encoder {precision}: {t / seconds * 1000:.1f} ms per audio second", file=sys.stderr)
        del encoder
    engine = EngineConfig(decoder_threads=THREADS, n_ctx=4096)
    for precision in DECODERS:
        model = open_model_dir(bench.model_dir, "int8", precision)
        decoder = open_decoder(model, engine)
        prompt = build_prompt(decoder.tokenize, "", "English", [rows])

        def prefill(decoder=decoder, prompt=prompt) -> None:
            decoder.rewind(0)
            decoder.feed_tokens(prompt.head, want_logits=False)
            decoder.feed_embeddings(np.concatenate(prompt.rows))
            decoder.feed_tokens(prompt.tail)

        prefill()  # warm-up
        t_prefill = _median_time(prefill)
        gen_times = []
        for _ in range(2):
            prefill()
            t = time.perf_counter()
            n = len(generate(decoder, set(), GEN_TOKENS, repetition_guard=False).tokens)
            gen_times.append(time.perf_counter() - t)
        t_gen = min(gen_times)
        result["decoder"][precision] = {
            "prefill_tokens": prompt.n_positions,
            "prefill_tok_s": prompt.n_positions / t_prefill,
            "gen_tokens": n,
            "gen_tok_s": n / t_gen,
        }
        print(
            f"[ours {size}] decoder {precision}: prefill {prompt.n_positions / t_prefill:.0f} tok/s,"
            f" generation {n / t_gen:.1f} tok/s",
            file=sys.stderr,
        )
        decoder.close()
    audio = speech(OFFLINE_SECONDS, seed=1)
    engine = EngineConfig(decoder_threads=THREADS)
    for decoder_precision, encoder_precision in PAIRS:
        model = open_model_dir(bench.model_dir, encoder_precision, decoder_precision)
        with EncoderWorker.for_offline(model.frontend, model.backend, 1, THREADS) as worker:  # as `transcribe`
            transcriber = Transcriber(model, engine, worker, answer_length=tokens_per_second(TOKENS_PER_SECOND))
            transcriber.transcribe(audio[: 2 * 16000], language="English")  # warm-up
            tr = transcriber.transcribe(audio, language="English")
            transcriber.close()
        s = tr.stats
        key = f"{decoder_precision}/{encoder_precision}"
        result["offline"][key] = {
            "audio_s": s.audio_seconds,
            "wall_s": s.wall_seconds,
            "rtf": s.wall_seconds / s.audio_seconds,
            "encoder_s": s.encoder_seconds,
            "prefill_s": s.prefill_seconds,
            "prefill_tokens": s.prefill_tokens,
            "generate_s": s.generate_seconds,
            "generated_tokens": s.generated_tokens,
        }
        print(f"[ours {size}] offline {key}: RTF {s.wall_seconds / s.audio_seconds:.3f}", file=sys.stderr)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def official(size: str) -> dict:
    import torch
    from qwen_asr import Qwen3ASRModel

    torch.set_num_threads(THREADS)
    bench = prepare(size)
    t = time.perf_counter()
    asr = Qwen3ASRModel.from_pretrained(str(bench.checkpoint), dtype=torch.float32, max_new_tokens=1)
    load_s = time.perf_counter() - t
    model, processor = asr.model, asr.processor

    def transcribe(audio: np.ndarray, tokens: int) -> float:
        """The official user path (`transcribe`), its answer forced to `tokens` tokens."""
        asr.max_new_tokens = tokens
        model.thinker.generation_config.min_new_tokens = tokens  # end-of-sequence suppressed until then
        t = time.perf_counter()
        with torch.inference_mode():
            asr.transcribe(audio=(audio, 16000), language="English")
        return time.perf_counter() - t

    audio10 = speech(COMPONENT_SECONDS)
    features = processor.feature_extractor(audio10, sampling_rate=16000, return_tensors="pt")
    mel = features["input_features"][0]
    seconds = len(audio10) / 16000
    tower = model.thinker.audio_tower

    def encode() -> None:
        with torch.inference_mode():
            tower(mel, feature_lens=torch.tensor([mel.shape[1]]))

    encode()
    t_enc = _median_time(encode)
    print(f"[official {size}] encoder fp32: {t_enc / seconds * 1000:.1f} ms per audio second", file=sys.stderr)
    transcribe(audio10, 1)  # warm-up
    t_one = statistics.median(transcribe(audio10, 1) for _ in range(2))
    t_many = transcribe(audio10, GEN_TOKENS + 1)
    prompt_len = len(processor(text=[asr._build_text_prompt("", "English")], audio=[audio10])["input_ids"][0])
    gen_tok_s = GEN_TOKENS / (t_many - t_one)
    prefill_tok_s = prompt_len / max(1e-9, t_one - t_enc)
    print(f"[official {size}] prefill {prefill_tok_s:.0f} tok/s, generation {gen_tok_s:.1f} tok/s", file=sys.stderr)
    audio = speech(OFFLINE_SECONDS, seed=1)
    tokens = round(TOKENS_PER_SECOND * len(audio) / 16000)
    t_off = transcribe(audio, tokens)
    print(f"[official {size}] offline RTF {t_off / (len(audio) / 16000):.3f}", file=sys.stderr)
    return {
        "load_s": load_s,
        "encoder": {"fp32": {"ms_per_audio_s": t_enc / seconds * 1000, "seconds": t_enc, "audio_s": seconds}},
        "decoder": {
            "fp32": {
                "prefill_tokens": prompt_len,
                "prefill_tok_s": prefill_tok_s,
                "gen_tokens": GEN_TOKENS,
                "gen_tok_s": gen_tok_s,
            }
        },
        "offline": {
            "fp32/fp32": {
                "audio_s": len(audio) / 16000,
                "wall_s": t_off,
                "rtf": t_off / (len(audio) / 16000),
                "generated_tokens": tokens,
            }
        },
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> int:
    side, size, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    result = {"ours": ours, "official": official}[side](size)
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
