"""The exported model directory and its manifest (``manifest.json``).

Layout, written by ``qasr-live export`` and read here::

    manifest.json
    encoder_frontend.{fp32,int8,int4}.onnx   one 100-frame mel chunk -> 13 rows (batch dimension dynamic)
    encoder_backend.{fp32,int8,int4}.onnx    rows + additive mask -> LLM-hidden rows (dynamic length)
    decoder.{f32,f16,q8_0,q4_k}.gguf          the language model, arch `qwen3`, with its tokenizer
    classifier.f32.npy                        aligners only (kind qwen3-forced-aligner): the timestamp head

The manifest records the dims the two halves must agree on, the special-token ids, and a sha256 per file, so a
missing, truncated or mismatched file is caught at load time with a message that says how to fix it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qasr_live.errors import ModelError

MANIFEST = "manifest.json"
KIND_ASR = "qwen3-asr"
KIND_ALIGNER = "qwen3-forced-aligner"
CLASSIFIER_FILE = "classifier.f32.npy"
FORMAT_VERSION = 1
ENCODER_PRECISIONS = ("fp32", "int8", "int4")
DECODER_PRECISIONS = ("f32", "f16", "q8_0", "q4_k")
# What "auto" picks, best first, for a CPU: int8 encoders and q8_0 decoders are near-lossless and fastest.
AUTO_ENCODER_ORDER = ("int8", "fp32", "int4")
AUTO_DECODER_ORDER = ("q8_0", "q4_k", "f16", "f32")


def encoder_file(part: str, precision: str) -> str:
    return f"encoder_{part}.{precision}.onnx"


def decoder_file(precision: str) -> str:
    return f"decoder.{precision}.gguf"


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ModelDir:
    """A validated model directory with the files chosen for one precision pair."""

    path: Path
    manifest: dict[str, Any]  # the parsed manifest.json (validated where read below)
    frontend: Path
    backend: Path
    decoder: Path
    encoder_precision: str
    decoder_precision: str
    classifier: Path | None = None  # aligners only

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", KIND_ASR))

    @property
    def dims(self) -> dict[str, Any]:
        dims: dict[str, Any] = self.manifest["dims"]
        return dims

    @property
    def is_demo(self) -> bool:
        return bool(self.manifest.get("demo", False))


def _pick(kind: str, wanted: str, available: list[str], order: tuple[str, ...], path: Path, key: str) -> str:
    if wanted == "auto":
        for p in order:
            if p in available:
                return p
        raise ModelError(f"{path}: the manifest lists no {kind} file; re-export the model with `qasr-live export`.")
    if wanted not in available:
        raise ModelError(
            f"{path}: no {kind} of precision {wanted!r} in this model (it has: {', '.join(available) or 'none'}). "
            f"Set `{key}` in config.yaml to one of those or 'auto', or re-export with "
            f"`qasr-live export SRC {path} --{kind} {wanted} --force`."
        )
    return wanted


def open_model_dir(
    path: str | Path, encoder_precision: str = "auto", decoder_precision: str = "auto", verify: bool = True
) -> ModelDir:
    """Read and check the manifest, choose the files, and (verify=True) check their sizes and checksums."""
    path = Path(path).expanduser()
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise ModelError(
            f"model directory {path} {what}. Install a model with `qasr-live pull Qwen/Qwen3-ASR-0.6B`, or set "
            "`model.dir` in config.yaml (or --model) to a directory written by `qasr-live export SRC OUT_DIR`."
        )
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{path} has no {MANIFEST}: it is not an exported qasr-live model. Install one with `qasr-live pull "
            f"Qwen/Qwen3-ASR-0.6B`, or export one with `qasr-live export SRC {path}` (SRC: a downloaded checkpoint)."
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{manifest_path} is corrupt ({e}); re-export the model with `qasr-live export`.") from e
    except OSError as e:
        raise ModelError(
            f"{manifest_path} cannot be read ({e.strerror or e}); make it a readable file (e.g. `chmod a+r "
            f"{manifest_path}`) or re-export the model with `qasr-live export`."
        ) from e
    if not isinstance(manifest, dict):
        raise ModelError(
            f"{manifest_path} is corrupt (a JSON {type(manifest).__name__}, not an object); "
            "re-export the model with `qasr-live export`."
        )
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(
            f"{manifest_path}: unknown format_version {version!r} (this qasr-live reads version {FORMAT_VERSION}). "
            "Re-export the model with this version's `qasr-live export`, or install the qasr-live that wrote it."
        )
    files = manifest.get("files", {})
    _check_entries(manifest_path, files)
    enc_available = sorted({f["precision"] for f in files.values() if f["role"] == "encoder_backend"})
    dec_available = sorted({f["precision"] for f in files.values() if f["role"] == "decoder"})
    enc = _pick("encoder", encoder_precision, enc_available, AUTO_ENCODER_ORDER, path, "model.encoder_precision")
    dec = _pick("decoder", decoder_precision, dec_available, AUTO_DECODER_ORDER, path, "model.decoder_precision")
    chosen = [encoder_file("frontend", enc), encoder_file("backend", enc), decoder_file(dec)]
    if manifest.get("kind", KIND_ASR) == KIND_ALIGNER:
        chosen.append(CLASSIFIER_FILE)
    for name in chosen:
        _check_file(path, name, files.get(name), verify)
    dims = manifest.get("dims")
    enc_dim, dec_dim = (
        (dims.get("encoder_output_dim"), dims.get("decoder_hidden")) if isinstance(dims, dict) else (None, None)
    )
    if not (isinstance(enc_dim, int) and isinstance(dec_dim, int)):
        raise ModelError(
            f"{manifest_path} is corrupt: `dims` lacks the integers encoder_output_dim and decoder_hidden; "
            "re-export the model with `qasr-live export`."
        )
    if enc_dim != dec_dim:
        raise ModelError(
            f"{manifest_path}: the encoder emits {enc_dim}-wide rows (dims.encoder_output_dim) but the decoder "
            f"expects {dec_dim} (dims.decoder_hidden): the two halves come from different models. Re-export both "
            "from one checkpoint with `qasr-live export`."
        )
    classifier = path / CLASSIFIER_FILE if len(chosen) > 3 else None
    return ModelDir(path, manifest, path / chosen[0], path / chosen[1], path / chosen[2], enc, dec, classifier)


def require_kind(model: ModelDir, kind: str, setting: str) -> ModelDir:
    """`model` if it is of `kind`; otherwise one line saying which setting points at the wrong kind of model."""
    if model.kind == kind:
        return model
    if kind == KIND_ALIGNER:
        raise ModelError(
            f"{setting} points at {model.path}, a speech recognition model, not a Qwen3-ForcedAligner: install "
            "the aligner with `qasr-live pull Qwen/Qwen3-ForcedAligner-0.6B` and name it there."
        )
    raise ModelError(
        f"{setting} points at {model.path}, a Qwen3-ForcedAligner (it times text, it cannot transcribe): name a "
        "Qwen3-ASR model there and the aligner in `model.aligner` (or --aligner)."
    )


def _check_entries(manifest_path: Path, files: object) -> None:
    """Reject a `files` table that is not {name: {role, precision, size, sha256}} before anything indexes it."""
    fix = "re-export the model with `qasr-live export`"
    if not isinstance(files, dict):
        raise ModelError(f"{manifest_path} is corrupt: `files` is not an object; {fix}.")
    for name, entry in files.items():
        if not isinstance(entry, dict):
            raise ModelError(f"{manifest_path} is corrupt: the entry of {name} is not an object; {fix}.")
        missing = [k for k in ("role", "precision", "size", "sha256") if k not in entry]
        if missing:
            raise ModelError(f"{manifest_path} is corrupt: the entry of {name} lacks {', '.join(missing)}; {fix}.")


def _check_file(root: Path, name: str, entry: dict[str, Any] | None, verify: bool) -> None:
    fix = f"re-export the model with `qasr-live export SRC {root} --force` (or into a new directory)"
    file = root / name
    if entry is None:
        raise ModelError(f"{root / MANIFEST} does not list {name}; {fix}.")
    if not file.is_file():
        raise ModelError(f"{file} is missing (listed in the manifest); {fix}.")
    size = file.stat().st_size
    if size != entry["size"]:
        raise ModelError(
            f"{file} has {size} bytes, the manifest says {entry['size']}: it is truncated or was replaced; {fix}."
        )
    if verify and sha256_file(file) != entry["sha256"]:
        raise ModelError(f"{file} does not match its sha256 in the manifest: it is corrupt; {fix}.")
