"""The benchmark suite's own code path, end to end on a tiny model (`python -m bench.run --sizes tiny --quick`):
both sides, the daemon runs, the JSON, the Markdown table and the plots. The figures of a tiny model mean
nothing, so nothing here looks at them beyond their presence: speed is the benchmark's business, not a test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_smoke_run_writes_results_table_and_plots(tmp_path: Path) -> None:
    out, docs = tmp_path / "results", tmp_path / "performance.md"
    docs.write_text("# Performance\n\nhand-written text stays\n")
    env = {**os.environ, "QASR_BENCH_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "bench.run", "--sizes", "tiny", "--quick", "--out", str(out), "--docs", str(docs)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]

    run = json.loads((out / "tiny.json").read_text())
    assert set(run["official"]["offline"]) == {"fp32/fp32"}
    assert set(run["ours"]["offline"]) == {"f16/fp32", "q8_0/int8", "q4_k/int8", "q4_k/int4"}
    assert set(run["ours"]["encoder"]) == {"fp32", "int8", "int4"}
    assert set(run["ours"]["decoder"]) == {"f16", "q8_0", "q4_k"}
    assert all(r["generated_tokens"] == 240 for r in run["ours"]["offline"].values())  # forced: 4 per second
    for mode in ("continuous", "ptt"):  # --quick: one round of the session, each length once in a shuffled order
        s = run["streaming"][mode]
        assert sorted(u["length_s"] for u in s["utterances"]) == [2.0, 3.0, 5.0, 7.0, 10.0]
        assert [u["index"] for u in s["utterances"]] == [1, 2, 3, 4, 5]
        assert set(s["final"]) == {"2", "3", "5", "7", "10"} and s["ready_s"] > 0 and s["peak_rss_mb"]["total"] > 0
        assert all(u["offline_s"] > 0 and u["daemon_latency"]["decode_ms"] >= 0 for u in s["utterances"])
        assert len(s["session"]["rounds"]) == 1 and s["session"]["five_s"]["final_over_offline"]
    assert run["streaming"]["continuous"]["utterances"][0]["reason"] == "silence"
    assert all(u["reason"] == "key_release" for u in run["streaming"]["ptt"]["utterances"])

    text = docs.read_text()
    assert text.startswith("# Performance\n\nhand-written text stays\n")
    assert "| tiny | q4_k/int8 |" in text and "| tiny | push-to-talk | 10 s | 1 |" in text
    assert "| push-to-talk: key release → final | 1 | 1–5 |" in (out / "session-tiny.md").read_text()
    for name in ("latency.png", "rtf.png", "tokens_per_second.png", "session-tiny.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_bench_smoke_run(tmp_path: Path) -> None:
    """`python -m bench.export --sizes tiny`: both exporters, the pull from a local Hub, JSON, table and plot."""
    out, docs = tmp_path / "results", tmp_path / "performance.md"
    docs.write_text("# Performance\n\nhand-written text stays\n")
    env = {**os.environ, "QASR_BENCH_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "bench.export", "--sizes", "tiny", "--out", str(out), "--docs", str(docs)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = json.loads((out / "export.json").read_text())
    for side in ("torch", "torchfree", "pull"):
        assert run[side]["seconds"] > 0 and run[side]["peak_rss_mb"] > 0 and run[side]["steps"]
    assert [s["step"] for s in run["torch"]["steps"]][-1].startswith("decoder q4_k")
    text = docs.read_text()
    assert text.startswith("# Performance\n\nhand-written text stays\n") and "| tiny | | **ratio** |" in text
    assert (out / "export.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_soak_short_mode(tmp_path: Path, tiny_models) -> None:
    """`python -m bench.soak --minutes 2` on a tiny model, its "minutes" shortened to 15 s: the real daemon fed in
    real time with subscribers connected, per-minute RSS and latency rows, the two targets, JSON, Markdown, PNG."""
    out = tmp_path / "soak"
    cmd = [
        sys.executable, "-m", "bench.soak", str(out), "--model-dir", str(tiny_models["tied"]),
        "--decoder", "q8_0", "--encoder", "int8", "--minutes", "2", "--minute-s", "15", "--subscribers", "2",
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "soak.json").read_text())
    rows = run["summary"]["per_minute"]
    assert [r["minute"] for r in rows] == [1, 2]
    assert all(r["daemon_rss_mb"]["last"] > 0 and r["encoder_rss_mb"]["last"] > 0 for r in rows)
    # the audio waiting for the recognizer, as `ctl status` counts it, once a minute (bounded: issue #24)
    assert all(r["backlog"]["limit_s"] == 120 and r["backlog"]["audio_s"] <= 120.5 for r in rows)
    assert sum(r["utterances"] for r in rows) >= 2 and run["summary"]["latency"]["n"] >= 2
    # every subscriber saw every commit the timing client saw: nothing dropped while the soak ran
    assert run["raw"]["commits"] > 0 and set(run["raw"]["commits_per_subscriber"]) == {run["raw"]["commits"]}
    assert run["raw"]["alive_at_end"] and run["raw"]["reconnects"] == 2
    growth = run["summary"]["rss_growth_after_minute_2"]
    assert all(isinstance(growth[k], float) for k in ("daemon", "encoder", "total"))
    assert isinstance(run["summary"]["latency"]["p95_drift"], float)
    assert set(run["summary"]["targets"]) == {
        "rss_growth_max",
        "p95_drift_max",
        "rss_growth_met",
        "kept_up",
        "drift_met",
    }
    assert "| 2 |" in (out / "soak.md").read_text()
    assert (out / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a killed run leaves partial.json (every completed minute): --render makes the report from it
    (out / "soak.json").unlink()
    rendered = subprocess.run([*cmd[:4], "--render"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    again = json.loads((out / "soak.json").read_text())
    assert again["minutes"] >= 1 and again["summary"]["latency"]["clips"] >= 2
