"""Read a Hugging Face Qwen3-ASR checkpoint directory without torch: config.json and the safetensors weights.

The weights are read one tensor at a time, straight from the file (safetensors is a JSON header followed by raw
little-endian arrays), and widened to float32 with numpy: bf16 is the upper half of a float32, so the widening is
exact and needs no ml_dtypes. Nothing holds the whole model: the 1.7B checkpoint is ~4.7 GB in bf16 and ~9.4 GB
as float32, and an export streams it tensor by tensor into each output file.

Every file is checked when the checkpoint is opened (headers parse, every tensor's bytes lie inside its file,
dtypes are ones we read, shapes agree with config.json), so a truncated download or a wrong config fails in a
second with one line, not minutes into an export.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qasr_live.errors import ExportError

_LOGGER = logging.getLogger(__name__)
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TEXT_PREFIX = "thinker."  # the language model: thinker.model.*, thinker.lm_head.weight
AUDIO_PREFIX = "thinker.audio_tower."
# Bytes per element of the stored dtypes we widen to float32.
DTYPES = {"BF16": 2, "F16": 2, "F32": 4}
_MAX_HEADER = 100 << 20  # the safetensors format's own limit; a larger length means a damaged file
_DOWNLOAD = "`huggingface-cli download Qwen/Qwen3-ASR-0.6B --local-dir Qwen3-ASR-0.6B`"

# The official config classes' defaults (qwen_asr configuration_qwen3_asr.py), for keys a config.json omits:
# save_pretrained writes every key, but a hand-edited config may not, and the torch path read these defaults.
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 22016,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "head_dim": 128,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "rope_theta": 5000000.0,
    "tie_word_embeddings": False,
}
AUDIO_DEFAULTS: dict[str, Any] = {
    "num_mel_bins": 128,
    "encoder_layers": 32,
    "encoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "d_model": 1280,
    "max_source_positions": 1500,
    "n_window": 100,
    "output_dim": 3584,
    "n_window_infer": 400,
    "conv_chunksize": 500,
    "downsample_hidden_size": 480,
    "activation_function": "gelu",
}


def read_checkpoint_config(src: Path) -> dict[str, Any]:
    """config.json of a Qwen3-ASR checkpoint directory, refusing anything else with the fix in the message."""
    config_path = src / "config.json"
    if not src.is_dir():
        raise ExportError(
            f"{src} is not a directory. Pass the directory of a downloaded Qwen3-ASR checkpoint, e.g. {_DOWNLOAD}."
        )
    try:
        config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(
            f"{src} has no config.json: not a Hugging Face checkpoint directory. Pass the directory of a downloaded "
            f"Qwen3-ASR checkpoint, e.g. {_DOWNLOAD}."
        ) from None
    except OSError as e:
        raise ExportError(f"{config_path} cannot be read ({e.strerror or e}); check its permissions.") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{config_path} is not valid JSON ({e}); download the checkpoint again.") from e
    if not isinstance(config, dict) or not isinstance(config.get("thinker_config"), dict):
        model_type = config.get("model_type") if isinstance(config, dict) else None
        raise ExportError(
            f"{config_path} has no `thinker_config`: this is not a Qwen3-ASR checkpoint "
            f"(model_type {model_type!r}). Use Qwen/Qwen3-ASR-0.6B or -1.7B."
        )
    if is_aligner_config(config) and not isinstance(config["thinker_config"].get("classify_num"), int):
        raise ExportError(
            f"{config_path} names a Qwen3-ForcedAligner but lacks thinker_config.classify_num (the number of "
            "timestamp slots); download the checkpoint again (e.g. Qwen/Qwen3-ForcedAligner-0.6B)."
        )
    return config


def is_aligner_config(config: Mapping[str, Any]) -> bool:
    """Whether config.json describes a Qwen3-ForcedAligner: the official test is this substring of the thinker's
    model_type (its head is then a classifier over timestamp slots, not the vocabulary)."""
    thinker = config.get("thinker_config")
    return isinstance(thinker, dict) and "forced_aligner" in str(thinker.get("model_type", ""))


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """Where one stored tensor lies: its file, dtype, shape and absolute byte range."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def _corrupt(path: Path, detail: str) -> ExportError:
    return ExportError(f"{path} is truncated or corrupt ({detail}); download it again.")


def read_safetensors_header(path: Path) -> dict[str, TensorEntry]:
    """Every tensor of one .safetensors file, checked against the file's real size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _corrupt(path, f"{size} bytes, shorter than a safetensors header")
            n = int.from_bytes(head, "little")
            if n > min(_MAX_HEADER, size - 8):
                raise _corrupt(path, f"the header claims {n} bytes, the file has {size}")
            raw = f.read(n)
    except OSError as e:
        raise ExportError(f"{path} cannot be read ({e.strerror or e}); check its permissions.") from e
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _corrupt(path, f"its header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    base = 8 + n
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = str(info["dtype"]), tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise _corrupt(path, f"bad header entry for {name}") from e
        if not 0 <= begin <= end:
            raise _corrupt(path, f"bad byte range for {name}")
        if dtype in DTYPES and end - begin != DTYPES[dtype] * math.prod(shape):
            raise _corrupt(path, f"{name} holds {end - begin} bytes, its shape {list(shape)} needs more or fewer")
        if base + end > size:
            raise _corrupt(path, f"{name} ends at byte {base + end}, the file has {size}")
        entries[name] = TensorEntry(name, path, dtype, shape, base + begin, base + end)
    return entries


def _index_shards(src: Path) -> list[Path]:
    index_path = src / INDEX_FILE
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        shards = sorted({str(v) for v in weight_map.values()})
    except OSError as e:
        raise ExportError(f"{index_path} cannot be read ({e.strerror or e}); check its permissions.") from e
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ExportError(f"{index_path} is not a valid safetensors index ({e}); download it again.") from e
    paths = [src / shard for shard in shards]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ExportError(
            f"{src} lacks the weight file(s) {', '.join(missing)} listed in {INDEX_FILE}; download the checkpoint "
            "again (all shards)."
        )
    return paths


def _widen(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Stored little-endian elements -> float32, exactly."""
    if dtype == "F32":
        return raw.view("<f4").astype(np.float32, copy=False)
    if dtype == "F16":
        return raw.view("<f2").astype(np.float32)
    wide = raw.view("<u2").astype(np.uint32)  # BF16: the upper 16 bits of a float32
    wide <<= 16
    return wide.view(np.float32)


class Checkpoint:
    """An opened checkpoint: config (with the official defaults filled in) and lazily read float32 weights."""

    def __init__(self, src: Path) -> None:
        self.path = src
        self.config = read_checkpoint_config(src)
        thinker = self.config["thinker_config"]
        self.text_config: dict[str, Any] = {**TEXT_DEFAULTS, **(thinker.get("text_config") or {})}
        self.audio_config: dict[str, Any] = {**AUDIO_DEFAULTS, **(thinker.get("audio_config") or {})}
        if (src / SINGLE_FILE).is_file():  # transformers' own order: the single file first, then the index
            files = [src / SINGLE_FILE]
        elif (src / INDEX_FILE).is_file():
            files = _index_shards(src)
        else:
            raise ExportError(
                f"{src} has neither {SINGLE_FILE} nor {INDEX_FILE}: download the checkpoint's weights "
                f"(safetensors), e.g. {_DOWNLOAD}."
            )
        self.tensors: dict[str, TensorEntry] = {}
        for path in files:
            self.tensors.update(read_safetensors_header(path))

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def entry(self, name: str) -> TensorEntry:
        try:
            return self.tensors[name]
        except KeyError:
            raise ExportError(
                f"the weights of {self.path} lack {name}: an incomplete or foreign checkpoint; download it again."
            ) from None

    def check_dtype(self, name: str) -> None:
        entry = self.entry(name)
        if entry.dtype not in DTYPES:
            raise ExportError(
                f"{entry.file} stores {name} as {entry.dtype}; export reads bf16, f16 and f32 weights: use the "
                "original Qwen3-ASR checkpoint, not a quantized or converted one."
            )

    def load(self, name: str) -> np.ndarray:
        """One tensor as a float32 array (read from disk on every call: callers hold what they need)."""
        self.check_dtype(name)
        entry = self.entry(name)
        raw = np.empty(entry.end - entry.start, dtype=np.uint8)
        try:
            with open(entry.file, "rb") as f:
                f.seek(entry.start)
                got = f.readinto(raw.data)
        except OSError as e:
            raise ExportError(
                f"{entry.file} cannot be read ({e.strerror or e}); check the disk and download it again."
            ) from e
        if got != raw.size:  # the file shrank after it was opened
            raise _corrupt(entry.file, f"{name} is cut short")
        return _widen(raw, entry.dtype).reshape(entry.shape)

    def equal(self, a: str, b: str, rows: int = 4096) -> bool:
        """Whether two tensors hold the same values, compared a block of rows at a time (the embedding and the
        output head of the 1.7B model are 1.2 GB each as float32)."""
        ea, eb = self.entry(a), self.entry(b)
        if ea.shape != eb.shape:
            return False
        if ea.dtype == eb.dtype:  # same encoding: equal values are equal bytes (up to -0.0 and NaN payloads)
            return _equal_bytes(ea, eb)
        return bool(np.array_equal(self.load(a), self.load(b)))

    def audio_weights(self, on_load: Callable[[int], None] | None = None) -> AudioWeights:
        return AudioWeights(self, on_load)


def _equal_bytes(a: TensorEntry, b: TensorEntry, block: int = 64 << 20) -> bool:
    with open(a.file, "rb") as fa, open(b.file, "rb") as fb:
        fa.seek(a.start)
        fb.seek(b.start)
        left = a.end - a.start
        while left > 0:
            n = min(block, left)
            if fa.read(n) != fb.read(n):
                return False
            left -= n
    return True


class AudioWeights(Mapping[str, np.ndarray]):
    """The audio tower's tensors, named without `thinker.audio_tower.`, read as float32 when looked up (no cache:
    the ONNX writer keeps what it takes, so a second copy here would double the peak)."""

    def __init__(self, checkpoint: Checkpoint, on_load: Callable[[int], None] | None) -> None:
        self._checkpoint, self._on_load = checkpoint, on_load
        self._names = [n[len(AUDIO_PREFIX) :] for n in checkpoint.tensors if n.startswith(AUDIO_PREFIX)]

    def __getitem__(self, key: str) -> np.ndarray:
        name = AUDIO_PREFIX + key
        if name not in self._checkpoint:
            raise KeyError(key)
        array = self._checkpoint.load(name)
        if self._on_load is not None:
            self._on_load(array.nbytes)
        return array

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def nbytes(self) -> int:
        """float32 bytes of the whole tower (what a progress bar counts)."""
        return sum(4 * math.prod(self._checkpoint.entry(AUDIO_PREFIX + n).shape) for n in self._names)


# ----------------------------------------------------------------------------------------- layout and shapes


def decoder_weight_shapes(text: Mapping[str, Any], tied: bool) -> dict[str, tuple[int, ...]]:
    """The language model's tensors (names under `thinker.`) and the shapes config.json implies."""
    hidden, ffn, vocab = text["hidden_size"], text["intermediate_size"], text["vocab_size"]
    head_dim = text.get("head_dim") or hidden // text["num_attention_heads"]
    q, kv = text["num_attention_heads"] * head_dim, text["num_key_value_heads"] * head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(text["num_hidden_layers"]):
        layer = f"model.layers.{i}."
        shapes |= {
            layer + "input_layernorm.weight": (hidden,),
            layer + "self_attn.q_proj.weight": (q, hidden),
            layer + "self_attn.k_proj.weight": (kv, hidden),
            layer + "self_attn.v_proj.weight": (kv, hidden),
            layer + "self_attn.o_proj.weight": (hidden, q),
            layer + "self_attn.q_norm.weight": (head_dim,),
            layer + "self_attn.k_norm.weight": (head_dim,),
            layer + "post_attention_layernorm.weight": (hidden,),
            layer + "mlp.gate_proj.weight": (ffn, hidden),
            layer + "mlp.up_proj.weight": (ffn, hidden),
            layer + "mlp.down_proj.weight": (hidden, ffn),
        }
    shapes["model.norm.weight"] = (hidden,)
    if not tied:
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def audio_weight_shapes(audio: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The audio tower's tensors (names under `thinker.audio_tower.`) and the shapes config.json implies."""
    d, ffn, ch = audio["d_model"], audio["encoder_ffn_dim"], audio["downsample_hidden_size"]
    freq = audio["num_mel_bins"]
    for _ in range(3):  # three stride-2 convs over the mel axis
        freq = (freq + 1) // 2
    shapes: dict[str, tuple[int, ...]] = {
        "conv2d1.weight": (ch, 1, 3, 3),
        "conv2d1.bias": (ch,),
        "conv2d2.weight": (ch, ch, 3, 3),
        "conv2d2.bias": (ch,),
        "conv2d3.weight": (ch, ch, 3, 3),
        "conv2d3.bias": (ch,),
        "conv_out.weight": (d, ch * freq),
    }
    for i in range(audio["encoder_layers"]):
        layer = f"layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes |= {f"{layer}self_attn.{proj}.weight": (d, d), f"{layer}self_attn.{proj}.bias": (d,)}
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes |= {f"{layer}{norm}.weight": (d,), f"{layer}{norm}.bias": (d,)}
        shapes |= {
            f"{layer}fc1.weight": (ffn, d),
            f"{layer}fc1.bias": (ffn,),
            f"{layer}fc2.weight": (d, ffn),
            f"{layer}fc2.bias": (d,),
        }
    out = audio["output_dim"]
    shapes |= {
        "ln_post.weight": (d,),
        "ln_post.bias": (d,),
        "proj1.weight": (d, d),
        "proj1.bias": (d,),
        "proj2.weight": (out, d),
        "proj2.bias": (out,),
    }
    return shapes


_LAYER = re.compile(r"^(thinker\.model|thinker\.audio_tower)\.layers\.(\d+)\.")


def check_layout(checkpoint: Checkpoint, tied: bool) -> None:
    """Every tensor the export reads exists, has a dtype we read and the shape config.json implies; no layer
    lies beyond the counts config.json gives. One line naming the first disagreement."""
    text, audio = checkpoint.text_config, checkpoint.audio_config
    expected = {TEXT_PREFIX + k: v for k, v in decoder_weight_shapes(text, tied).items()}
    expected |= {AUDIO_PREFIX + k: v for k, v in audio_weight_shapes(audio).items()}
    for name, shape in expected.items():
        if name not in checkpoint:
            raise ExportError(
                f"the weights of {checkpoint.path} lack {name}, which config.json implies; the weights and "
                "config.json do not belong together: download the checkpoint again."
            )
        checkpoint.check_dtype(name)
        stored = checkpoint.entry(name).shape
        if stored != shape:
            raise ExportError(
                f"{name} has shape {list(stored)} but config.json implies {list(shape)}; the weights and "
                "config.json do not belong together: download the checkpoint again."
            )
    if audio["output_dim"] != text["hidden_size"]:
        raise ExportError(
            f"config.json's audio output_dim ({audio['output_dim']}) differs from the text hidden_size "
            f"({text['hidden_size']}): not a Qwen3-ASR checkpoint this exporter knows."
        )
    counts = {"thinker.model": text["num_hidden_layers"], "thinker.audio_tower": audio["encoder_layers"]}
    extra = []
    for name in checkpoint.tensors:
        match = _LAYER.match(name)
        if match and int(match[2]) >= counts[match[1]]:
            raise ExportError(
                f"the weights of {checkpoint.path} hold {name}, beyond the {counts[match[1]]} layers config.json "
                "gives; the weights and config.json do not belong together: download the checkpoint again."
            )
        if name.startswith(AUDIO_PREFIX) and name not in expected:
            extra.append(name)
    if extra:  # handed to the encoder writer, which decides; worth a line when something looks new
        _LOGGER.warning("audio tower tensors this exporter does not know: %s", ", ".join(extra[:8]))


def tied_head(checkpoint: Checkpoint) -> bool:
    """Whether the output head is the embedding: no stored `lm_head.weight`, one equal to the embedding, or a
    config that ties them (the official model then ignores a stored head: transformers ties it on load)."""
    head, embed = TEXT_PREFIX + "lm_head.weight", TEXT_PREFIX + "model.embed_tokens.weight"
    if head not in checkpoint or checkpoint.text_config.get("tie_word_embeddings"):
        return True
    return checkpoint.equal(head, embed)


def open_checkpoint(src: Path) -> tuple[Checkpoint, bool]:
    """The opened, checked checkpoint and whether its output head is tied to the embedding. An aligner's head
    is its timestamp classifier, never the embedding: the decoder is checked as if tied (no vocabulary head) and
    the classifier on its own."""
    checkpoint = Checkpoint(src)
    if is_aligner_config(checkpoint.config):
        check_layout(checkpoint, True)
        check_classifier(checkpoint)
        return checkpoint, True
    tied = tied_head(checkpoint)
    check_layout(checkpoint, tied)
    return checkpoint, tied


CLASSIFIER = TEXT_PREFIX + "lm_head.weight"


def check_classifier(checkpoint: Checkpoint) -> None:
    """The aligner's head: `classify_num` rows of the text width, and a timestamp token the config names."""
    classes = checkpoint.config["thinker_config"]["classify_num"]
    shape = (classes, checkpoint.text_config["hidden_size"])
    if CLASSIFIER not in checkpoint:
        raise ExportError(
            f"the weights of {checkpoint.path} lack {CLASSIFIER}, the aligner's timestamp classifier; the weights "
            "and config.json do not belong together: download the checkpoint again."
        )
    checkpoint.check_dtype(CLASSIFIER)
    if checkpoint.entry(CLASSIFIER).shape != shape:
        raise ExportError(
            f"{CLASSIFIER} has shape {list(checkpoint.entry(CLASSIFIER).shape)} but config.json implies "
            f"{list(shape)} (classify_num x hidden_size); download the checkpoint again."
        )
