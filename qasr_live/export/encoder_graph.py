"""The Qwen3-ASR audio tower as two ONNX graphs, built from its weights with numpy and onnx (no torch); and
their int8/int4 quantization.

frontend: one or more 100-frame mel chunks `chunk_mel` (B, 128, 100) -> `chunk_out` (B, 13, d_model). Three
          3x3 stride-2 convs with GELU, the linear `conv_out` and the sinusoidal positions 0..12, which restart in
          every chunk as in the official model.
backend:  rows `hidden_states` (B, T, d_model) + additive `attention_mask` (B, 1, T, T) -> `last_hidden_state`
          (B, T, output_dim). The pre-LN transformer layers, `ln_post` and the two-layer projector to the LLM
          width. The caller supplies the mask, so the block-diagonal 8 s windows the model was trained with are
          honoured (engine/encoder.py batches the windows).

The computation is the official `Qwen3ASRAudioEncoder` (qwen_asr.core.transformers_backend.modeling_qwen3_asr)
op for op: exact (erf) GELU, nn.LayerNorm's eps 1e-5, attention scaled by head_dim ** -0.5, biases on every
linear except `conv_out`. Linears are MatMul with a pre-transposed weight (+ Add for the bias), never Gemm: the
int8 quantizer below rewrites MatMul nodes, and ONNX Runtime fuses MatMul+Add and the erf pattern into Gelu.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qasr_live.engine.encoder import CHUNK_FRAMES, ROWS_PER_CHUNK, WINDOW_ROWS
from qasr_live.engine.features import N_MELS
from qasr_live.errors import ExportError

# Qwen3ASRAudioEncoderConfig's defaults, for keys a config.json may omit: the official class would use them, so the
# graph does too.
from qasr_live.export.checkpoint import AUDIO_DEFAULTS

if TYPE_CHECKING:
    import onnx

OPSET = 18
LAYER_NORM_EPS = 1e-5  # the official layers are nn.LayerNorm(d_model): torch's default eps
# onnx.save writes one protobuf, which cannot exceed 2 GB. The towers fit: 0.6B 0.75 GB, 1.7B 1.3 GB of fp32.
_PROTOBUF_LIMIT = 2**31 - 2**24  # less a margin for the graph itself


def write_encoder_onnx(
    weights: Mapping[str, np.ndarray], audio_config: Mapping[str, Any], frontend_path: Path, backend_path: Path
) -> None:
    """Write the fp32 frontend and backend graphs of the audio tower.

    `weights`: the tower's tensors keyed by their names inside it (the checkpoint's names less
    `thinker.audio_tower.`), float32 (other float types are converted one tensor at a time).
    `audio_config`: the checkpoint's `thinker_config.audio_config`."""
    onnx = _import_onnx()
    dims = _Dims.read(audio_config)
    tower = _Tower(weights, dims)
    for build, name, path in (
        (_frontend, "qwen3_asr_encoder_frontend", frontend_path),
        (_backend, "qwen3_asr_encoder_backend", backend_path),
    ):
        model = build(_Graph(onnx, name), tower, dims)
        # One self-contained file (no external data): the towers are < 2 GB, which _Tower checks.
        onnx.save(model, str(path))
        # The checker reads the written file, so the proto is dropped first and not serialized again to check it.
        del model
        onnx.checker.check_model(str(path))


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as e:
        raise ExportError(f"the encoder export needs the onnx package ({e}): pip install 'onnx>=1.16'.") from e
    return onnx


class _Dims:
    """The sizes the graphs need, from the audio config (defaults filled as the official class fills them)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        c = {**AUDIO_DEFAULTS, **config}
        self.n_mels = int(c["num_mel_bins"])
        self.d_model = int(c["d_model"])
        self.layers = int(c["encoder_layers"])
        self.heads = int(c["encoder_attention_heads"])
        self.ffn = int(c["encoder_ffn_dim"])
        self.output_dim = int(c["output_dim"])
        self.conv = int(c["downsample_hidden_size"])
        self.n_window = int(c["n_window"])
        self.n_window_infer = int(c["n_window_infer"])
        self.activation = str(c["activation_function"])
        # conv 3x3, stride 2, padding 1, three times: 128 mel bins -> 16, 100 frames -> 13 rows
        self.conv_bins = _halve3(self.n_mels)
        self.rows = _halve3(CHUNK_FRAMES)
        assert self.rows == ROWS_PER_CHUNK

    @classmethod
    def read(cls, config: Mapping[str, Any]) -> _Dims:
        dims = cls(config)
        # The runtime's features and chunking are fixed (engine/features.py, engine/encoder.py): a tower built
        # for others would export without complaint and then fail or mis-encode at run time.
        if 2 * dims.n_window != CHUNK_FRAMES or dims.n_mels != N_MELS:
            raise ExportError(
                f"the audio config has n_window {dims.n_window} and num_mel_bins {dims.n_mels}; qasr-live encodes "
                f"{CHUNK_FRAMES}-frame chunks of {N_MELS} mel bins (n_window {CHUNK_FRAMES // 2}) as Qwen3-ASR 0.6B "
                "and 1.7B do: export one of those checkpoints."
            )
        window_frames = WINDOW_ROWS // ROWS_PER_CHUNK * CHUNK_FRAMES
        if dims.n_window_infer != window_frames:
            raise ExportError(
                f"the audio config has n_window_infer {dims.n_window_infer}; qasr-live's encoder attends within "
                f"{window_frames}-frame (8 s) windows as Qwen3-ASR 0.6B and 1.7B do (n_window_infer "
                f"{window_frames}): export one of those checkpoints."
            )
        if dims.activation != "gelu":
            raise ExportError(
                f"the audio config's activation_function is {dims.activation!r}; the encoder export implements the "
                "official Qwen3-ASR tower's 'gelu' only: export a Qwen3-ASR 0.6B or 1.7B checkpoint."
            )
        if dims.heads <= 0 or dims.d_model % dims.heads:
            raise ExportError(
                f"the audio config's d_model {dims.d_model} is not a multiple of encoder_attention_heads "
                f"{dims.heads}; the checkpoint's config.json is damaged: download it again."
            )
        return dims


def _halve3(n: int) -> int:
    for _ in range(3):
        n = (n - 1) // 2 + 1
    return n


class _Tower:
    """The checkpoint's tensors, checked against the config: a wrong or missing tensor is named up front
    instead of surfacing as a shape error inside ONNX Runtime."""

    def __init__(self, weights: Mapping[str, np.ndarray], dims: _Dims) -> None:
        self._weights = weights
        d, c = dims.d_model, dims.conv
        self.shapes: dict[str, tuple[int, ...]] = {
            "conv2d1.weight": (c, 1, 3, 3),
            "conv2d1.bias": (c,),
            "conv2d2.weight": (c, c, 3, 3),
            "conv2d2.bias": (c,),
            "conv2d3.weight": (c, c, 3, 3),
            "conv2d3.bias": (c,),
            "conv_out.weight": (d, c * dims.conv_bins),
            "ln_post.weight": (d,),
            "ln_post.bias": (d,),
            "proj1.weight": (d, d),
            "proj1.bias": (d,),
            "proj2.weight": (dims.output_dim, d),
            "proj2.bias": (dims.output_dim,),
        }
        for i in range(dims.layers):
            p = f"layers.{i}."
            for norm in ("self_attn_layer_norm", "final_layer_norm"):
                self.shapes[f"{p}{norm}.weight"] = (d,)
                self.shapes[f"{p}{norm}.bias"] = (d,)
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                self.shapes[f"{p}self_attn.{proj}.weight"] = (d, d)
                self.shapes[f"{p}self_attn.{proj}.bias"] = (d,)
            self.shapes[f"{p}fc1.weight"] = (dims.ffn, d)
            self.shapes[f"{p}fc1.bias"] = (dims.ffn,)
            self.shapes[f"{p}fc2.weight"] = (d, dims.ffn)
            self.shapes[f"{p}fc2.bias"] = (d,)
        missing = [name for name in self.shapes if name not in weights]
        if missing:
            raise ExportError(
                f"the checkpoint lacks {len(missing)} audio tower tensor(s), e.g. thinker.audio_tower.{missing[0]}; "
                "it is incomplete or not a Qwen3-ASR checkpoint: download it again."
            )
        for name, shape in self.shapes.items():
            if tuple(weights[name].shape) != shape:
                raise ExportError(
                    f"thinker.audio_tower.{name} has shape {tuple(weights[name].shape)} where the audio config "
                    f"implies {shape}; config.json and the weights disagree: download the checkpoint again."
                )
        total = 4 * sum(math.prod(s) for s in self.shapes.values())
        if total > _PROTOBUF_LIMIT:
            raise ExportError(
                f"the audio tower holds {total / 2**30:.1f} GiB of fp32 weights, more than one ONNX file can "
                "hold (2 GiB); qasr-live exports the Qwen3-ASR 0.6B and 1.7B towers."
            )

    def __getitem__(self, name: str) -> np.ndarray:
        # no copy for float32 input; a bf16/f16 tensor is widened alone, so at most one extra tensor is alive
        return np.asarray(self._weights[name], dtype=np.float32)


class _Graph:
    """One model under construction, with unique value names.

    Initializers are written straight into the model's graph: onnx.helper.make_graph and make_model copy every
    tensor they are given (protobuf messages are values), which for the 1.7B tower would hold three copies of
    its weights at once. Here the model holds one, plus the caller's arrays."""

    def __init__(self, onnx_mod: Any, name: str) -> None:
        self.onnx = onnx_mod
        helper = onnx_mod.helper
        opsets = [helper.make_opsetid("", OPSET)]
        self.proto: onnx.ModelProto = helper.make_model(
            helper.make_graph([], name, [], []),
            opset_imports=opsets,
            producer_name="qasr-live",
            # the oldest IR that has opset 18 (8, as torch's exporter writes), not the installed onnx's newest:
            # older onnxruntime releases refuse IR versions they do not know
            ir_version=helper.find_min_ir_version_for(opsets),
        )
        self._count = 0
        self._gelu: tuple[str, str, str] | None = None  # its constants, added on first use

    def const(self, name: str, array: np.ndarray) -> str:
        tensor = self.proto.graph.initializer.add()
        tensor.name = name
        tensor.data_type = self.onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        # tobytes writes the C-order bytes of a transposed view directly: one temporary copy, freed at once
        tensor.raw_data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        self._count += 1
        name = out or f"{op_type.lower()}_{self._count}"
        node = self.onnx.helper.make_node(op_type, list(inputs), [name], name=f"n{self._count}", **attrs)
        self.proto.graph.node.append(node)
        return name

    def linear(self, x: str, tower: _Tower, prefix: str, bias: bool = True, out: str | None = None) -> str:
        """x @ W.T (+ b), with W.T stored transposed so MatMul reads it as (in, out)."""
        w = self.const(f"{prefix}.weight_t", tower[f"{prefix}.weight"].T)
        if not bias:
            return self.op("MatMul", x, w, out=out)
        y = self.op("MatMul", x, w)
        return self.op("Add", y, self.const(f"{prefix}.bias", tower[f"{prefix}.bias"]), out=out)

    def gelu(self, x: str) -> str:
        """Exact GELU, x * 0.5 * (1 + erf(x / sqrt 2)): torch's F.gelu / ACT2FN['gelu'], in the form ONNX
        Runtime fuses into its Gelu kernel (opset 18 has no Gelu op)."""
        if self._gelu is None:
            self._gelu = (
                self.const("gelu.sqrt2", _scalar(math.sqrt(2.0))),
                self.const("gelu.one", _scalar(1.0)),
                self.const("gelu.half", _scalar(0.5)),
            )
        sqrt2, one, half = self._gelu
        e = self.op("Erf", self.op("Div", x, sqrt2))
        return self.op("Mul", self.op("Mul", x, self.op("Add", e, one)), half)

    def layer_norm(self, x: str, tower: _Tower, prefix: str) -> str:
        scale = self.const(f"{prefix}.weight", tower[f"{prefix}.weight"])
        bias = self.const(f"{prefix}.bias", tower[f"{prefix}.bias"])
        return self.op("LayerNormalization", x, scale, bias, axis=-1, epsilon=LAYER_NORM_EPS)

    def finish(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
        self.proto.graph.input.extend(inputs)
        self.proto.graph.output.extend(outputs)
        return self.proto


def positions(rows: int, d_model: int, max_timescale: float = 10000.0) -> np.ndarray:
    """The first `rows` rows of the official SinusoidsPositionEmbedding (a buffer, not in the checkpoint):
    [sin(t * inv), cos(t * inv)], inv = exp(-log(max_timescale) / (d/2 - 1) * arange(d/2)), in float32 as torch
    computes it."""
    half = d_model // 2
    increment = np.float32(np.log(max_timescale) / (half - 1))
    inv = np.exp(-increment * np.arange(half, dtype=np.float32))
    scaled = np.arange(rows, dtype=np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def _frontend(g: _Graph, tower: _Tower, dims: _Dims) -> onnx.ModelProto:
    helper, f32 = g.onnx.helper, g.onnx.TensorProto.FLOAT
    x = g.op("Unsqueeze", "chunk_mel", g.const("axes1", np.array([1], dtype=np.int64)))  # (B, 1, mels, frames)
    for i in (1, 2, 3):
        w = g.const(f"conv2d{i}.weight", tower[f"conv2d{i}.weight"])
        b = g.const(f"conv2d{i}.bias", tower[f"conv2d{i}.bias"])
        x = g.gelu(g.op("Conv", x, w, b, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    # (B, C, F, N) -> (B, N, C * F): channel-major per frame, as the official permute(0, 3, 1, 2).view(b, t, c*f)
    x = g.op("Transpose", x, perm=[0, 3, 1, 2])
    x = g.op("Reshape", x, g.const("shape_rows", np.array([0, 0, dims.conv * dims.conv_bins], dtype=np.int64)))
    x = g.linear(x, tower, "conv_out", bias=False)
    g.op("Add", x, g.const("positions", positions(dims.rows, dims.d_model)), out="chunk_out")
    return g.finish(
        [helper.make_tensor_value_info("chunk_mel", f32, ["batch", dims.n_mels, CHUNK_FRAMES])],
        [helper.make_tensor_value_info("chunk_out", f32, ["batch", dims.rows, dims.d_model])],
    )


def _backend(g: _Graph, tower: _Tower, dims: _Dims) -> onnx.ModelProto:
    helper, f32 = g.onnx.helper, g.onnx.TensorProto.FLOAT
    d, heads = dims.d_model, dims.heads
    head_dim = d // heads
    heads_shape = g.const("shape_heads", np.array([0, 0, heads, head_dim], dtype=np.int64))
    rows_shape = g.const("shape_model", np.array([0, 0, d], dtype=np.int64))
    x = "hidden_states"
    for i in range(dims.layers):
        p = f"layers.{i}."
        h = g.layer_norm(x, tower, f"{p}self_attn_layer_norm")
        q, k, v = (g.linear(h, tower, f"{p}self_attn.{n}_proj") for n in "qkv")
        q = g.op("Transpose", g.op("Reshape", q, heads_shape), perm=[0, 2, 1, 3])  # (B, H, T, hd)
        k = g.op("Transpose", g.op("Reshape", k, heads_shape), perm=[0, 2, 3, 1])  # (B, H, hd, T)
        v = g.op("Transpose", g.op("Reshape", v, heads_shape), perm=[0, 2, 1, 3])  # (B, H, T, hd)
        scores = g.op("Mul", g.op("MatMul", q, k), g.const(f"{p}self_attn.scaling", _scalar(head_dim**-0.5)))
        weights = g.op("Softmax", g.op("Add", scores, "attention_mask"), axis=-1)
        h = g.op("Transpose", g.op("MatMul", weights, v), perm=[0, 2, 1, 3])
        h = g.linear(g.op("Reshape", h, rows_shape), tower, f"{p}self_attn.out_proj")
        x = g.op("Add", x, h)
        h = g.layer_norm(x, tower, f"{p}final_layer_norm")
        h = g.linear(g.gelu(g.linear(h, tower, f"{p}fc1")), tower, f"{p}fc2")
        x = g.op("Add", x, h)
    x = g.layer_norm(x, tower, "ln_post")
    x = g.gelu(g.linear(x, tower, "proj1"))
    g.linear(x, tower, "proj2", out="last_hidden_state")
    return g.finish(
        [
            helper.make_tensor_value_info("hidden_states", f32, ["batch", "time", d]),
            helper.make_tensor_value_info("attention_mask", f32, ["batch", 1, "time", "time"]),
        ],
        [helper.make_tensor_value_info("last_hidden_state", f32, ["batch", "time", dims.output_dim])],
    )


def _scalar(value: float) -> np.ndarray:
    return np.array(value, dtype=np.float32)


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8: weights stored as int8 per output channel, activations quantized on the fly (MatMul only:
    ConvInteger has no kernel in many onnxruntime builds).

    Weights use 7 bits (``reduce_range``): on x86 CPUs without VNNI (AVX2, AVX-512F) onnxruntime multiplies u8
    activations by s8 weights with VPMADDUBSW, whose 16-bit pair sums saturate at full-range weights. Measured on
    an AVX2-only machine with the parity test's tiny models: the greedy ids' mean common prefix with the
    reference went from 15 % to 44 % (the fp32 encoder: 100 %)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    root.addFilter(_drop_preprocessing_advice)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            reduce_range=True,
        )
    finally:
        root.removeFilter(_drop_preprocessing_advice)


def _drop_preprocessing_advice(record: logging.LogRecord) -> bool:
    """onnxruntime's quantizer warns on the root logger that the model should be pre-processed first (symbolic
    shape inference and graph optimisation, for static quantization of models with unknown shapes). Dynamic
    MatMul quantization of graphs built here gains nothing from it; the user would only see noise."""
    return not record.getMessage().startswith("Please consider to run pre-processing before quantization")


def quantize_int4(src: Path, dst: Path, block_size: int = 128) -> None:
    """Weight-only 4-bit MatMulNBits (blocks of 128 along K; matmuls with a narrower K stay fp32)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    quantizer = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
