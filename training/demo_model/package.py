"""Export a trained checkpoint with qasr-live's exporter into qasr_live/models/demo (marked as the demo model).

    python3 -m training.demo_model.package CHECKPOINT_DIR [--encoder int8] [--decoder q8_0]

The model files are replaced; vocabulary.json (the grammar, kept in git) stays. Also writes sample.wav (a few
sentences spoken by the held-out voice, what scripts/demo.sh transcribes) and training.json (every training
phase that led to the checkpoint, from the train_state.json files along its --init-from chain).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import scipy.io.wavfile

from devkit.demo_speech import HELDOUT_VOICES, synthesize
from qasr_live.export.exporter import export_checkpoint

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "qasr_live" / "models" / "demo"
KEEP = ("vocabulary.json",)
SAMPLE_TEXT = (
    "Good morning Anna, please send the report tomorrow.",
    "The meeting is on Monday at ten thirty.",
    "Thank you for the quick answer.",
)


def training_phases(checkpoint: Path) -> list[dict]:
    """The train_state.json of the checkpoint and of every checkpoint it was initialised from, oldest first."""
    phases: list[dict] = []
    while checkpoint is not None and (checkpoint / "train_state.json").exists():
        state = json.loads((checkpoint / "train_state.json").read_text())
        phases.insert(0, state)
        init = state.get("init_from")
        checkpoint = Path(init) if init else None
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--encoder", default="int8", help="comma-separated encoder precisions")
    parser.add_argument("--decoder", default="q8_0", help="comma-separated decoder precisions")
    parser.add_argument("--out", type=Path, default=DEMO, help="a candidate directory instead of the demo model's")
    args = parser.parse_args()
    demo = args.out
    demo.mkdir(parents=True, exist_ok=True)
    if demo != DEMO and not (demo / KEEP[0]).exists():
        shutil.copy2(DEMO / KEEP[0], demo / KEEP[0])
    with tempfile.TemporaryDirectory(dir=demo.parent) as tmp:
        out = export_checkpoint(
            args.checkpoint, Path(tmp) / "demo", args.encoder.split(","), args.decoder.split(","), demo=True
        )
        for old in demo.iterdir():
            if old.name not in KEEP:
                old.unlink()
        for new in out.iterdir():
            shutil.copy2(new, demo / new.name)
    pause = np.zeros(8000, dtype=np.float32)
    audio = np.concatenate([np.concatenate([synthesize(t, *HELDOUT_VOICES[0]), pause]) for t in SAMPLE_TEXT])
    audio = audio / np.max(np.abs(audio)) * 0.5
    scipy.io.wavfile.write(demo / "sample.wav", 16000, (audio * 32767).astype(np.int16))
    (demo / "sample.txt").write_text(" ".join(SAMPLE_TEXT) + "\n")
    phases = training_phases(args.checkpoint)
    if phases:
        summary = {
            "phases": phases,
            "total_steps": sum(p["step"] for p in phases),
            "total_seconds": round(sum(p["seconds"] for p in phases)),
        }
        (demo / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    for f in sorted(demo.iterdir()):
        print(f"{f.stat().st_size / 1e6:8.3f} MB  {f.name}")


if __name__ == "__main__":
    main()
