"""`qasr-live export`: an official Hugging Face Qwen3-ASR checkpoint -> a qasr-live model directory.

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
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qasr_live.engine.model_dir import (
    DECODER_PRECISIONS,
    ENCODER_PRECISIONS,
    FORMAT_VERSION,
    MANIFEST,
    decoder_file,
    encoder_file,
    sha256_file,
)
from qasr_live.engine.prompt import ASR_TEXT, CONTROL_TOKENS, TIMESTAMP
from qasr_live.errors import ExportError

if TYPE_CHECKING:
    import numpy as np

_LOGGER = logging.getLogger(__name__)
REQUIRED_TOKENS = (*CONTROL_TOKENS, ASR_TEXT)
OPTIONAL_TOKENS = (TIMESTAMP,)
_T = TypeVar("_T")


def read_checkpoint_config(src: Path) -> dict[str, Any]:
    config_path = src / "config.json"
    if not src.is_dir():
        raise ExportError(
            f"{src} is not a directory. Pass the directory of a downloaded Qwen3-ASR checkpoint, "
            "e.g. `huggingface-cli download Qwen/Qwen3-ASR-0.6B --local-dir Qwen3-ASR-0.6B`."
        )
    try:
        config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(
            f"{src} has no config.json: not a Hugging Face checkpoint directory. Pass the directory of a downloaded "
            "Qwen3-ASR checkpoint, e.g. `huggingface-cli download Qwen/Qwen3-ASR-0.6B --local-dir Qwen3-ASR-0.6B`."
        ) from None
    except OSError as e:
        raise ExportError(f"{config_path} cannot be read ({e.strerror or e}); check its permissions.") from e
    except json.JSONDecodeError as e:
        raise ExportError(f"{config_path} is not valid JSON ({e}); download the checkpoint again.") from e
    if "thinker_config" not in config:
        raise ExportError(
            f"{config_path} has no `thinker_config`: this is not a Qwen3-ASR checkpoint "
            f"(model_type {config.get('model_type')!r}). Use Qwen/Qwen3-ASR-0.6B or -1.7B."
        )
    if "forced_aligner" in config["thinker_config"].get("model_type", ""):
        raise ExportError(f"{src} is a Qwen3-ForcedAligner checkpoint; `export` takes Qwen3-ASR checkpoints.")
    return config


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
    demo model (qasr_live/models/demo), which the CLI announces as such; `source` entries (e.g. the Hub repo and
    revision of a pull) are merged into manifest["source"]."""
    src, out = Path(src).expanduser(), Path(out).expanduser()
    encoders = _parse_list(encoders, ENCODER_PRECISIONS, "--encoder")
    decoders = _parse_list(decoders, DECODER_PRECISIONS, "--decoder")
    if not encoders or not decoders:
        raise ExportError("export needs at least one encoder and one decoder precision.")
    config = read_checkpoint_config(src)
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; choose a new directory or pass --force to replace it.")
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
        manifest = _export_into(src, tmp, config, encoders, decoders, progress, threads)
        manifest["demo"] = demo
        manifest["source"].update(source or {})
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


class _Steps:
    def __init__(self, total: int, progress: Callable[[str], None]) -> None:
        self.total, self.n, self.progress = total, 0, progress

    def __call__(self, what: str, fn: Callable[[], _T]) -> _T:
        self.n += 1
        t0 = time.perf_counter()
        result = fn()
        self.progress(f"[{self.n}/{self.total}] {what} ({time.perf_counter() - t0:.1f} s)")
        return result


def _export_into(
    src: Path,
    tmp: Path,
    config: dict[str, Any],
    encoders: list[str],
    decoders: list[str],
    progress: Callable[[str], None],
    threads: int,
) -> dict[str, Any]:
    import torch

    from qasr_live.export.decoder_gguf import gguf_tensors, load_tokenizer_json, quantize_gguf, write_gguf
    from qasr_live.export.encoder_onnx import export_encoder, quantize_int4, quantize_int8
    from qasr_live.export.official import official_classes

    step = _Steps(2 + len(encoders) + len(decoders) + ("fp32" not in encoders), progress)
    _, model_cls, _ = official_classes()
    # the official model (transformers) is untyped
    model: Any = step("load checkpoint", lambda: model_cls.from_pretrained(str(src), dtype=torch.float32).eval())
    thinker = model.thinker
    tokenizer_json = step("read tokenizer", lambda: load_tokenizer_json(src))
    special: dict[str, int] = {t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])}
    missing = [t for t in REQUIRED_TOKENS if t not in special]
    if missing:
        raise ExportError(
            f"the tokenizer of {src} lacks the Qwen3-ASR tokens {', '.join(missing)}; "
            "download the checkpoint's tokenizer files again."
        )
    special = {t: special[t] for t in (*REQUIRED_TOKENS, *OPTIONAL_TOKENS) if t in special}

    files: dict[str, dict[str, str | int]] = {}

    def add(name: str, role: str, precision: str) -> None:
        path = tmp / name
        files[name] = {
            "role": role,
            "precision": precision,
            "size": path.stat().st_size,
            "sha256": sha256_file(path),
        }

    fp32_front, fp32_back = encoder_file("frontend", "fp32"), encoder_file("backend", "fp32")
    step("encoder fp32 (ONNX export)", lambda: export_encoder(thinker.audio_tower, tmp, fp32_front, fp32_back))
    for precision in encoders:
        if precision == "fp32":
            continue
        quantize = quantize_int8 if precision == "int8" else quantize_int4

        def quantize_encoder(quantize: Callable[[Path, Path], None] = quantize, precision: str = precision) -> None:
            for part, base in (("frontend", fp32_front), ("backend", fp32_back)):
                quantize(tmp / base, tmp / encoder_file(part, precision))

        step(f"encoder {precision}", quantize_encoder)
    for precision in encoders:
        for part in ("frontend", "backend"):
            add(encoder_file(part, precision), f"encoder_{part}", precision)
    if "fp32" not in encoders:
        (tmp / fp32_front).unlink()
        (tmp / fp32_back).unlink()

    text_config = thinker.config.text_config.to_dict()
    embed = thinker.model.embed_tokens.weight
    tied = thinker.lm_head.weight.data_ptr() == embed.data_ptr() or torch.equal(thinker.lm_head.weight, embed)
    state = {k: v for k, v in thinker.state_dict().items() if k.startswith(("model.", "lm_head."))}
    arrays = {k: v.detach().float().numpy() for k, v in state.items()}
    name = src.name

    def tensors() -> Iterator[tuple[str, np.ndarray]]:
        return gguf_tensors(arrays, text_config["num_hidden_layers"], tied)

    for precision in decoders:
        dst = tmp / decoder_file(precision)
        if precision == "q4_k":
            base = tmp / decoder_file("f32")
            keep_base = "f32" in decoders and base.exists()

            def quantize_decoder(dst: Path = dst, base: Path = base, keep_base: bool = keep_base) -> None:
                if not keep_base:
                    write_gguf(base, "f32", text_config, tensors, tokenizer_json, special, name)
                quantize_gguf(base, dst, "q4_k", threads)
                if not keep_base:
                    base.unlink()

            step("decoder q4_k (llama.cpp quantizer)", quantize_decoder)
        else:
            write = functools.partial(write_gguf, dst, precision, text_config, tensors, tokenizer_json, special, name)
            step(f"decoder {precision}", write)
        add(decoder_file(precision), "decoder", precision)

    audio = thinker.config.audio_config
    return {
        "format_version": FORMAT_VERSION,
        "kind": "qwen3-asr",
        "demo": False,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": {
            "path": str(src),
            "name": name,
            "model_type": config.get("model_type"),
            "config_sha256": sha256_file(src / "config.json"),
        },
        "dims": {
            "n_mels": audio.num_mel_bins,
            "chunk_frames": 2 * audio.n_window,
            "window_frames": audio.n_window_infer,
            "encoder_d_model": audio.d_model,
            "encoder_output_dim": audio.output_dim,
            "decoder_hidden": text_config["hidden_size"],
            "decoder_layers": text_config["num_hidden_layers"],
            "vocab_size": text_config["vocab_size"],
            "tied_embeddings": bool(tied),
        },
        "special_tokens": special,
        "precisions": {"encoder": encoders, "decoder": decoders},
        "files": files,
    }
