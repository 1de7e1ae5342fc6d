#!/usr/bin/env bash
# Rebuild the demo model end to end on a CPU: data (espeak-ng), two training phases (78 to 112 minutes on 2
# cores, by host), export into qasr_live/models/demo, evaluation. See docs/demo-model.md for the recipe and the
# measured figures.
#   WORK=/tmp/demo_model_work bash training/demo_model/build.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
py="${QASR_VENV:-$PWD/.venv}/bin/python"  # the project venv (scripts/install.sh)
work="${WORK:-/tmp/demo_model_work}"
mkdir -p "$work"
# tcmalloc instead of glibc's malloc: a training step is many small tensor operations, and glibc hands their
# buffers back to the kernel and faults them in again; 120 steps of R13's phase A took 101 s instead of 156 s
# (the same losses to the last digit; docs/demo-model.md, "The day's host")
tcmalloc="$(ldconfig -p | awk '/libtcmalloc_minimal\.so\.4 /{print $NF; exit}')"
[ -n "$tcmalloc" ] || { echo "libtcmalloc-minimal4 is missing: run scripts/install.sh" >&2; exit 1; }
export LD_PRELOAD="$tcmalloc${LD_PRELOAD:+:$LD_PRELOAD}"
[ -f "$work/data/index.json" ] || "$py" -m training.demo_model.data --out "$work/data" --n 18000
[ -f "$work/data_clean/index.json" ] || "$py" -m training.demo_model.data --out "$work/data_clean" --n 9000 --clean
# Phase A: clean speech, CTC weight 1, no SpecAugment; the first 3,500 steps of a 9,000-step cosine schedule.
"$py" -m training.demo_model.train --data "$work/data_clean" --work "$work/a" \
  --steps 9000 --stop-after 3500 --lr 1.5e-3 --warmup 100 --ctc-weight 1.0 --specaug 0 \
  --seed 31 --save-every 250 --threads 2 --bf16 --token-dropout 0.1
# Phase B: the augmented data with long samples (4-10 sentences after 0-2 or 5-10 remembered ones, as offline
# segments and the daemon's previous utterances carry), a fresh cosine schedule; the saved weights are the mean
# over its last 1,500 steps.
"$py" -m training.demo_model.train --data "$work/data" --work "$work/b" --init-from "$work/a/checkpoint" \
  --steps 4500 --lr 1e-3 --warmup 30 --ctc-weight 1.0 --specaug 0.2 \
  --seed 37 --save-every 250 --threads 2 --bf16 --token-dropout 0.1 --no-memory-grad --average-from 3000 \
  --mix single=0.3,several=0.2,long=0.3,long_memory=0:3+5:11,long_current=4:11
"$py" -m training.demo_model.package "$work/b/checkpoint"
"$py" -m training.demo_model.evaluate qasr_live/models/demo --n 200 --long 125
