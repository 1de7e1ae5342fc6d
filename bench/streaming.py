"""Streaming measurements: ``python -m bench.streaming SIZE OUT.json [--reps N] [--set section.key=value ...]``.

* tick cost: the StreamingRecognizer in this process, 10 s of speech added 0.3 s at a time with a partial tick
  after each addition (what the daemon does at partial_interval_ms 300), then the final decode; every tick's
  encoder / prefill / generation split and KV-cache reuse.
* a dictation session through the real daemon (`qasr-live serve` run as `python -m bench.daemon`, which forces
  the answer length; subprocess, readiness by sd_notify) with the q4_k decoder and int8 encoder, fed in real time
  through its stdin as a microphone: 20 utterances (4 rounds of 2, 3, 5, 7 and 10 s, shuffled; pauses of 0.5-3 s,
  0.9-3 s in VAD mode where a pause under the hangover is no end) in ONE daemon per mode, so that later ones run
  with a full decoder memory as a user's do. Per utterance: first-partial latency (speech onset -> first partial
  on the WebSocket), speech end -> final text (VAD mode, hangover included) or key release -> final text
  (push-to-talk, release sent over the ctl socket the instant the last sample is written), and the daemon's own
  profile of it (the utterance_end event's latency: partial decodes, the final decode's encoder / prefill /
  generation split). Per round p50/p95, the slope over the session, the growth of the last round over the first.
* the in-run yardstick: each utterance transcribed from nothing by the offline pipeline through the same kind of
  processes and threads, after the daemons stopped;
* CPU while armed for 60 s (push-to-talk: microphone closed; continuous: listening to silence); peak RSS of the
  daemon and its encoder process; cold start to ready.

Writes OUT (JSON), and next to it OUT-without-suffix.md (tables) and .png (latency against utterance index).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bench.answers import TOKENS_PER_SECOND, tokens_per_second
from bench.audio import RATE, speech, to_int16
from bench.models import prepare
from bench.offline import peak_rss_mb
from devkit.daemon_harness import RealtimeMic, RunningDaemon, write_config

DECODER, ENCODER = "q4_k", "int8"
TICK_STEP_S = 0.3
IDLE_SECONDS = 60.0


def parse_settings(pairs: list[str]) -> dict[str, dict]:
    """["engine.decoder_threads=1", "streaming.reencode_open_window=false"] -> {section: {key: value}}."""
    out: dict[str, dict] = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


def tick_costs(size: str, settings: dict[str, dict]) -> dict:
    from qasr_live.config import EngineConfig, StreamingConfig
    from qasr_live.engine.model_dir import open_model_dir
    from qasr_live.engine.worker import EncoderWorker
    from qasr_live.streaming.recognizer import StreamingRecognizer

    bench = prepare(size)
    model = open_model_dir(bench.model_dir, ENCODER, DECODER)
    engine = EngineConfig(**settings.get("engine", {}))
    audio = speech(10.0, seed=3)
    step = int(TICK_STEP_S * RATE)
    with EncoderWorker(model.frontend, model.backend, engine.encoder_threads) as worker:
        streaming = StreamingConfig(**settings.get("streaming", {}))
        rec = StreamingRecognizer(
            model, engine, streaming, worker, language="English", answer_length=tokens_per_second(TOKENS_PER_SECOND)
        )
        ticks, finals = [], []
        for run in range(2):  # the first utterance warms up; the second has the first in its decoder memory
            rec.begin()
            for i in range(0, len(audio), step):
                rec.add_audio(audio[i : i + step])
                s = rec.tick().stats
                if run:
                    ticks.append({k: getattr(s, k) for k in s.__slots__})
            s = rec.finish().stats
            finals.append({k: getattr(s, k) for k in s.__slots__})
        rec.close()
    for t in ticks:
        print(
            f"[tick {size}] {t['audio_s']:5.1f} s: {t['total_ms']:6.0f} ms (encoder {t['encoder_ms']:.0f},"
            f" prefill {t['prefill_ms']:.0f} for {t['prefill_tokens']} of {t['prompt_tokens']},"
            f" generate {t['generate_ms']:.0f} for {t['generated_tokens']})",
            file=sys.stderr,
        )
    return {"ticks": ticks, "final": finals[-1], "step_s": TICK_STEP_S}


def _utterance_events(collector, since: int) -> dict[str, dict]:
    """utterance id -> its first partial, last commit and end (event, arrival) after event index `since`."""
    out: dict[str, dict] = {}
    for event, t in zip(collector.events[since:], collector.arrivals[since:], strict=True):
        uid = event.get("utterance_id")
        if uid is None:
            continue
        slot = out.setdefault(uid, {})
        if event["type"] == "partial" and "partial" not in slot:
            slot["partial"] = t
        elif event["type"] == "commit":
            slot["commit"] = t
        elif event["type"] == "utterance_end":
            slot["end"], slot["end_event"] = t, event
    return out


def _read_once(model_dir: Path) -> None:
    """Read the model files once, so that the page cache holds them: the first decode of a daemon otherwise pays
    for faulting the mapped GGUF in from disk (measured 40 s on this machine's disk after other work evicted it),
    which is a cold-start cost, not a latency."""
    for path in model_dir.iterdir():
        if path.suffix in (".gguf", ".onnx"):
            with path.open("rb") as f:
                while f.read(1 << 24):
                    pass


def _daemon(size: str, tmp: Path, mode: str, settings: dict[str, dict]) -> RunningDaemon:
    bench = prepare(size)
    _read_once(bench.model_dir)
    return bench_daemon(bench.model_dir, tmp, mode, ENCODER, DECODER, settings)


def bench_daemon(
    model_dir: Path, tmp: Path, mode: str, encoder: str, decoder: str, settings: dict[str, dict]
) -> RunningDaemon:
    """The daemon as every benchmark runs it: `python -m bench.daemon` forcing the answer length, the stdin
    microphone, English, no typing or hotkeys, the given precisions and `settings` over the defaults."""
    config = write_config(
        tmp / "config.yaml",
        model_dir,
        tmp,
        engine={"decoder_threads": 2, "repetition_guard": True, "max_new_tokens": 512, **settings.get("engine", {})},
        recognition={"language": "English"},
        audio={"source": "-"},
        trigger={"mode": mode},
        typing={"enabled": False},
        hotkeys={"enabled": False},
    )
    cfg = yaml.safe_load(config.read_text())
    cfg["model"].update(encoder_precision=encoder, decoder_precision=decoder)
    for section, values in settings.items():
        if section != "engine":
            cfg.setdefault(section, {}).update(values)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    command = ("-m", "bench.daemon", "--tokens-per-second", str(TOKENS_PER_SECOND))
    return RunningDaemon(config, tmp, stdin=subprocess.PIPE, command=command)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime in clock ticks (USER_HZ = 100)


def _armed_cpu(pids: list[int], seconds: float) -> float:
    """Percent of one core used by `pids` together over `seconds` of wall time."""
    before, t0 = sum(_cpu_seconds(p) for p in pids), time.monotonic()
    time.sleep(seconds)
    return (sum(_cpu_seconds(p) for p in pids) - before) / (time.monotonic() - t0) * 100


ROUND_LENGTHS = (2.0, 3.0, 5.0, 7.0, 10.0)  # every round says each length once, in a shuffled order
ROUNDS = 4  # 20 utterances per daemon: the 16th-20th are compared with the 1st-5th
GAPS = {"ptt": (0.5, 3.0), "continuous": (0.9, 3.0)}  # VAD: a pause shorter than the 0.6 s hangover is no end


def session_plan(rounds: int, mode: str, seed: int = 26) -> list[tuple[float, float]]:
    """(utterance length, pause after it) for a dictation session: `rounds` rounds of ROUND_LENGTHS shuffled,
    pauses drawn from GAPS[mode]. Seeded: both modes and every run say the same thing."""
    rng = np.random.default_rng(seed)
    plan = []
    for _ in range(rounds):
        for length in rng.permutation(ROUND_LENGTHS):
            plan.append((float(length), float(rng.uniform(*GAPS[mode]))))
    return plan


def daemon_run(size: str, mode: str, rounds: int, settings: dict[str, dict], idle_s: float = IDLE_SECONDS) -> dict:
    """One daemon in `mode` ("continuous" = VAD, or "ptt") through a whole dictation session: latencies and the
    daemon's own profile per utterance, armed CPU, RSS."""
    from qasr_live.control.ctl import send_command

    with tempfile.TemporaryDirectory(prefix=f"qasr-bench-{mode}-") as tmpdir:
        tmp = Path(tmpdir)
        daemon = _daemon(size, tmp, mode, settings)
        mic = RealtimeMic(daemon.proc.stdin)
        collector = daemon.subscribe()
        rows = []
        try:
            time.sleep(1.0)
            for index, (length, gap) in enumerate(session_plan(rounds, mode)):
                pcm = to_int16(speech(length, seed=1000 + index))
                since = len(collector.events)
                if mode == "ptt":
                    send_command(daemon.runtime_dir, "ptt-press")
                    onset, end = mic.say(np.concatenate([np.zeros(RATE // 10, np.int16), pcm]))
                    onset += 0.1
                    send_command(daemon.runtime_dir, "ptt-release")
                else:
                    onset, end = mic.say(pcm)
                collector.wait_for(
                    lambda e, since=since: (
                        e["type"] == "utterance_end" and e["utterance_id"] in _utterance_events(collector, since)
                    ),
                    timeout=120,
                )
                utts = _utterance_events(collector, since)
                if len(utts) != 1:
                    raise RuntimeError(f"{mode} utterance {index + 1}: expected one utterance, got {len(utts)}")
                (u,) = utts.values()
                final_at = max(u.get("commit", u["end"]), u["end"]) if "commit" in u else u["end"]
                rows.append(
                    {
                        "index": index + 1,
                        "round": index // len(ROUND_LENGTHS) + 1,
                        "length_s": length,
                        "gap_s": gap,
                        "audio_s": len(pcm) / RATE,
                        "first_partial_s": u["partial"] - onset if "partial" in u else None,
                        "final_s": final_at - end,
                        "reason": u["end_event"]["reason"],
                        "daemon_latency": u["end_event"]["latency"],
                        "pcm_seed": 1000 + index,
                    }
                )
                r = rows[-1]
                print(
                    f"[{mode} {size}] #{index + 1:2d} {length:4.0f} s: first partial {r['first_partial_s']}, final"
                    f" {r['final_s']:.3f} s after speech end ({r['reason']}; {r['daemon_latency']})",
                    file=sys.stderr,
                )
                mic.say(np.zeros(int(gap * RATE), np.int16))  # the pause before the next utterance
            status = send_command(daemon.runtime_dir, "status")["status"]
            pids = [daemon.proc.pid, status["encoder_pid"]]
            if mode == "ptt":
                mic.close()  # push-to-talk keeps the microphone closed while waiting for the key
            armed = _armed_cpu(pids, idle_s)
            print(f"[{mode} {size}] armed CPU over {idle_s:.0f} s: {armed:.2f} % of a core", file=sys.stderr)
            rss = {"daemon": peak_rss_mb(pids[0]), "encoder": peak_rss_mb(pids[1])}
        finally:
            collector.close()
            mic.close()
            daemon.stop()
    return {
        "mode": mode,
        "ready_s": daemon.ready_seconds,
        "utterances": rows,
        "armed_cpu_percent": armed,
        "armed_seconds": idle_s,
        "peak_rss_mb": {**rss, "total": rss["daemon"] + rss["encoder"]},
    }


def offline_yardstick(size: str, seeds: dict[int, float], settings: dict[str, dict]) -> dict[int, float]:
    """Seconds to transcribe each utterance from nothing with the offline pipeline, through the same kind of
    processes and threads as the daemon (encoder worker subprocess, decoder threads), the same forced answer
    length: the in-run yardstick of the streaming latencies. `seeds`: speech seed -> length."""
    from qasr_live.config import EngineConfig
    from qasr_live.engine.model_dir import open_model_dir
    from qasr_live.engine.worker import EncoderWorker
    from qasr_live.offline.pipeline import Transcriber

    bench = prepare(size)
    model = open_model_dir(bench.model_dir, ENCODER, DECODER)
    engine = EngineConfig(**{"decoder_threads": 2, **settings.get("engine", {})})
    out = {}
    with EncoderWorker(model.frontend, model.backend, engine.encoder_threads) as worker:
        transcriber = Transcriber(model, engine, worker, answer_length=tokens_per_second(TOKENS_PER_SECOND))
        transcriber.transcribe(speech(2.0, seed=1), language="English")  # warm-up
        for seed, length in seeds.items():
            t = time.perf_counter()
            transcriber.transcribe(speech(length, seed=seed), language="English")
            out[seed] = time.perf_counter() - t
        transcriber.close()
    return out


def summarize(rows: list[dict], key: str) -> dict:
    """p50/p95 of `key` per utterance length."""
    out = {}
    for length in ROUND_LENGTHS:
        values = sorted(r[key] for r in rows if r["length_s"] == length and r[key] is not None)
        if values:
            out[f"{length:g}"] = {
                "p50": statistics.median(values),
                "p95": float(np.percentile(values, 95)),
                "n": len(values),
            }
    return out


def _p(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def session_summary(run: dict) -> dict:
    """Per round p50/p95 of the latencies, their slope over the session, the growth of the last round over the
    first, and the final latency as a fraction of the offline transcription of the same utterance."""
    rows = run["utterances"]
    out: dict = {"rounds": []}
    for r in sorted({u["round"] for u in rows}):
        mine = [u for u in rows if u["round"] == r]
        final = [u["final_s"] for u in mine]
        first = [u["first_partial_s"] for u in mine if u["first_partial_s"] is not None]
        out["rounds"].append(
            {
                "round": r,
                "final_p50": _p(final, 50),
                "final_p95": _p(final, 95),
                "first_partial_p50": _p(first, 50),
                "first_partial_p95": _p(first, 95),
                "final_over_offline_p50": _p([u["final_s"] / u["offline_s"] for u in mine if "offline_s" in u], 50),
            }
        )
    index = np.array([u["index"] for u in rows], float)
    final = np.array([u["final_s"] for u in rows])
    out["final_slope_ms_per_utterance"] = float(np.polyfit(index, final, 1)[0] * 1000) if len(rows) > 1 else None
    first_round, last_round = out["rounds"][0], out["rounds"][-1]
    out["final_growth"] = last_round["final_p50"] / first_round["final_p50"]
    five = [u for u in rows if u["length_s"] == 5.0 and "offline_s" in u]
    out["five_s"] = {
        "final": [u["final_s"] for u in five],
        "offline": [u["offline_s"] for u in five],
        "final_over_offline": [u["final_s"] / u["offline_s"] for u in five],
    }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("size")
    parser.add_argument("out", type=Path)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"rounds of {len(ROUND_LENGTHS)} utterances")
    parser.add_argument("--idle", type=float, default=IDLE_SECONDS, help="seconds of armed CPU measurement")
    parser.add_argument("--set", action="append", default=[], help="a config setting, section.key=value (repeatable)")
    parser.add_argument("--modes", default="continuous,ptt", help="daemon modes to measure")
    parser.add_argument("--no-ticks", action="store_true", help="skip the in-process tick-cost measurement")
    args = parser.parse_args()
    settings = parse_settings(args.set)
    result: dict = {"settings": settings}
    if not args.no_ticks:
        result["tick"] = tick_costs(args.size, settings)
    runs = {mode: daemon_run(args.size, mode, args.rounds, settings, args.idle) for mode in args.modes.split(",")}
    seeds = {u["pcm_seed"]: u["length_s"] for run in runs.values() for u in run["utterances"]}
    offline = offline_yardstick(args.size, seeds, settings)
    for mode, run in runs.items():
        for u in run["utterances"]:
            u["offline_s"] = offline[u["pcm_seed"]]
        run["first_partial"] = summarize(run["utterances"], "first_partial_s")
        run["final"] = summarize(run["utterances"], "final_s")
        run["session"] = session_summary(run)
        result[mode] = run
    args.out.write_text(json.dumps(result, indent=1))
    from bench.session_report import write_session_report

    write_session_report(result, args.out.parent / args.out.stem, args.size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
