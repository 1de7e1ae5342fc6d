"""`qasr-live export`: an official Hugging Face Qwen3-ASR checkpoint -> a qasr-live model directory.

No torch, transformers or qwen-asr: the checkpoint is read with numpy (checkpoint.py, tokenizer_files.py), the
encoder written as ONNX graphs (encoder_graph.py), the decoder as GGUF with gguf-py (decoder_gguf.py). The
official torch path survives only as a dev cross-check (devkit/torch_reference_export.py).

The output appears atomically: everything is written into a hidden sibling directory which is renamed into
place only when every file and the manifest are complete, so an interrupted export never leaves a half model.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from qasr_live.engine.model_dir import (
    CLASSIFIER_FILE,
    DECODER_PRECISIONS,
    ENCODER_PRECISIONS,
    FORMAT_VERSION,
    KIND_ALIGNER,
    KIND_ASR,
    MANIFEST,
    decoder_file,
    encoder_file,
    sha256_file,
)
from qasr_live.engine.prompt import ASR_TEXT, CONTROL_TOKENS, TIMESTAMP
from qasr_live.errors import ExportError
from qasr_live.export import decoder_gguf, encoder_graph
from qasr_live.export.checkpoint import (
    CLASSIFIER,
    TEXT_PREFIX,
    Checkpoint,
    is_aligner_config,
    open_checkpoint,
    read_checkpoint_config,
)
from qasr_live.export.steps import Steps
from qasr_live.export.tokenizer_files import read_tokenizer

_LOGGER = logging.getLogger(__name__)
REQUIRED_TOKENS = (*CONTROL_TOKENS, ASR_TEXT)
OPTIONAL_TOKENS = (TIMESTAMP,)
ALIGNER_TOKENS = ("<|audio_start|>", "<|audio_end|>", "<|audio_pad|>", TIMESTAMP)


def _parse_list(values: Sequence[str], allowed: tuple[str, ...], option: str) -> list[str]:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ExportError(f"{option}: unknown precision {', '.join(bad)}; choose from {', '.join(allowed)}.")
    return list(dict.fromkeys(values))


def export_checkpoint(
    src: str | Path,
    out: str | Path,
    encoders: Sequence[str] = ("fp32", "int8", "int4"),
    decoders: Sequence[str] = ("f16", "q8_0", "q4_k"),
    force: bool = False,
    progress: Callable[[str], None] = _LOGGER.info,
    threads: int = 0,
    demo: bool = False,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Export `src` into the model directory `out`; returns `out`. `demo` marks the manifest as the embedded
    demo model (qasr_live/models/demo), which the CLI announces as such; `source` entries (e.g. the repo id and
    revision `pull` downloaded) are merged into the manifest's `source`."""
    src, out = Path(src).expanduser(), Path(out).expanduser()
    encoders = _parse_list(encoders, ENCODER_PRECISIONS, "--encoder")
    decoders = _parse_list(decoders, DECODER_PRECISIONS, "--decoder")
    if not encoders or not decoders:
        raise ExportError("export needs at least one encoder and one decoder precision.")
    aligner = is_aligner_config(read_checkpoint_config(src))  # the cheap checks first: not a checkpoint at all
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; choose a new directory or pass --force to replace it.")
    steps = Steps(2 + len([e for e in encoders if e != "fp32"]) + len(decoders), progress)
    with steps("read checkpoint", total=None) as step:
        checkpoint, tied = open_checkpoint(src)
        tokenizer, special = _read_tokenizer(src, ALIGNER_TOKENS if aligner else REQUIRED_TOKENS)
        step.size_note = sum({e.file: e.file.stat().st_size for e in checkpoint.tensors.values()}.values())
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(out)
        tmp.mkdir()
    except OSError as e:
        raise ExportError(
            f"cannot create {tmp} next to {out} ({e.strerror or e}); choose an output directory you can write to."
        ) from e
    try:
        info = {
            "path": str(src),
            "name": src.name,
            "model_type": checkpoint.config.get("model_type"),
            "config_sha256": sha256_file(src / "config.json"),
            **(source or {}),
        }
        files = _write_encoders(checkpoint, tmp, encoders, steps)
        files |= _write_decoders(checkpoint, tied, tokenizer, special, str(info["name"]), tmp, decoders, steps, threads)
        if aligner:
            files |= _write_classifier(checkpoint, tmp)
        manifest = _manifest(checkpoint, tied, info, special, encoders, decoders, files)
        manifest["demo"] = demo
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"done: {out}")
    return out


def _remove_abandoned(out: Path) -> None:
    """Delete `.OUT.partial-PID` directories of exports that were killed outright (SIGKILL, power loss)."""
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            _remove(stale)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` to `out`. An existing `out` is moved aside first and put back if the rename
    fails or is interrupted, so `out` is always either the old model or the complete new one."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    _remove(old)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    """Best-effort removal of a leftover file or directory."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _read_tokenizer(src: Path, required: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, int]]:
    """The tokenizer description and the ids of the Qwen3-ASR special tokens, all `required` ones present."""
    tokenizer = read_tokenizer(src)
    special: dict[str, int] = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    missing = [t for t in required if t not in special]
    if missing:
        raise ExportError(
            f"the tokenizer of {src} lacks the Qwen3-ASR tokens {', '.join(missing)}; "
            "download the checkpoint's tokenizer files again."
        )
    return tokenizer, {t: special[t] for t in (*REQUIRED_TOKENS, *OPTIONAL_TOKENS) if t in special}


def _file_entry(path: Path, role: str, precision: str) -> dict[str, str | int]:
    return {"role": role, "precision": precision, "size": path.stat().st_size, "sha256": sha256_file(path)}


def _write_encoders(
    checkpoint: Checkpoint, tmp: Path, encoders: list[str], steps: Steps
) -> dict[str, dict[str, str | int]]:
    """The fp32 graphs (always: the quantized ones are made from them), then each quantized pair."""
    fp32 = {part: tmp / encoder_file(part, "fp32") for part in ("frontend", "backend")}
    with steps("encoder fp32 (ONNX)", total=checkpoint.audio_weights().nbytes()) as step:
        weights = checkpoint.audio_weights(on_load=step.advance)
        encoder_graph.write_encoder_onnx(weights, checkpoint.audio_config, fp32["frontend"], fp32["backend"])
        step.output(*fp32.values())
    for precision in encoders:
        if precision == "fp32":
            continue
        quantize = encoder_graph.quantize_int8 if precision == "int8" else encoder_graph.quantize_int4
        with steps(f"encoder {precision}", total=2, unit="graph") as step:
            for part, base in fp32.items():
                dst = tmp / encoder_file(part, precision)
                quantize(base, dst)
                step.output(dst)
                step.advance(1)
    files = {
        encoder_file(part, precision): _file_entry(tmp / encoder_file(part, precision), f"encoder_{part}", precision)
        for precision in encoders
        for part in ("frontend", "backend")
    }
    if "fp32" not in encoders:
        for path in fp32.values():
            path.unlink()
    return files


def _decoder_tensors(checkpoint: Checkpoint, tied: bool) -> list[decoder_gguf.GGUFTensor]:
    names = decoder_gguf.decoder_tensor_names(checkpoint.text_config["num_hidden_layers"], tied)
    return [
        decoder_gguf.GGUFTensor(
            gguf_name,
            checkpoint.entry(TEXT_PREFIX + hf).shape,
            functools.partial(checkpoint.load, TEXT_PREFIX + hf),
        )
        for gguf_name, hf in names
    ]


def _write_decoders(
    checkpoint: Checkpoint,
    tied: bool,
    tokenizer: Mapping[str, Any],
    special: Mapping[str, int],
    name: str,
    tmp: Path,
    decoders: list[str],
    steps: Steps,
    threads: int,
) -> dict[str, dict[str, str | int]]:
    tensors = _decoder_tensors(checkpoint, tied)
    text = checkpoint.text_config
    files = {}
    for precision in decoders:
        dst = tmp / decoder_file(precision)
        if precision == "q4_k":  # llama.cpp quantizes from an f32 GGUF (kept when f32 is exported too)
            base = tmp / decoder_file("f32")
            keep_base = "f32" in decoders and base.exists()
            total = None if keep_base else decoder_gguf.gguf_nbytes(tensors, "f32")
            with steps("decoder q4_k", total=total) as step:
                if not keep_base:
                    decoder_gguf.write_gguf(base, "f32", text, tensors, tokenizer, special, name, step.advance)
                step.describe(f"{step.label} (llama.cpp quantizer)")
                decoder_gguf.quantize_gguf(base, dst, "q4_k", threads)
                if not keep_base:
                    base.unlink()
                step.output(dst)
        else:
            with steps(f"decoder {precision}", total=decoder_gguf.gguf_nbytes(tensors, precision)) as step:
                decoder_gguf.write_gguf(dst, precision, text, tensors, tokenizer, special, name, step.advance)
                step.output(dst)
        files[decoder_file(precision)] = _file_entry(dst, "decoder", precision)
    return files


def _write_classifier(checkpoint: Checkpoint, tmp: Path) -> dict[str, dict[str, str | int]]:
    """The aligner's timestamp classifier as a float32 .npy (classify_num x hidden: 20 MB for the real model).

    Why not in the GGUF: llama.cpp's output head must have one row per vocabulary entry (152064), and the
    classifier has 5000. Padding it (as other ports do) costs a 152064-wide product per timestamp and an argmax
    restricted by hand; instead the decoder runs in llama.cpp's embeddings mode (the final-norm states) and this
    product is done in numpy at full precision, whatever the decoder's quantization."""
    dst = tmp / CLASSIFIER_FILE
    np.save(dst, np.ascontiguousarray(checkpoint.load(CLASSIFIER), dtype=np.float32))
    return {CLASSIFIER_FILE: _file_entry(dst, "classifier", "f32")}


def _manifest(
    checkpoint: Checkpoint,
    tied: bool,
    source: dict[str, Any],
    special: dict[str, int],
    encoders: list[str],
    decoders: list[str],
    files: dict[str, dict[str, str | int]],
) -> dict[str, Any]:
    """The manifest; its dims come from config.json, which check_layout proved agrees with the weights."""
    audio, text = checkpoint.audio_config, checkpoint.text_config
    extra: dict[str, Any] = {}
    if is_aligner_config(checkpoint.config):
        extra["aligner"] = {
            "classify_num": checkpoint.config["thinker_config"]["classify_num"],
            "segment_ms": float(checkpoint.config.get("timestamp_segment_time", 80)),
        }
    return {
        "format_version": FORMAT_VERSION,
        "kind": KIND_ALIGNER if extra else KIND_ASR,
        **extra,
        "demo": False,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "dims": {
            "n_mels": audio["num_mel_bins"],
            "chunk_frames": 2 * audio["n_window"],
            "window_frames": audio["n_window_infer"],
            "encoder_d_model": audio["d_model"],
            "encoder_output_dim": audio["output_dim"],
            "decoder_hidden": text["hidden_size"],
            "decoder_layers": text["num_hidden_layers"],
            "vocab_size": text["vocab_size"],
            "tied_embeddings": tied,
        },
        "special_tokens": special,
        "precisions": {"encoder": encoders, "decoder": decoders},
        "files": files,
    }
