"""Run the benchmark suite: ``python -m bench.run [--sizes 0.6b,1.7b] [--rounds 4] [--quick]``.

For each size: the cached real-shaped checkpoint and its export (built on first use), the official
implementation's offline measurements, ours, and the streaming measurements through the real daemon, each in
its own process, one after the other (nothing else should run on the machine meanwhile). Writes
bench/results/<size>.json, the plots bench/results/*.png and the results table of docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from bench.models import ROOT, prepare
from bench.report import PERFORMANCE_DOC, RESULTS, render
from bench.session_report import write_session_report


def _machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        **{name: version(name) for name in ("onnxruntime", "llama_cpp_python", "torch", "transformers", "qwen-asr")},
        "date": time.strftime("%Y-%m-%d"),
    }


def _side(module: str, args: list[str], out: Path) -> dict:
    subprocess.run([sys.executable, "-m", module, *args, str(out)], check=True, cwd=ROOT)
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0.6b,1.7b", help="comma-separated: 0.6b, 1.7b (tiny: a smoke run)")
    parser.add_argument("--rounds", type=int, default=4, help="streaming: rounds of 5 utterances per daemon")
    parser.add_argument("--quick", action="store_true", help="one repetition, 5 s of armed CPU (a smoke run)")
    parser.add_argument(
        "--parts", default="official,ours,streaming", help="what to measure; the other parts of an existing result stay"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--docs", type=Path, default=PERFORMANCE_DOC)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for size in args.sizes.split(","):
        model = prepare(size)
        path = args.out / f"{size}.json"
        result = json.loads(path.read_text()) if path.exists() else {}
        result.update(size=size, machine=_machine())
        parts = args.parts.split(",")
        with tempfile.TemporaryDirectory() as tmp:
            side = Path(tmp) / "side.json"
            for part in ("official", "ours"):
                if part in parts:
                    result[part] = _side("bench.offline", [part, size], side)
            if "streaming" in parts:
                streaming = ["--rounds", str(1 if args.quick else args.rounds)] + (
                    ["--idle", "5"] if args.quick else []
                )
                result["streaming"] = _side("bench.streaming", [size, *streaming], side)
                write_session_report(result["streaming"], args.out / f"session-{size}", size)
        if model.build_seconds is not None or model.export_seconds is not None:  # built in this run
            result["build_s"], result["export_s"] = model.build_seconds, model.export_seconds
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}", file=sys.stderr)
    render(args.out, args.docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
