"""The torch-free encoder graphs (qasr_live/export/encoder_graph.py), built from the checkpoint's weights with
numpy and onnx, against the torch export of the official tower (devkit/torch_export.py) and against the official
tower itself, on the two tiny random checkpoints and on one rounded to bf16 (what real checkpoints store)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.numpy import load_file

from devkit.reference import load_reference, windowed_attention
from devkit.torch_export import export_encoder
from qasr_live.engine.encoder import AudioEncoder, window_batch
from qasr_live.engine.features import log_mel
from qasr_live.errors import ExportError
from qasr_live.export.encoder_graph import quantize_int4, quantize_int8, write_encoder_onnx

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "thinker.audio_tower."
VARIANTS = ("tied", "untied_gqa", "tied_bf16")
MASKED = -1e9  # what engine/encoder.py puts outside a window
EXACT_COS = 0.99999
MAX_REL_DIFF = 1e-5  # measured <= 9e-7 (float32 summation order)
QUANTIZED_COS = 0.99
# int4 MatMulNBits (accuracy level 4) quantizes its activations to int8 on the fly: the fp32 graphs' 1e-7
# differences can flip one rounding step, which moves a row by a few 1e-5
SAME_INT4_COS = 0.9999
INT4_FLOOR_COS = 0.9  # measured 0.946-0.953 on these models, for both exports
QUANTIZED_OPS = {"int8": "MatMulInteger", "int4": "MatMulNBits"}


def tower_weights(src: Path) -> dict[str, np.ndarray]:
    """The audio tower's tensors, named as inside the tower (what the exporter hands write_encoder_onnx)."""
    return {k.removeprefix(PREFIX): v for k, v in load_file(src / "model.safetensors").items() if k.startswith(PREFIX)}


def audio_config(src: Path) -> dict:
    return json.loads((src / "config.json").read_text())["thinker_config"]["audio_config"]


@dataclass
class Variant:
    weights: dict[str, np.ndarray]
    config: dict
    tower: torch.nn.Module  # the official Qwen3ASRAudioEncoder holding exactly `weights`
    frontend: Path  # ours
    backend: Path
    torch_frontend: Path  # devkit/torch_export.py's
    torch_backend: Path


@pytest.fixture(scope="module")
def variants(tiny_checkpoints, tmp_path_factory) -> dict[str, Variant]:
    out = {}
    for name in VARIANTS:
        src = tiny_checkpoints[name.removesuffix("_bf16")]
        weights, config = tower_weights(src), audio_config(src)
        tower = load_reference(str(src))[0].thinker.audio_tower
        if name.endswith("_bf16"):
            weights = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in weights.items()}
            assert any(not np.array_equal(weights[k], v) for k, v in tower_weights(src).items())
            tower = copy.deepcopy(tower)
            tower.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        d = tmp_path_factory.mktemp(name)
        write_encoder_onnx(weights, config, d / "frontend.onnx", d / "backend.onnx")
        export_encoder(tower, d, "torch_frontend.onnx", "torch_backend.onnx")
        paths = [d / f"{p}.onnx" for p in ("frontend", "backend", "torch_frontend", "torch_backend")]
        out[name] = Variant(weights, config, tower, *paths)
    return out


def run(path: Path, **inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def assert_same_rows(ours: np.ndarray, ref: np.ndarray, what: tuple) -> tuple[float, float]:
    """Per row cosine >= EXACT_COS, and the largest difference within MAX_REL_DIFF of the largest value: a
    per-row cosine alone passes a tanh GELU or positions off by 0.1 %. Returns (min cosine, max |diff|)."""
    cos, diff = float(row_cosines(ours, ref).min()), float(np.abs(ours - ref).max())
    assert cos >= EXACT_COS, (*what, cos)
    assert diff <= MAX_REL_DIFF * np.abs(ref).max(), (*what, diff, np.abs(ref).max())
    return cos, diff


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def block_mask(sizes: list[int]) -> np.ndarray:
    """(1, 1, T, T) additive mask: rows attend within their own block only."""
    n = sum(sizes)
    mask = np.full((1, 1, n, n), MASKED, dtype=np.float32)
    start = 0
    for size in sizes:
        mask[..., start : start + size, start : start + size] = 0
        start += size
    return mask


def make_audio(seconds: float, seed: int) -> np.ndarray:
    """Noise, a chirp and a modulated tone: varied mel content in every chunk."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    x = 0.2 * np.sin(2 * np.pi * (200 + 500 * t / max(seconds, 1)) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (x + rng.standard_normal(t.size) * 0.05).astype(np.float32)


def official_rows(tower: torch.nn.Module, mel: np.ndarray) -> np.ndarray:
    """The official tower's output, attending within its 104-row (8 s) windows as trained (devkit/reference.py)."""
    with windowed_attention(), torch.no_grad():
        out = tower(torch.from_numpy(mel), feature_lens=torch.tensor([mel.shape[1]]))
    return out.last_hidden_state.numpy()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", VARIANTS)
def test_frontend_matches_torch_export(variants, name, batch, report):
    v = variants[name]
    mel = np.random.default_rng(batch).standard_normal((batch, 128, 100)).astype(np.float32)
    ours, ref = run(v.frontend, chunk_mel=mel), run(v.torch_frontend, chunk_mel=mel)
    assert ours.shape == ref.shape == (batch, 13, v.config["d_model"])
    cos, diff = assert_same_rows(ours, ref, (name, batch))
    report(f"encoder graph {name} frontend B={batch}: min cosine {cos:.8f}, max |diff| {diff:.2e}")


# (mask, row scale): one row of several windows, one of them not a multiple of 13 long; a batch of three rows
# with different masks (full attention, two windows, padding masked out as engine/encoder.py does); and quiet
# rows, whose variance is near the layer norms' eps, so a wrong eps shows (at unit scale it is invisible).
BACKEND_CASES = {
    "windows": (lambda: block_mask([13, 11, 26]), 1.0),
    "batch3": (
        lambda: np.concatenate(
            [np.zeros((1, 1, 29, 29), np.float32), block_mask([10, 19]), window_batch(np.ones((53, 1)), 29)[1][1:]]
        ),
        1.0,
    ),
    "quiet": (lambda: block_mask([20, 7]), 3e-3),
}


@pytest.mark.parametrize("case", BACKEND_CASES)
@pytest.mark.parametrize("name", VARIANTS)
def test_backend_matches_torch_export(variants, name, case, report):
    v = variants[name]
    make_mask, scale = BACKEND_CASES[case]
    mask = make_mask()
    batch, n = mask.shape[0], mask.shape[-1]
    rows = scale * np.random.default_rng(n).standard_normal((batch, n, v.config["d_model"])).astype(np.float32)
    ours = run(v.backend, hidden_states=rows, attention_mask=mask)
    ref = run(v.torch_backend, hidden_states=rows, attention_mask=mask)
    assert ours.shape == ref.shape == (batch, n, v.config["output_dim"])
    cos, diff = assert_same_rows(ours, ref, (name, case))
    report(f"encoder graph {name} backend {case}: min cosine {cos:.8f}, max |diff| {diff:.2e}")
    if case == "windows":  # the middle window alone gives the same rows: the mask really confines attention
        alone = run(v.backend, hidden_states=rows[:, 13:24], attention_mask=np.zeros((1, 1, 11, 11), np.float32))
        np.testing.assert_allclose(ours[:, 13:24], alone, atol=1e-5)


@pytest.mark.parametrize("seconds", [0.37, 3.3, 8.5, 17.3])
@pytest.mark.parametrize("name", VARIANTS)
def test_runtime_encoder_matches_official_tower(variants, name, seconds, report):
    v = variants[name]
    mel = log_mel(make_audio(seconds, int(seconds * 10)))
    rows = AudioEncoder(v.frontend, v.backend).encode(mel)
    ref = official_rows(v.tower, mel)
    assert rows.shape == ref.shape
    cos, diff = assert_same_rows(rows, ref, (name, seconds))
    report(f"encoder graph {name} {seconds:5.2f} s vs official tower: min cosine {cos:.8f}, max |diff| {diff:.2e}")


@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("name", VARIANTS)
def test_quantized_graphs_stay_close(variants, name, precision, tmp_path, report):
    """int8 stays within QUANTIZED_COS of fp32. int4 (4-bit weights, blocks of 128) moves random weights further
    than that whichever graph it quantizes, so it is held to the quantized torch export instead (the same
    weights quantized the same way: the same rows), and to a floor against fp32 that a broken layout falls
    through."""
    v = variants[name]
    quantize = quantize_int8 if precision == "int8" else quantize_int4
    ours, torch_ = tmp_path / "ours", tmp_path / "torch"
    pairs = [(v.frontend, ours / "frontend.onnx"), (v.backend, ours / "backend.onnx")]
    if precision == "int4":
        pairs += [(v.torch_frontend, torch_ / "frontend.onnx"), (v.torch_backend, torch_ / "backend.onnx")]
    for src, dst in pairs:
        dst.parent.mkdir(exist_ok=True)
        quantize(src, dst)
        ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
        # the linears really were quantized, else the comparison proves nothing
        assert QUANTIZED_OPS[precision] in ops, (dst, sorted(set(ops)))
    mel = log_mel(make_audio(9.4, 5))
    fp32 = AudioEncoder(v.frontend, v.backend).encode(mel)
    quantized = AudioEncoder(ours / "frontend.onnx", ours / "backend.onnx").encode(mel)
    cos = row_cosines(quantized, fp32)
    line = f"encoder graph {name} {precision} vs fp32: min cosine {cos.min():.5f}, mean {cos.mean():.5f}"
    if precision == "int8":
        assert cos.min() >= QUANTIZED_COS, (name, precision, cos.min())
    else:
        assert cos.min() >= INT4_FLOOR_COS, (name, precision, cos.min())
        same = row_cosines(quantized, AudioEncoder(torch_ / "frontend.onnx", torch_ / "backend.onnx").encode(mel))
        assert same.min() >= SAME_INT4_COS, (name, same.min())
        line += f"; vs the int4 torch export: min cosine {same.min():.7f}"
    report(line)


def test_graph_interface(variants):
    """What engine/encoder.py and the quantizers rely on: names, shapes, opset, MatMul linears, valid graphs."""
    v = variants["untied_gqa"]
    d, out_dim = v.config["d_model"], v.config["output_dim"]

    def dims(value):
        return [x.dim_param or x.dim_value for x in value.type.tensor_type.shape.dim]

    front, back = onnx.load(str(v.frontend)), onnx.load(str(v.backend))
    for model in (front, back):
        onnx.checker.check_model(model, full_check=True)
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 18)]
        assert model.ir_version == 8
        ops = {n.op_type for n in model.graph.node}
        assert "Gemm" not in ops and "MatMul" in ops
        # fp32 weights; the only other initializers are the int64 shapes of Reshape/Unsqueeze
        other = {t.name for t in model.graph.initializer if t.data_type != onnx.TensorProto.FLOAT}
        assert other == {n.input[1] for n in model.graph.node if n.op_type in ("Reshape", "Unsqueeze")}
    assert [(i.name, dims(i)) for i in front.graph.input] == [("chunk_mel", ["batch", 128, 100])]
    assert [(o.name, dims(o)) for o in front.graph.output] == [("chunk_out", ["batch", 13, d])]
    assert [(i.name, dims(i)) for i in back.graph.input] == [
        ("hidden_states", ["batch", "time", d]),
        ("attention_mask", ["batch", 1, "time", "time"]),
    ]
    assert [(o.name, dims(o)) for o in back.graph.output] == [("last_hidden_state", ["batch", "time", out_dim])]
    # six linears per layer plus the projector, each one MatMul against a stored weight
    matmuls = [n for n in back.graph.node if n.op_type == "MatMul" and n.input[1].endswith(".weight_t")]
    assert len(matmuls) == 6 * v.config["encoder_layers"] + 2


def test_bf16_arrays_give_the_same_graphs(variants, tmp_path):
    """Weights handed over as bf16 (what the checkpoints store) are widened exactly: byte-identical files."""
    v = variants["tied_bf16"]
    bf16 = {k: w.astype(ml_dtypes.bfloat16) for k, w in v.weights.items()}
    write_encoder_onnx(bf16, v.config, tmp_path / "f.onnx", tmp_path / "b.onnx")
    assert (tmp_path / "f.onnx").read_bytes() == v.frontend.read_bytes()
    assert (tmp_path / "b.onnx").read_bytes() == v.backend.read_bytes()


def test_write_encoder_onnx_never_imports_torch(variants, tmp_path):
    """A subprocess where importing torch (or the official classes) fails builds byte-identical graphs."""
    v = variants["untied_gqa"]
    np.savez(tmp_path / "weights.npz", **v.weights)
    (tmp_path / "audio_config.json").write_text(json.dumps(v.config))
    script = f"""
import json, sys
for name in ("torch", "transformers", "qwen_asr"):
    sys.modules[name] = None  # any import of them raises ImportError
from pathlib import Path
import numpy as np
from qasr_live.export.encoder_graph import write_encoder_onnx
d = Path({str(tmp_path)!r})
weights = dict(np.load(d / "weights.npz"))
write_encoder_onnx(weights, json.loads((d / "audio_config.json").read_text()), d / "f.onnx", d / "b.onnx")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "qwen_asr"))))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == ["qwen_asr", "torch", "transformers"]  # the blocked entries
    assert (tmp_path / "f.onnx").read_bytes() == v.frontend.read_bytes()
    assert (tmp_path / "b.onnx").read_bytes() == v.backend.read_bytes()


def test_absent_config_keys_take_the_official_defaults(variants, tmp_path):
    v = variants["tied"]
    config = {k: x for k, x in v.config.items() if k not in ("activation_function", "num_mel_bins")}
    write_encoder_onnx(v.weights, config, tmp_path / "f.onnx", tmp_path / "b.onnx")
    assert (tmp_path / "b.onnx").read_bytes() == v.backend.read_bytes()
    # the official default n_window is 100 (200-frame chunks), which the runtime's 1 s chunks cannot run
    config.pop("n_window")
    with pytest.raises(ExportError, match="n_window 100"):
        write_encoder_onnx(v.weights, config, tmp_path / "f.onnx", tmp_path / "b.onnx")


BAD_CHECKPOINTS = {
    "missing tensor": (
        lambda w, c: w.pop("layers.1.fc2.bias"),
        r"lacks 1 audio tower tensor\(s\), e\.g\. thinker\.audio_tower\.layers\.1\.fc2\.bias",
    ),
    "more layers": (lambda w, c: c.update(encoder_layers=5), r"lacks 48 audio tower tensor\(s\)"),
    "wrong shape": (
        lambda w, c: c.update(encoder_ffn_dim=100),
        r"layers\.0\.fc1\.weight has shape \(128, 64\) where the audio config implies \(100, 64\)",
    ),
    "heads": (lambda w, c: c.update(encoder_attention_heads=5), "not a multiple of encoder_attention_heads 5"),
    "activation": (lambda w, c: c.update(activation_function="relu"), "activation_function is 'relu'"),
    "mel bins": (lambda w, c: c.update(num_mel_bins=80), "num_mel_bins 80"),
    # the official class's default is 400 (4 s windows); the runtime's windows are 8 s, as the models were trained
    "attention windows": (lambda w, c: c.update(n_window_infer=400), "n_window_infer 400"),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_bad_checkpoint_is_named(variants, tmp_path, case):
    change, message = BAD_CHECKPOINTS[case]
    v = variants["tied"]
    weights, config = dict(v.weights), dict(v.config)
    change(weights, config)
    with pytest.raises(ExportError, match=message) as caught:
        write_encoder_onnx(weights, config, tmp_path / "f.onnx", tmp_path / "b.onnx")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "f.onnx").exists()
