#!/usr/bin/env bash
# The optimisation pass of docs/performance.md: the streaming benchmark of the 0.6B model (q4_k/int8) with one
# setting changed at a time, 3 utterances per length, 10 s of armed CPU. Results: bench/results/opt/*.json.
#   bash bench/variants.sh            (about 20 minutes on 2 cores; nothing else should run meanwhile)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${QASR_VENV:-$PWD/.venv}/bin/python"  # the project venv (scripts/install.sh)
out=bench/results/opt
mkdir -p "$out"
run() { local name=$1; shift; echo "== $name"; "$py" -m bench.streaming 0.6b "$out/$name.json" --reps 3 --idle 10 "$@"; }
run approximate_window --set streaming.reencode_open_window=false
run no_speculation --modes continuous --set streaming.endpoint_speculation_ms=0
run encoder_threads_2 --modes ptt --set engine.encoder_threads=2
run decoder_threads_1 --modes ptt --set engine.decoder_threads=1
OMP_WAIT_POLICY=PASSIVE run omp_passive --modes ptt
"$py" -m bench.memory 0.6b "$out/memory_0.6b.json"
