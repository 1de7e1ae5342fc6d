"""The soak: ``python -m bench.soak OUT_DIR [--size 0.6b] [--minutes 60] [--set section.key=value ...]``.

Continuous dictation replayed in real time through the running daemon for `--minutes`: the daemon
(`python -m bench.daemon`, the answer length forced as in bench/streaming.py) in VAD mode reads a microphone on
its stdin (`RealtimeMic`: 20 ms blocks, silence between utterances, never a gap in the stream); utterances of
2-12 s of espeak speech follow each other with a 1.5 s pause; `--subscribers` WebSocket clients stay connected
the whole time besides the one that times the latencies, and one more reconnects every minute.

Per minute: resident memory (VmRSS) of the daemon and of its encoder process (sampled every 5 s: mean, max,
last), the speech end -> final text latency of the utterances that ended in it (p50, p95, n), the CPU both used,
and the machine's load average (the machine may be shared: the load says how much). Targets (issue 24): RSS
growth after minute 2 at most 5 % (max RSS of any later minute against minute 2), p95 latency drift at most
10 % (p95 of the last sixth of the run against the first sixth after minute 2). Writes soak.json, soak.md and
soak.png to OUT_DIR. `--minute-s` shortens a "minute" (the smoke test's short mode); real runs keep 60.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.audio import RATE, speech, to_int16
from bench.streaming import _cpu_seconds, bench_daemon, parse_settings
from devkit import daemon_harness
from devkit.daemon_harness import EventCollector, RealtimeMic, RunningDaemon

LENGTHS = (2.0, 5.0, 10.0, 4.0, 7.0, 12.0, 3.0)  # seconds of speech, cycled
PAUSE_S = 1.5
DRAIN_S = 45.0  # after the last clip, how long the final texts are waited for
SAMPLE_S = 5.0
RSS_GROWTH_TARGET = 0.05
DRIFT_TARGET = 0.10
KEPT_UP_TARGET = 0.95  # clips with their final text by the end of the run


def _status_kb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    return float("nan")


class Sampler:
    """A thread sampling VmRSS of `pids` every SAMPLE_S seconds, tagged with the minute it falls in."""

    def __init__(self, pids: dict[str, int], t0: float, minute_s: float) -> None:
        self.pids, self.t0, self.minute_s = pids, t0, minute_s
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(min(SAMPLE_S, self.minute_s / 6)):
            self.sample()

    def sample(self) -> None:
        now = time.monotonic()
        row = {"t": now - self.t0, "minute": int((now - self.t0) // self.minute_s)}
        for name, pid in self.pids.items():
            row[name] = _status_kb(pid, "VmRSS") / 1024
        self.samples.append(row)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()


def _daemon(model_dir: Path, tmp: Path, encoder: str, decoder: str, settings: dict[str, dict]) -> RunningDaemon:
    # a shared machine under load can take minutes to load the 0.6B model: readiness, not load time, is waited for
    daemon_harness.READY_TIMEOUT = max(daemon_harness.READY_TIMEOUT, 300.0)
    return bench_daemon(model_dir, tmp, "continuous", encoder, decoder, settings)


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _open_utterances(collector: EventCollector) -> bool:
    with collector._cond:
        started = {e["utterance_id"] for e in collector.events if e["type"] == "utterance_start"}
        ended = {e["utterance_id"] for e in collector.events if e["type"] == "utterance_end"}
    return bool(started - ended)


def match_utterances(
    events: list[tuple[dict, float]], spoken: list[tuple[float, float, float]], t0: float, minute_s: float
) -> list[dict]:
    """One row per spoken clip: the utterances whose start arrived between its onset and the next clip's onset
    are its own (the VAD may split a clip); its final text is the last commit or end of those, timed from the
    clip's last sample. A clip without an utterance is a row with final_s None (reason "missed"). `events`:
    (event, arrival time) in order of arrival."""
    starts = [(t, e["utterance_id"]) for e, t in events if e["type"] == "utterance_start"]
    per_uid: dict[str, dict] = {}
    for e, t in events:
        uid = e.get("utterance_id")
        if uid is None:
            continue
        slot = per_uid.setdefault(uid, {})
        if e["type"] == "commit":
            slot["commit"] = t
        elif e["type"] == "utterance_end":
            slot["end"], slot["reason"] = t, e["reason"]
    rows = []
    for k, (onset, end, audio_s) in enumerate(spoken):
        until = spoken[k + 1][0] if k + 1 < len(spoken) else float("inf")
        mine = [per_uid[uid] for t, uid in starts if onset <= t < until and "end" in per_uid.get(uid, {})]
        final_at = max((max(u["end"], u.get("commit", 0.0)) for u in mine), default=None)
        rows.append(
            {
                "t": end - t0,
                "minute": int((end - t0) // minute_s),
                "audio_s": audio_s,
                "final_s": None if final_at is None else final_at - end,
                "utterances": len(mine),
                "reason": mine[-1]["reason"] if mine else "missed",
            }
        )
    return rows


def run_soak(
    model_dir: Path,
    minutes: int,
    minute_s: float,
    subscribers: int,
    encoder: str,
    decoder: str,
    settings: dict[str, dict],
    checkpoint: Path | None = None,
) -> dict:
    from qasr_live.control.ctl import send_command

    clips = [to_int16(speech(length, seed=i)) for i, length in enumerate(LENGTHS)]
    with tempfile.TemporaryDirectory(prefix="qasr-soak-") as tmpdir:
        tmp = Path(tmpdir)
        daemon = _daemon(model_dir, tmp, encoder, decoder, settings)
        mic = RealtimeMic(daemon.proc.stdin)
        timer = daemon.subscribe()
        others = [daemon.subscribe() for _ in range(subscribers)]
        churn: EventCollector | None = None
        reconnects = 0
        status = send_command(daemon.runtime_dir, "status")["status"]
        pids = {"daemon": daemon.proc.pid, "encoder": int(status["encoder_pid"])}
        cpu_prev = {k: _cpu_seconds(p) for k, p in pids.items()}
        spoken: list[tuple[float, float, float]] = []  # (onset, end, audio seconds) of every clip
        minute_rows: list[dict] = []
        t0 = time.monotonic()
        sampler = Sampler(pids, t0, minute_s)
        next_minute = 1
        i = 0
        try:
            # The speaker never waits for the daemon: clips and pauses follow each other in real time, as a
            # user dictating would, and a slow recognizer shows as latency, not as a slower soak.
            while time.monotonic() - t0 < minutes * minute_s:
                pcm = clips[i % len(clips)]
                i += 1
                onset, end = mic.say(pcm)
                spoken.append((onset, end, len(pcm) / RATE))
                mic.say(np.zeros(int(PAUSE_S * RATE), np.int16))
                while time.monotonic() - t0 >= next_minute * minute_s and next_minute <= minutes:
                    cpu_now = {k: _cpu_seconds(p) for k, p in pids.items()}
                    minute_rows.append(
                        {
                            "minute": next_minute,
                            "cpu_s": {k: cpu_now[k] - cpu_prev[k] for k in pids},
                            "loadavg_1m": os.getloadavg()[0],
                            # the audio waiting for the recognizer (bounded by streaming.max_backlog_s)
                            "backlog": send_command(daemon.runtime_dir, "status")["status"].get("backlog"),
                        }
                    )
                    cpu_prev = cpu_now
                    next_minute += 1
                    if checkpoint is not None:  # what a killed run leaves: samples and events so far
                        checkpoint.write_text(
                            json.dumps(
                                {
                                    "samples": sampler.samples,
                                    "spoken": spoken,
                                    "minutes": minute_rows,
                                    "events": list(zip(timer.events, timer.arrivals, strict=False)),
                                    "t0": t0,
                                    "minute_s": minute_s,
                                }
                            )
                        )
                    if churn is not None:  # a client that comes and goes, as browsers do
                        churn.close()
                    churn = daemon.subscribe()
                    reconnects += 1
            sampler.stop()
            alive = daemon.alive()
            peak = {k: _status_kb(p, "VmHWM") / 1024 for k, p in pids.items()}
            drain_end = time.monotonic() + DRAIN_S  # the last utterance's final text, however late
            while time.monotonic() < drain_end and _open_utterances(timer):
                time.sleep(0.5)
            time.sleep(1.0)  # the last events reach every subscriber
            with timer._cond:
                events = list(zip(timer.events, timer.arrivals, strict=True))
            utterances = match_utterances(events, spoken, t0, minute_s)
            commits = len(timer.of_type("commit"))
            missed = [len(c.of_type("commit")) for c in others]
        finally:
            for c in [timer, *others, *([churn] if churn else [])]:
                c.close()
            mic.close()
            code = daemon.stop()
    return {
        "pids": pids,
        "samples": sampler.samples,
        "utterances": utterances,
        "minutes": minute_rows,
        "peak_rss_mb": {**peak, "total": peak["daemon"] + peak["encoder"]},
        "commits": commits,
        "commits_per_subscriber": missed,
        "reconnects": reconnects,
        "alive_at_end": alive,
        "exit_code": code,
    }


def summarize(raw: dict, minutes: int, minute_s: float) -> dict:
    """Per-minute rows and the two targets."""
    rows = []
    for m in range(minutes):
        samples = [s for s in raw["samples"] if s["minute"] == m]
        lat = sorted(u["final_s"] for u in raw["utterances"] if u["minute"] == m and u["final_s"] is not None)
        row: dict = {
            "minute": m + 1,
            "utterances": len(lat),
            "final_p50_s": _pct(lat, 50),
            "final_p95_s": _pct(lat, 95),
        }
        for name in ("daemon", "encoder"):
            vals = [s[name] for s in samples]
            row[f"{name}_rss_mb"] = {
                "mean": statistics.fmean(vals) if vals else None,
                "max": max(vals) if vals else None,
                "last": vals[-1] if vals else None,
            }
        totals = [s["daemon"] + s["encoder"] for s in samples]
        row["total_rss_max_mb"] = max(totals) if totals else None
        extra = next((r for r in raw["minutes"] if r["minute"] == m + 1), None)
        if extra:
            row["cpu_percent"] = {k: v / minute_s * 100 for k, v in extra["cpu_s"].items()}
            row["loadavg_1m"] = extra["loadavg_1m"]
            if extra.get("backlog"):
                row["backlog"] = extra["backlog"]
        rows.append(row)
    base_i = max(0, min(2, minutes - 1) - 1)  # minute 2 (minute 1 in a 2-minute run)

    def growth(key: str) -> float | None:
        base = rows[base_i][key]["last"] if key != "total" else rows[base_i]["total_rss_max_mb"]
        later = [(r[key]["max"] if key != "total" else r["total_rss_max_mb"]) for r in rows[base_i + 1 :]]
        later = [v for v in later if v is not None]
        return (max(later) - base) / base if later and base else None

    after = [r for r in rows[base_i:]]
    width = max(1, len(after) // 6)
    done = [u for u in raw["utterances"] if u["final_s"] is not None]
    first = [u["final_s"] for u in done if base_i <= u["minute"] < base_i + width]
    last = [u["final_s"] for u in done if u["minute"] >= minutes - width]
    p95_first, p95_last = _pct(first, 95), _pct(last, 95)
    drift = (p95_last - p95_first) / p95_first if p95_first and p95_last is not None else None
    rss_growth = {"daemon": growth("daemon_rss_mb"), "encoder": growth("encoder_rss_mb"), "total": growth("total")}
    all_lat = [u["final_s"] for u in done]
    kept_up = len(done) / len(raw["utterances"]) if raw["utterances"] else 0.0
    return {
        "per_minute": rows,
        "rss_growth_after_minute_2": rss_growth,
        "latency": {
            "window_minutes": width,
            "p95_first_window_s": p95_first,
            "p95_last_window_s": p95_last,
            "p95_drift": drift,
            "p50_all_s": _pct(all_lat, 50),
            "p95_all_s": _pct(all_lat, 95),
            "n": len(all_lat),
            "clips": len(raw["utterances"]),
            "with_final_fraction": kept_up,
        },
        "targets": {
            "rss_growth_max": RSS_GROWTH_TARGET,
            "p95_drift_max": DRIFT_TARGET,
            "rss_growth_met": rss_growth["total"] is not None and rss_growth["total"] <= RSS_GROWTH_TARGET,
            # latencies of the few utterances a daemon that fell behind finished say nothing about drift
            "kept_up": kept_up >= KEPT_UP_TARGET,
            "drift_met": drift is not None and drift <= DRIFT_TARGET and kept_up >= KEPT_UP_TARGET,
        },
        "reasons": {
            r: sum(u["reason"] == r for u in raw["utterances"]) for r in {u["reason"] for u in raw["utterances"]}
        },
    }


def _fmt(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def markdown(result: dict) -> str:
    s, raw = result["summary"], result["raw"]
    lat, g, peak = s["latency"], s["rss_growth_after_minute_2"], raw["peak_rss_mb"]
    loads = [r["loadavg_1m"] for r in s["per_minute"] if "loadavg_1m" in r]
    lines = [
        f"# Soak: {result['minutes']} minutes of continuous dictation ({result['model']})",
        "",
        f"{result['started']} · {os.cpu_count()} CPU cores · machine load average (1 min) during the run:"
        f" mean {_fmt(statistics.fmean(loads) if loads else None, '.2f')}, max {_fmt(max(loads, default=None), '.2f')}"
        f" · {lat['n']} utterances, {raw['commits']} commits (each of {len(raw['commits_per_subscriber'])} other"
        f" subscribers got {sorted(set(raw['commits_per_subscriber']))}), {raw['reconnects']} reconnects,"
        f" daemon alive at the end: {raw['alive_at_end']}, exit code after SIGTERM {raw['exit_code']}"
        f" · settings {json.dumps(result['settings'])}",
        "",
        f"- RSS growth after minute 2 (max of a later minute against minute 2): daemon {_fmt(g['daemon'], '+.1%')},"
        f" encoder {_fmt(g['encoder'], '+.1%')}, total {_fmt(g['total'], '+.1%')} (target ≤ +5 %:"
        f" {'met' if s['targets']['rss_growth_met'] else 'missed'})",
        f"- speech end → final text p95: {_fmt(lat['p95_first_window_s'], '.3f')} s in the first"
        f" {lat['window_minutes']} minute(s) after minute 2, {_fmt(lat['p95_last_window_s'], '.3f')} s in the last:"
        f" drift {_fmt(lat['p95_drift'], '+.1%')} (target ≤ +10 % with ≥ 95 % of the clips answered:"
        f" {'met' if s['targets']['drift_met'] else 'missed'});"
        f" whole run p50 {_fmt(lat['p50_all_s'], '.3f')} s, p95 {_fmt(lat['p95_all_s'], '.3f')} s",
        f"- {len(raw['utterances'])} clips spoken, {lat['n']} with their final text; the others"
        f" ({sum(u['final_s'] is None for u in raw['utterances'])}) had none when the run ended (the daemon behind)",
        f"- peak RSS (VmHWM): daemon {peak['daemon']:.0f} MB + encoder {peak['encoder']:.0f} MB"
        f" = {peak['total']:.0f} MB",
        "",
        "| minute | utterances | final p50 s | final p95 s | daemon RSS MB (last) | encoder RSS MB (last)"
        " | total max MB | CPU % daemon / encoder | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["per_minute"]:
        cpu = r.get("cpu_percent", {})
        lines.append(
            f"| {r['minute']} | {r['utterances']} | {_fmt(r['final_p50_s'], '.3f')} | {_fmt(r['final_p95_s'], '.3f')}"
            f" | {_fmt(r['daemon_rss_mb']['last'], '.1f')} | {_fmt(r['encoder_rss_mb']['last'], '.1f')}"
            f" | {_fmt(r['total_rss_max_mb'], '.1f')}"
            f" | {_fmt(cpu.get('daemon'), '.0f')} / {_fmt(cpu.get('encoder'), '.0f')}"
            f" | {_fmt(r.get('loadavg_1m'), '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw, rows = result["raw"], result["summary"]["per_minute"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    t = [s["t"] / result["minute_s"] for s in raw["samples"]]
    for name in ("daemon", "encoder"):
        ax1.plot(t, [s[name] for s in raw["samples"]], label=name)
    ax1.plot(t, [s["daemon"] + s["encoder"] for s in raw["samples"]], label="total")
    ax1.set_ylabel("RSS MB")
    ax1.legend()
    ax1.grid(alpha=0.3)
    minutes = [r["minute"] - 0.5 for r in rows]
    ax2.plot(minutes, [r["final_p50_s"] for r in rows], "o-", label="p50")
    ax2.plot(minutes, [r["final_p95_s"] for r in rows], "o-", label="p95")
    ax2.set_ylabel("speech end → final s")
    ax2.set_xlabel("minute")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.suptitle(f"soak: {result['model']}, {result['minutes']} min")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def render(out: Path) -> int:
    """Rewrite soak.md and soak.png (and the summary) from soak.json; from partial.json when the run was
    killed before it wrote soak.json (the minutes it completed, the events received by then)."""
    if (out / "soak.json").exists():
        result = json.loads((out / "soak.json").read_text())
    else:
        part = json.loads((out / "partial.json").read_text())
        minute_s = part.get("minute_s", 60.0)  # the running hour's partial.json predates the key
        raw = {
            "pids": {},
            "samples": part["samples"],
            "utterances": match_utterances(part["events"], part["spoken"], part["t0"], minute_s),
            "minutes": part["minutes"],
            "peak_rss_mb": {
                k: max(s[k] for s in part["samples"])
                for k in ("daemon", "encoder")  # VmRSS max, not VmHWM
            },
            "commits": sum(e["type"] == "commit" for e, _ in part["events"]),
            "commits_per_subscriber": [],
            "reconnects": len(part["minutes"]),
            "alive_at_end": True,
            "exit_code": None,
        }
        raw["peak_rss_mb"]["total"] = raw["peak_rss_mb"]["daemon"] + raw["peak_rss_mb"]["encoder"]
        result = {
            "model": "killed run (partial.json)",
            "started": "",
            "minutes": len(part["minutes"]),
            "minute_s": minute_s,
            "settings": {},
            "cpu_count": os.cpu_count(),
            "raw": raw,
        }
    result["summary"] = summarize(result["raw"], result["minutes"], result["minute_s"])
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    (out / "soak.md").write_text(markdown(result))
    plot(result, out / "soak.png")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="directory for soak.json, soak.md and soak.png")
    parser.add_argument("--size", default="0.6b", help="bench model size (bench/models.py), unless --model-dir")
    parser.add_argument("--model-dir", type=Path, help="an exported model directory instead of the bench's cache")
    parser.add_argument("--encoder", default="int8")
    parser.add_argument("--decoder", default="q4_k")
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--minute-s", type=float, default=60.0, help="seconds per reported minute (tests only)")
    parser.add_argument("--subscribers", type=int, default=3, help="WebSocket subscribers besides the timer's")
    parser.add_argument("--set", action="append", default=[], help="a config setting, section.key=value (repeatable)")
    parser.add_argument(
        "--render", action="store_true", help="only re-render OUT/soak.json, or OUT/partial.json of a killed run"
    )
    args = parser.parse_args()
    if args.minutes < 1:
        parser.error("--minutes must be at least 1")
    if args.render:
        return render(args.out)
    if args.model_dir is None:
        from bench.models import prepare

        model_dir, model = prepare(args.size).model_dir, args.size
    else:
        model_dir, model = args.model_dir, args.model_dir.name
    settings = parse_settings(args.set)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.out.mkdir(parents=True, exist_ok=True)
    raw = run_soak(
        model_dir,
        args.minutes,
        args.minute_s,
        args.subscribers,
        args.encoder,
        args.decoder,
        settings,
        checkpoint=args.out / "partial.json",
    )
    (args.out / "raw.json").write_text(json.dumps(raw))  # kept whatever the summary makes of it
    result = {
        "model": f"{model} {args.decoder}/{args.encoder}",
        "started": started,
        "minutes": args.minutes,
        "minute_s": args.minute_s,
        "settings": settings,
        "cpu_count": os.cpu_count(),
        "summary": summarize(raw, args.minutes, args.minute_s),
        "raw": raw,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1))
    (args.out / "soak.md").write_text(markdown(result))
    plot(result, args.out / "soak.png")
    print(markdown(result), file=sys.stderr)
    # the exit code is reported, not judged: SIGTERM with the stdin source can abort the daemon (issue 24, item 7)
    return 0 if raw["alive_at_end"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
