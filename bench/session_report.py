"""The Markdown table and the plot of a dictation session benchmark (bench/streaming.py): latency per round and
against the utterance index, with the offline transcription of the same utterances as the yardstick."""

from __future__ import annotations

from pathlib import Path

MODES = (("continuous", "VAD: speech end → final"), ("ptt", "push-to-talk: key release → final"))


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def session_table(result: dict, size: str) -> str:
    lines = [
        f"| {size} | round | utterances | final p50 (s) | final p95 (s) | first partial p50 (s) |"
        " final / offline p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, label in MODES:
        if mode not in result:
            continue
        for r in result[mode]["session"]["rounds"]:
            first = 5 * (r["round"] - 1) + 1
            lines.append(
                f"| {label} | {r['round']} | {first}–{first + 4} | {_s(r['final_p50'])} | {_s(r['final_p95'])} |"
                f" {_s(r['first_partial_p50'])} | {_s(r['final_over_offline_p50'])} |"
            )
    lines.append("")
    for mode, label in MODES:
        if mode in result:
            s = result[mode]["session"]
            lines.append(
                f"- {label}: last round p50 / first round p50 = {s['final_growth']:.2f}; slope "
                f"{s['final_slope_ms_per_utterance']:+.0f} ms per utterance; 5 s utterances: final / offline "
                + ", ".join(f"{x:.2f}" for x in s["five_s"]["final_over_offline"])
            )
    for mode, label in MODES:
        if mode in result:
            lines.append(f"- {label}, 5 s utterances, the final decode: " + _profile(result[mode]["utterances"]))
    for mode, _label in MODES:
        rss = result.get(mode, {}).get("peak_rss_mb")
        if rss:
            lines.append(
                f"- peak RSS ({mode}): daemon {rss['daemon']:.0f} MB + encoder {rss['encoder']:.0f} MB = "
                f"{rss['total']:.0f} MB"
            )
    return "\n".join(lines) + "\n"


_PROFILE = (("encoder_ms", "encoder {} ms"), ("prefill_tokens", "prefill {} positions"), ("prefill_ms", "in {} ms"))
_PROFILE += (("generated_tokens", "{} tokens generated"), ("generate_ms", "in {} ms"))


def _profile(rows: list[dict]) -> str:
    """Medians of the daemon's own profile of its final decodes (near zero where a speculation was kept)."""
    five = [u["daemon_latency"] for u in rows if u["length_s"] == 5.0]
    parts = []
    for key, text in _PROFILE:
        values = sorted(float(lat.get(key) or 0.0) for lat in five)
        if values:
            parts.append(text.format(f"{values[len(values) // 2]:.0f}"))
    speculative = sorted(float(lat["speculative_decode_ms"]) for lat in five if lat.get("speculative_decode_ms"))
    if speculative:
        parts.append(f"speculative decode {speculative[len(speculative) // 2]:.0f} ms")
    return ", ".join(parts) + " (medians)"


def write_session_report(result: dict, stem: Path, size: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    md = stem.parent / f"{stem.name}.md"  # not with_suffix: "session-0.6b" has a dot of its own
    md.write_text(session_table(result, size))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    offline_drawn = False
    for (mode, label), style in zip(MODES, ("o-", "s-"), strict=True):
        if mode not in result:
            continue
        rows = result[mode]["utterances"]
        ax.plot([u["index"] for u in rows], [u["final_s"] for u in rows], style, label=label, ms=4)
        first = [(u["index"], u["first_partial_s"]) for u in rows if u["first_partial_s"] is not None]
        ax.plot(*zip(*first, strict=True), style.replace("-", ":"), label=f"{mode}: onset → first partial", ms=3)
        if not offline_drawn and all("offline_s" in u for u in rows):
            ax.plot(
                [u["index"] for u in rows],
                [u["offline_s"] for u in rows],
                "x",
                color="gray",
                label="offline transcription of the same utterance",
            )
            offline_drawn = True
    for boundary in range(5, max(u["index"] for m, _ in MODES if m in result for u in result[m]["utterances"]), 5):
        ax.axvline(boundary + 0.5, color="lightgray", lw=0.8)
    ax.set(title=f"{size}: latency over a dictation session", xlabel="utterance index", ylabel="seconds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    png = stem.parent / f"{stem.name}.png"
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return [md, png]
