"""The torch-free exporter against the former torch path (devkit/torch_reference_export.py) and the official model.

* GGUF parity: the torch-free GGUFs equal the torch path's tensor for tensor (f32 and f16 bit-equal, q8_0 the same
  quantized bytes) with equal metadata, for the tiny tied and untied checkpoints stored in f32 and in bf16.
* bf16-stored checkpoints (as the real ones are): greedy ids of `qasr-live transcribe` equal the official
  `generate` on test_parity's cases (the f32-stored checkpoints are test_parity's own, exported by this path).
* The tokenizer read from tokenizer.json and from vocab.json + merges.txt gives the same vocabulary as transformers.
* Sharded checkpoints; bad input (unsupported dtype, truncated file, missing shard, shapes against config.json,
  non-ASR and ForcedAligner configs): one ExportError line each, nothing left behind.
* No torch: the decoder path runs with torch, transformers and qwen_asr unimportable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from devkit.random_checkpoint import TINY_SPECS
from qasr_live.engine.model_dir import MANIFEST, decoder_file, open_model_dir
from qasr_live.errors import EXIT_USAGE, ExportError
from qasr_live.export.checkpoint import Checkpoint
from qasr_live.export.decoder_gguf import tokenizer_vocab
from qasr_live.export.exporter import export_checkpoint
from qasr_live.export.steps import Steps
from qasr_live.export.tokenizer_files import read_tokenizer

GGUF_PRECISIONS = ("f32", "f16", "q8_0")
ROOT = Path(__file__).resolve().parents[1]
# Run first in the subprocesses below: these packages cannot be imported at all (an import raises ImportError).
NO_TORCH = """
import sys

HEAVY = {"torch", "transformers", "qwen_asr"}
for _name in HEAVY:
    sys.modules[_name] = None
"""


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def bf16_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """The tiny checkpoints with the same seeds, stored in bf16 (as the released checkpoints are)."""
    from devkit.random_checkpoint import build_random_checkpoint

    root = tmp_path_factory.mktemp("bf16_checkpoints")
    return {
        name: build_random_checkpoint(root / name, replace(spec, dtype="bfloat16")) for name, spec in TINY_SPECS.items()
    }


@pytest.fixture(scope="module")
def bf16_models(bf16_checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bf16_models")
    return {
        name: export_checkpoint(src, root / name, encoders=["fp32"], decoders=GGUF_PRECISIONS, progress=quiet)
        for name, src in bf16_checkpoints.items()
    }


def test_bf16_checkpoints_are_bf16(bf16_checkpoints, tiny_checkpoints):
    """Guards the tests below: the bf16 fixtures really store bf16, the session's tiny checkpoints f32."""
    for name in TINY_SPECS:
        assert {e.dtype for e in Checkpoint(bf16_checkpoints[name]).tensors.values()} == {"BF16"}
        assert {e.dtype for e in Checkpoint(tiny_checkpoints[name]).tensors.values()} == {"F32"}


# ------------------------------------------------------------------------------------------------ GGUF parity


def gguf_contents(path: Path) -> tuple[dict, dict]:
    """(metadata key -> value, tensor name -> (type, shape, raw bytes)) of a GGUF."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = {
        t.name: (t.tensor_type.name, [int(d) for d in t.shape], bytes(np.asarray(t.data).tobytes()))
        for t in reader.tensors
    }
    return fields, tensors


@pytest.fixture(scope="module")
def torch_ggufs(tiny_checkpoints, bf16_checkpoints, tmp_path_factory) -> dict[tuple[str, str], dict[str, Path]]:
    from devkit.torch_reference_export import torch_reference_decoders

    root = tmp_path_factory.mktemp("torch_ggufs")
    out = {}
    for stored, checkpoints in (("f32", tiny_checkpoints), ("bf16", bf16_checkpoints)):
        for name, src in checkpoints.items():
            out[stored, name] = torch_reference_decoders(src, root / f"{stored}-{name}", GGUF_PRECISIONS)
    return out


@pytest.mark.parametrize("stored", ["f32", "bf16"])
@pytest.mark.parametrize("name", list(TINY_SPECS))
@pytest.mark.parametrize("precision", GGUF_PRECISIONS)
def test_gguf_equals_torch_path(tiny_models, bf16_models, torch_ggufs, stored, name, precision):
    model = (tiny_models if stored == "f32" else bf16_models)[name]
    ours_fields, ours = gguf_contents(model / decoder_file(precision))
    ref_fields, ref = gguf_contents(torch_ggufs[stored, name][precision])
    assert ours_fields == ref_fields
    assert list(ours) == list(ref)
    for tensor, (kind, shape, data) in ours.items():
        assert (kind, shape) == ref[tensor][:2], tensor
        assert data == ref[tensor][2], f"{tensor} ({kind}) differs from the torch path"
    # what the comparison covered: the vocabulary, the head, the quantization actually used
    spec = TINY_SPECS[name]
    vocab_size = open_model_dir(model).manifest["dims"]["vocab_size"]
    assert len(ours_fields["tokenizer.ggml.tokens"]) == len(ours_fields["tokenizer.ggml.token_type"]) == vocab_size
    assert ours_fields["tokenizer.ggml.merges"], "no merges were compared"
    assert ("output.weight" in ours) == (not spec.tie_word_embeddings)
    kinds = {kind for kind, shape, _ in ours.values() if len(shape) == 2}
    assert kinds == {"f32": {"F32"}, "f16": {"F16"}, "q8_0": {"Q8_0"}}[precision]


def test_bf16_weights_reach_the_gguf_exactly(bf16_checkpoints, bf16_models):
    """The f32 GGUF holds the stored bf16 values, widened exactly (read here with safetensors' torch loader)."""
    from safetensors.torch import load_file as load_torch

    state = load_torch(bf16_checkpoints["untied_gqa"] / "model.safetensors")
    _, tensors = gguf_contents(bf16_models["untied_gqa"] / decoder_file("f32"))
    for gguf_name, hf in [("token_embd.weight", "model.embed_tokens.weight"), ("output.weight", "lm_head.weight")]:
        expected = state[f"thinker.{hf}"].float().numpy()
        got = np.frombuffer(tensors[gguf_name][2], np.float32).reshape(expected.shape)
        assert np.array_equal(got, expected)


EMBED, HEAD = "thinker.model.embed_tokens.weight", "thinker.lm_head.weight"


def _with_head(head, tie_config: bool):
    """A copy of the tied checkpoint with `head(state)` stored as lm_head and the config's tie flag set."""

    def make(src: Path, dst: Path) -> Path:
        _rewrite_weights(lambda s: s.update({HEAD: head(s)}))(src, dst)
        config = json.loads((dst / "config.json").read_text())
        config["thinker_config"]["text_config"]["tie_word_embeddings"] = tie_config
        (dst / "config.json").write_text(json.dumps(config))
        return dst

    return make


@pytest.mark.parametrize(
    ("make_src", "tied"),
    [
        pytest.param(lambda src, dst: Path(shutil.copytree(src, dst)), True, id="no-head-stored"),
        pytest.param(_with_head(lambda s: s[EMBED].copy(), False), True, id="head-equals-embedding"),
        pytest.param(_with_head(lambda s: s[EMBED] * 2, False), False, id="head-differs"),
        # transformers ties the head on load when the config says so: the stored one is never used
        pytest.param(_with_head(lambda s: s[EMBED] * 2, True), True, id="config-ties-a-different-head"),
        pytest.param(_with_head(lambda s: s[EMBED].astype(np.float16), False), True, id="equal-in-another-dtype"),
    ],
)
def test_tied_head_decided_from_the_tensors(tiny_checkpoints, tmp_path, make_src, tied):
    src = make_src(tiny_checkpoints["tied"], tmp_path / "checkpoint")
    out = export_checkpoint(src, tmp_path / "model", encoders=["fp32"], decoders=["f32"], progress=quiet)
    assert open_model_dir(out).manifest["dims"]["tied_embeddings"] is tied
    _, tensors = gguf_contents(out / decoder_file("f32"))
    assert ("output.weight" in tensors) is not tied
    if not tied:
        head = load_file(src / "model.safetensors")[HEAD]
        assert np.frombuffer(tensors["output.weight"][2], np.float32).tobytes() == head.astype(np.float32).tobytes()


# ----------------------------------------------------------------------------- greedy parity, bf16-stored


def test_bf16_stored_greedy_ids_identical_to_official(bf16_checkpoints, bf16_models, tmp_path, report):
    from tests.test_parity import agreement, reference_table

    references = reference_table(bf16_checkpoints, tmp_path)
    total, same, _, mismatches = agreement(bf16_models, references, tmp_path, "f32", "fp32")
    report(f"greedy ids, bf16-stored checkpoints, decoder f32 + encoder fp32: {same}/{total} cases identical")
    assert total >= 20
    assert same == total, "\n".join(mismatches)


# ------------------------------------------------------------------------------------------------- tokenizer


def slow_tokenizer_copy(src: Path, dst: Path) -> Path:
    """The checkpoint without tokenizer.json: only vocab.json + merges.txt + tokenizer_config.json remain."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tokenizer.json"))
    assert (dst / "vocab.json").is_file() and not (dst / "tokenizer.json").exists()
    return dst


@pytest.mark.parametrize("name", list(TINY_SPECS))
def test_tokenizer_json_and_slow_files_give_the_same_vocabulary(tiny_checkpoints, tiny_models, tmp_path, name):
    from devkit.torch_reference_export import load_tokenizer_json

    src = tiny_checkpoints[name]
    slow = slow_tokenizer_copy(src, tmp_path / "slow")
    vocab_size = open_model_dir(tiny_models[name]).manifest["dims"]["vocab_size"]
    from_json = tokenizer_vocab(read_tokenizer(src), vocab_size)
    from_slow = tokenizer_vocab(read_tokenizer(slow), vocab_size)
    assert from_json == from_slow == tokenizer_vocab(load_tokenizer_json(src), vocab_size)
    assert len(from_json[2]) > 100 and 3 in from_json[1], "merges and control tokens were compared"
    # and the whole GGUF vocabulary of an export from the slow files equals the session model's
    out = export_checkpoint(slow, tmp_path / "model", encoders=["fp32"], decoders=["f16"], progress=quiet)
    fields, _ = gguf_contents(out / decoder_file("f16"))
    expected, _ = gguf_contents(tiny_models[name] / decoder_file("f16"))
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
        assert fields[key] == expected[key], key


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("QASR_SLOW") != "1", reason="opt-in (QASR_SLOW=1): the real 151,936-token Qwen BPE")
def test_real_qwen_vocabulary_from_both_file_sets(tmp_path):
    """The real Qwen vocabulary with the Qwen3-ASR tokens at their real ids (what the released checkpoints hold):
    both readers equal transformers' fast tokenizer, including its slow -> fast conversion of vocab.json."""
    from devkit.random_checkpoint import build_tokenizer
    from devkit.torch_reference_export import load_tokenizer_json

    src = tmp_path / "qwen"
    build_tokenizer(0, qwen_vocab=True).save_pretrained(src)
    slow = slow_tokenizer_copy(src, tmp_path / "slow")
    expected = tokenizer_vocab(load_tokenizer_json(slow), 151936)
    assert tokenizer_vocab(read_tokenizer(src), 151936) == expected
    assert tokenizer_vocab(read_tokenizer(slow), 151936) == expected


# ------------------------------------------------------------------------------------------------- sharding


def shard(src: Path, dst: Path, parts: int = 3) -> Path:
    """A copy of `src` with its weights split into `parts` shard files and an index, as the 1.7B is published."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    state = load_file(src / "model.safetensors")
    names = sorted(state)
    weight_map = {}
    for i in range(parts):
        filename = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        chunk = {n: state[n] for n in names[i::parts]}
        save_file(chunk, dst / filename, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(chunk, filename)
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def test_sharded_checkpoint_exports_the_same_model(tiny_checkpoints, tiny_models, tmp_path):
    src = shard(tiny_checkpoints["untied_gqa"], tmp_path / "sharded")
    out = export_checkpoint(src, tmp_path / "model", encoders=["fp32"], decoders=["f32"], progress=quiet)
    ours = (out / decoder_file("f32")).read_bytes()
    # general.name is the directory's name, which differs; every tensor and every other key must not
    fields, tensors = gguf_contents(out / decoder_file("f32"))
    ref_fields, ref_tensors = gguf_contents(tiny_models["untied_gqa"] / decoder_file("f32"))
    assert fields.pop("general.name") == "sharded"
    ref_fields.pop("general.name")
    assert fields == ref_fields and tensors == ref_tensors and len(ours) > 0
    assert open_model_dir(out).manifest["dims"] == open_model_dir(tiny_models["untied_gqa"]).manifest["dims"]


# ------------------------------------------------------------------------------------------------ bad input


def _rewrite_weights(edit):
    def make(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst)
        state = load_file(dst / "model.safetensors")
        edit(state)
        save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
        return dst

    return make


def _truncate(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    path = dst / "model.safetensors"
    os.truncate(path, path.stat().st_size * 2 // 3)
    return dst


def _garbage_header(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    path = dst / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = b"\x00" * 32  # the JSON header starts at byte 8
    path.write_bytes(bytes(data))
    return dst


def _missing_shard(src: Path, dst: Path) -> Path:
    shard(src, dst)
    (dst / "model-00002-of-00003.safetensors").unlink()
    return dst


def _edit_config(edit):
    def make(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst)
        config = json.loads((dst / "config.json").read_text())
        edit(config)
        (dst / "config.json").write_text(json.dumps(config))
        return dst

    return make


def _no_weights(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    return dst


def _no_tokenizer(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tokenizer.json", "vocab.json"))
    return dst


Q_PROJ = "thinker.model.layers.1.self_attn.q_proj.weight"
BAD_SOURCES = [
    pytest.param(
        _rewrite_weights(lambda s: s.update({Q_PROJ: s[Q_PROJ].astype(np.float64)})),
        [Q_PROJ, "F64", "bf16, f16 and f32"],
        id="f64-tensor",
    ),
    pytest.param(
        _rewrite_weights(lambda s: s.update({Q_PROJ: np.zeros(s[Q_PROJ].shape, np.int8)})),
        [Q_PROJ, "I8", "not a quantized or converted one"],
        id="int8-tensor",
    ),
    pytest.param(_truncate, ["model.safetensors", "truncated or corrupt", "download it again"], id="truncated"),
    pytest.param(_garbage_header, ["model.safetensors", "truncated or corrupt", "download it again"], id="bad-header"),
    pytest.param(
        _missing_shard, ["model-00002-of-00003.safetensors", "model.safetensors.index.json", "download"], id="no-shard"
    ),
    pytest.param(_no_weights, ["model.safetensors", "neither", "download"], id="no-weights"),
    pytest.param(_no_tokenizer, ["no tokenizer", "tokenizer.json", "vocab.json + merges.txt"], id="no-tokenizer"),
    pytest.param(
        _rewrite_weights(lambda s: s.pop("thinker.audio_tower.layers.1.fc2.bias")),
        ["thinker.audio_tower.layers.1.fc2.bias", "lack", "download the checkpoint again"],
        id="missing-tensor",
    ),
    pytest.param(
        _edit_config(lambda c: c["thinker_config"]["text_config"].update(intermediate_size=256)),
        ["mlp.gate_proj.weight", "[128, 64]", "[256, 64]", "do not belong together"],
        id="shape-vs-config",
    ),
    pytest.param(
        _edit_config(lambda c: c["thinker_config"]["text_config"].update(num_hidden_layers=1)),
        ["thinker.model.layers.1.", "beyond the 1 layers", "do not belong together"],
        id="extra-layers",
    ),
    pytest.param(
        _edit_config(lambda c: c.update(model_type="whisper", thinker_config=None)),
        ["`thinker_config`", "'whisper'", "Qwen/Qwen3-ASR-0.6B"],
        id="not-asr",
    ),
    pytest.param(
        _edit_config(lambda c: c["thinker_config"].update(model_type="qwen3_forced_aligner")),
        ["names a Qwen3-ForcedAligner but lacks thinker_config.classify_num"],
        id="aligner-without-classes",
    ),
    pytest.param(  # an ASR checkpoint's weights under an aligner's config: its head is not a classifier
        _edit_config(lambda c: c["thinker_config"].update(model_type="qwen3_forced_aligner", classify_num=5000)),
        ["lack thinker.lm_head.weight, the aligner's timestamp classifier", "do not belong together"],
        id="aligner-config-asr-weights",
    ),
]


@pytest.mark.parametrize(("make_src", "parts"), BAD_SOURCES)
def test_bad_checkpoint_is_one_export_error(tiny_checkpoints, tmp_path, make_src, parts):
    src = make_src(tiny_checkpoints["tied"], tmp_path / "checkpoint")
    out = tmp_path / "out" / "model"
    with pytest.raises(ExportError) as err:
        export_checkpoint(src, out, encoders=["fp32"], decoders=["f16"], progress=quiet)
    message = str(err.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} is not in: {message}"
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir()), "the export left something behind"


def test_bad_checkpoint_through_the_cli(tiny_checkpoints, tmp_path):
    """The CLI prints a truncated checkpoint's error as its one `qasr-live: error:` line, exit status 2."""
    src = _truncate(tiny_checkpoints["tied"], tmp_path / "checkpoint")
    out = tmp_path / "model"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "qasr_live", "export", str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == EXIT_USAGE, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("qasr-live: error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "model.safetensors is truncated or corrupt" in errors[0] and "download it again" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


PRECISIONS = ("--encoder", "int8", "--decoder", "q8_0,q4_k")


def test_cli_export_prints_one_line_per_step(tiny_checkpoints, tmp_path):
    """What the user sees: `[n/N] step (time, size)` lines and `done:`, none of llama.cpp's per-tensor log."""
    out = tmp_path / "model"
    proc = subprocess.run(
        [sys.executable, "-m", "qasr_live", "export", str(tiny_checkpoints["tied"]), str(out), *PRECISIONS],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    steps = ["read checkpoint", "encoder fp32 (ONNX)", "encoder int8", "decoder q8_0", "decoder q4_k"]
    assert [line.rsplit(" (", 1)[0] for line in lines[:-1]] == [f"[{i}/5] {s}" for i, s in enumerate(steps, 1)], lines
    assert lines[-1] == f"done: {out}", proc.stderr
    assert all(re.search(r"\(\d+\.\d s(, [\d.]+ [KMG]?B)?\)$", line) for line in lines[:-1]), proc.stderr


# ------------------------------------------------------------------------------------------------- no torch

DECODER_PATH_SCRIPT = """
import json
from pathlib import Path

from qasr_live.export import encoder_graph, exporter


def encoder_stand_in(weights, audio_config, frontend_path, backend_path):
    # Until the torch-free encoder_graph.py is merged, the encoder step is replaced: it still reads every audio
    # weight through the lazy mapping (safetensors -> float32, no torch) and records what it got.
    seen = {name: list(weights[name].shape) for name in weights}
    for path in (frontend_path, backend_path):
        path.write_text(json.dumps({"d_model": audio_config["d_model"], "weights": seen}))


encoder_graph.write_encoder_onnx = encoder_stand_in
exporter.export_checkpoint(
    sys.argv[1], sys.argv[2], encoders=["fp32"], decoders=["f16", "q8_0", "q4_k"], progress=print,
    source={"repo_id": "Qwen/Qwen3-ASR-0.6B", "revision": "0123abc"},
)
loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in HEAVY)
assert not loaded, loaded
"""


def run_without_torch(script: str, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH + textwrap.dedent(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_decoder_path_needs_no_torch(tiny_checkpoints, tiny_models, tmp_path):
    name = "untied_gqa"
    out = tmp_path / "model"
    proc = run_without_torch(DECODER_PATH_SCRIPT, tiny_checkpoints[name], out)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    steps = [line for line in lines if line.startswith("[")]
    assert [s.rsplit(" (", 1)[0] for s in steps] == [
        "[1/5] read checkpoint",
        "[2/5] encoder fp32 (ONNX)",
        "[3/5] decoder f16",
        "[4/5] decoder q8_0",
        "[5/5] decoder q4_k",
    ]
    assert all(s.endswith(("B)", "KB)", "MB)")) and " s, " in s for s in steps), steps
    manifest = json.loads((out / MANIFEST).read_text())
    reference = open_model_dir(tiny_models[name]).manifest
    assert manifest["dims"] == reference["dims"]
    assert manifest["special_tokens"] == reference["special_tokens"]
    assert manifest["source"] == {**reference["source"], "repo_id": "Qwen/Qwen3-ASR-0.6B", "revision": "0123abc"}
    for precision in ("f16", "q8_0"):
        assert (out / decoder_file(precision)).read_bytes() == (
            tiny_models[name] / decoder_file(precision)
        ).read_bytes()
    assert manifest["files"][decoder_file("q4_k")]["size"] == (out / decoder_file("q4_k")).stat().st_size > 0
    stand_in = json.loads((out / "encoder_frontend.fp32.onnx").read_text())
    stored = load_file(tiny_checkpoints[name] / "model.safetensors")
    prefix = "thinker.audio_tower."
    assert stand_in["weights"] == {k[len(prefix) :]: list(v.shape) for k, v in stored.items() if k.startswith(prefix)}


def test_whole_export_needs_no_torch(tiny_checkpoints, tmp_path):
    out = tmp_path / "model"
    script = """
    from qasr_live.export.exporter import export_checkpoint

    export_checkpoint(sys.argv[1], sys.argv[2], encoders=["fp32", "int8", "int4"], decoders=["f16", "q4_k"])
    loaded = [m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in HEAVY]
    assert not loaded, loaded
    """
    proc = run_without_torch(script, tiny_checkpoints["tied"], out)
    assert proc.returncode == 0, proc.stderr
    open_model_dir(out)


# ------------------------------------------------------------------------------------------------- progress


def test_each_step_has_a_bar_and_a_line_with_time_and_size(tmp_path, capsys):
    lines: list[str] = []
    steps = Steps(2, lines.append, bars=True)
    with steps("write", total=3000) as step:
        path = tmp_path / "a.bin"
        path.write_bytes(b"x" * 3000)
        step.output(path)
        step.advance(3000)
    with pytest.raises(RuntimeError), steps("fail") as step:
        raise RuntimeError("boom")
    assert len(lines) == 1, "a failed step has no success line"
    assert lines[0].startswith("[1/2] write (") and lines[0].endswith(" s, 3.0 KB)")
    bars = capsys.readouterr().err
    assert "[1/2] write:   0%|" in bars and "/3.00kB [" in bars and "[2/2] fail" in bars
    Steps(1, lines.append, bars=False)("quiet").__enter__()
    assert "quiet" not in capsys.readouterr().err
