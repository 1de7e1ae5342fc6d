"""The demo model's recipe scripts run as documented: data.py makes espeak-ng clips, train.py trains the official
classes on them and checkpoints what it did; memory pieces can be encoded as context without gradients.

Tiny sizes (48 clips, 3 steps): this checks the scripts, not the model's quality (tests/test_demo_model.py does).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "training.demo_model"
MIX = "single=0.2,several=0.2,long=0.3,long_memory=1:2+2:3,long_current=1:3"  # most samples carry a memory


def script(name: str, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"{RECIPE}.{name}", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("demo_training")
    done = script("data", "--out", work / "data", "--n", 48, "--workers", 1, "--clean")
    assert done.returncode == 0, done.stderr
    done = script(
        "train", "--data", work / "data", "--work", work / "run", "--steps", 3, "--warmup", 1, "--save-every", 2,
        "--threads", 1, "--no-memory-grad", "--token-dropout", 0.1, "--mix", MIX, "--average-from", 1,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return work / "data", work / "run" / "checkpoint"


@pytest.fixture(scope="module")
def train():
    return importlib.import_module(f"{RECIPE}.train")


def test_training_checkpoints_its_recipe(trained):
    data, checkpoint = trained
    state = json.loads((checkpoint / "train_state.json").read_text())
    assert state["step"] == 3 and state["schedule_steps"] == 3
    assert state["memory_grad"] is False and state["token_dropout"] == 0.1
    assert state["averaged_steps"] == 2  # steps 1 and 2 (from 0) in the saved mean
    assert state["mix"]["long"] == 0.3 and state["mix"]["long_memory"] == [[1, 2], [2, 3]]
    assert state["data"] == str(data)
    assert np.isfinite(state["ce"]) and np.isfinite(state["ctc"])
    assert (checkpoint / "model.safetensors").stat().st_size > 0 and (checkpoint / "tokenizer_config.json").exists()


def test_memory_pieces_are_encoded_as_context_without_gradients(trained, train):
    from transformers import AutoTokenizer

    data, checkpoint = trained
    _, model_cls, _ = train.official_classes()
    model = model_cls.from_pretrained(str(checkpoint), dtype=torch.float32).train()
    tower = model.thinker.audio_tower
    frontend, backend = train.Frontend(tower), train.Backend(tower)
    clips = train.Clips(data, AutoTokenizer.from_pretrained(checkpoint))
    mels = [clips.features([int(i)]) for i in clips.speech[:3]]

    rows = train.encode_context(frontend, backend, mels, [True, False, True])
    with torch.no_grad():
        reference = train.encode(frontend, backend, mels)
    for got, want in zip(rows, reference, strict=True):
        torch.testing.assert_close(got.detach(), want, atol=1e-5, rtol=1e-5)
    assert [r.requires_grad for r in rows] == [False, True, False]

    # A memory sample: the loss reaches the audio tower through the current piece only.
    pieces = [[int(clips.speech[0])], [int(clips.speech[1])]]
    texts = [clips.text(p) for p in pieces]
    answer = [*clips.header_en, *clips.ids(" ".join(texts)), clips.im_end]
    sample = {"pieces": pieces, "texts": texts, "tail": clips.tail, "answer": answer}
    rng = np.random.default_rng(0)
    loss, _, _ = train.step_loss(model, frontend, backend, clips, [sample], rng, specaug=0, memory_grad=False)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())


def test_conv_width_that_contradicts_the_starting_checkpoint_is_an_error(trained, tmp_path):
    data, checkpoint = trained
    done = script(
        "train", "--data", data, "--work", tmp_path, "--init-from", checkpoint, "--steps", 1, "--conv-width", 16
    )
    assert done.returncode == 2
    assert "--conv-width 16" in done.stderr and "32 channels" in done.stderr


def test_long_samples_take_their_memory_from_either_range(trained, train):
    from transformers import AutoTokenizer

    data, checkpoint = trained
    clips = train.Clips(data, AutoTokenizer.from_pretrained(checkpoint))
    mix = train.Mix(single=0, several=0, long=1.0, long_memory=((1, 2), (4, 5)), long_current=((2, 3),))
    rng = np.random.default_rng(0)
    samples = [train.make_sample(clips, rng, mix) for _ in range(40)]
    assert {len(s["pieces"][0]) for s in samples} == {1, 4}
    assert {len(s["pieces"][1]) for s in samples} == {2}
