"""`qasr-live pull`: a Qwen3-ASR checkpoint from the Hugging Face Hub (`export.hub`) or a local directory ->
an exported model directory (the exporter), e.g. one of the user's installed models (`model_store`, which the
CLI combines with this: the two sit on the same floor).

The conversion is ``export_checkpoint``, which writes into a hidden sibling and renames it into place, so the
target never holds half a model. Before it starts, the space it needs is estimated from the checkpoint's
safetensors headers (parameter counts times bytes per parameter of each precision, plus the exporter's
temporary fp32 files) and compared with the free space, so a small disk fails in a second with the numbers
instead of after minutes with whatever error the ONNX or GGUF writer makes of a full disk. The estimate follows
what the exporter writes (see `conversion_bytes`).
"""

from __future__ import annotations

import errno
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qasr_live.engine.model_dir import DECODER_PRECISIONS, ENCODER_PRECISIONS, MANIFEST
from qasr_live.errors import ConfigError, ExportError, Interrupted
from qasr_live.export.checkpoint import Checkpoint
from qasr_live.export.exporter import export_checkpoint
from qasr_live.export.hub import REPO_ID, CheckpointSource, download_checkpoint, free_space

DEFAULT_PRECISION = "int8/q4_k"
# Bytes per parameter of each output (int8/int4 encoders keep norms and biases in fp32; q4_k mixes in q6_k).
_ENCODER_BYTES = {"fp32": 4.0, "int8": 1.1, "int4": 0.7}
_DECODER_BYTES = {"f32": 4.0, "f16": 2.0, "q8_0": 1.07, "q4_k": 0.7}


@dataclass(frozen=True, slots=True)
class PullResult:
    path: Path
    checkpoint: CheckpointSource
    converted: bool  # False: the installed model already was this revision at these precisions
    download_seconds: float
    convert_seconds: float


def parse_precision(text: str) -> tuple[list[str], list[str]]:
    """``ENC/DEC``, each a comma list: ``int8/q4_k``, ``fp32,int8/f16,q8_0``."""
    enc, sep, dec = text.partition("/")
    encoders = [p.strip() for p in enc.split(",") if p.strip()]
    decoders = [p.strip() for p in dec.split(",") if p.strip()]
    bad = [p for p in encoders if p not in ENCODER_PRECISIONS] + [p for p in decoders if p not in DECODER_PRECISIONS]
    if not sep or not encoders or not decoders or bad:
        what = f"unknown precision {', '.join(bad)}" if bad else f"{text!r} is not ENCODER/DECODER"
        raise ConfigError(
            f"--precision: {what}; write ENCODER/DECODER with an encoder of {', '.join(ENCODER_PRECISIONS)} and a "
            f"decoder of {', '.join(DECODER_PRECISIONS)} (comma lists allowed), e.g. {DEFAULT_PRECISION} or fp32/f16."
        )
    return list(dict.fromkeys(encoders)), list(dict.fromkeys(decoders))


def pull_checkpoint(
    source: str,
    out: Path,
    encoders: Sequence[str],
    decoders: Sequence[str],
    revision: str | None = None,
    progress: Callable[[str], None] = print,
) -> PullResult:
    """Download `source` (a Hub repo id, or a local checkpoint directory: no download) and export it into `out`.
    `out` may already hold a model pulled from the same source: it is kept if it is this revision at these
    precisions, else replaced atomically."""
    local = Path(source).expanduser()
    t0 = time.perf_counter()
    if local.is_dir():
        if revision is not None:
            raise ConfigError(f"--revision applies to Hub repos; {source} is a local directory.")
        _check_replaceable(out, repo=None, path=local.resolve())
        checkpoint = CheckpointSource(local.resolve())
    elif REPO_ID.fullmatch(source):
        _check_replaceable(out, repo=source, path=None)
        checkpoint = download_checkpoint(source, revision, progress)
    else:
        raise ConfigError(
            f"{source} is neither a checkpoint directory nor a Hugging Face repo id (OWNER/NAME, e.g. "
            "Qwen/Qwen3-ASR-0.6B)."
        )
    download_seconds = time.perf_counter() - t0
    if checkpoint.repo is not None and _up_to_date(out, checkpoint, encoders, decoders):
        progress(f"{out.name} already is {checkpoint.repo} at {checkpoint.revision}: nothing to convert")
        return PullResult(out, checkpoint, False, download_seconds, 0.0)
    t1 = time.perf_counter()
    convert(checkpoint, out, encoders, decoders, progress)
    return PullResult(out, checkpoint, True, download_seconds, time.perf_counter() - t1)


def _installed_source(out: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # no model there, or a broken one: replacing it loses nothing
    source = manifest.get("source") if isinstance(manifest, dict) else None
    return {**source, "precisions": manifest.get("precisions")} if isinstance(source, dict) else None


def _check_replaceable(out: Path, repo: str | None, path: Path | None) -> None:
    """A pull may replace an older pull of the same source under the same name, never another model."""
    installed = _installed_source(out)
    if installed is None:
        return
    same = installed.get("repo") == repo if repo is not None else installed.get("path") == str(path)
    if not same:
        other = installed.get("repo") or installed.get("path") or "another source"
        raise ConfigError(
            f"a model named {out.name!r} is already installed from {other}; pick another name with --name, or "
            f"remove it first with `qasr-live models remove {out.name}`."
        )


def _up_to_date(out: Path, checkpoint: CheckpointSource, encoders: Sequence[str], decoders: Sequence[str]) -> bool:
    installed = _installed_source(out)
    return (
        installed is not None
        and installed.get("repo") == checkpoint.repo
        and installed.get("revision") == checkpoint.revision
        and installed.get("precisions") == {"encoder": list(encoders), "decoder": list(decoders)}
    )


def convert(
    checkpoint: CheckpointSource,
    out: Path,
    encoders: Sequence[str],
    decoders: Sequence[str],
    progress: Callable[[str], None],
) -> Path:
    """Export `checkpoint` into `out` (replacing an older pull of it atomically), recording where it came from."""
    source: dict[str, Any] = {}
    if checkpoint.repo is not None:
        source = {
            "repo": checkpoint.repo,
            "revision": checkpoint.revision,
            "ref": checkpoint.ref,
            "endpoint": checkpoint.endpoint,
            "name": checkpoint.repo.rsplit("/", 1)[-1],
        }
    label = checkpoint.repo or str(checkpoint.path)
    kept = "; the download stays in the Hugging Face cache, so the next run only converts" if checkpoint.repo else ""
    need = conversion_bytes(checkpoint.path, encoders, decoders)
    free = free_space(out.parent)
    if need is not None and free is not None and need > free:
        raise ExportError(
            f"not enough disk space to convert {label}: it needs about {need / 1e6:.1f} MB in {out.parent}, "
            f"{free / 1e6:.1f} MB are free{kept}; free some space or set XDG_DATA_HOME to a larger disk."
        )
    try:
        return export_checkpoint(
            checkpoint.path,
            out,
            encoders=encoders,
            decoders=decoders,
            force=out.exists(),
            progress=progress,
            source=source,
        )
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted while converting {label}: nothing was installed{kept}.") from None
    except ImportError as e:  # a dependency of the package removed or broken after installing
        raise ExportError(
            f"converting needs the Python package {e.name or e}, which this installation lacks: reinstall "
            f"qasr-live (`bash scripts/install.sh --runtime`, or `pipx reinstall qasr-live`) and run the command "
            f"again{kept}."
        ) from e
    except Exception as e:  # re-raised unless the disk filled up (the writers report that in their own ways)
        free = free_space(out.parent)
        # ONNX's C++ shape inference truncates its output silently and llama.cpp's quantizer returns a code, so
        # a full disk is also recognised by the space left being less than the conversion needs.
        if not (_disk_full(e) or (need is not None and free is not None and free < need)):
            raise
        raise ExportError(
            f"the disk of {out.parent} filled up while converting {label} ({(free or 0) / 1e6:.1f} MB free, about "
            f"{(need or 0) / 1e6:.1f} MB needed): nothing was installed{kept}; free some space or set XDG_DATA_HOME "
            "to a larger disk."
        ) from e


def _disk_full(e: BaseException) -> bool:
    seen: set[int] = set()
    inner: BaseException | None = e
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        if isinstance(inner, OSError) and inner.errno == errno.ENOSPC:
            return True
        if os.strerror(errno.ENOSPC) in str(inner):
            return True
        inner = inner.__cause__ or inner.__context__
    return False


def conversion_bytes(src: Path, encoders: Sequence[str], decoders: Sequence[str]) -> int | None:
    """About the most disk space the export of `src` occupies at once. The encoder phase holds the fp32 ONNX
    export, the shape-inferred copy onnxruntime's quantizer writes next to it, and the quantized encoders; the
    decoder phase the kept encoders, the decoders and the f32 GGUF a q4_k decoder is quantized from. None when
    the safetensors headers cannot be read (the exporter will say why)."""
    counts = _parameter_counts(src)
    if counts is None:
        return None
    audio, text = counts
    encoders_out = sum(_ENCODER_BYTES[p] for p in encoders) * audio
    quantized = [p for p in encoders if p != "fp32"]
    encoder_phase = 4 * audio * (2 if quantized else 1) + sum(_ENCODER_BYTES[p] for p in quantized) * audio
    decoder_phase = encoders_out + sum(_DECODER_BYTES[p] for p in decoders) * text
    if "q4_k" in decoders and "f32" not in decoders:
        decoder_phase += 4 * text
    return int(max(encoder_phase, decoder_phase)) + (256 << 10)  # + the manifest, tokenizer and slack


def _parameter_counts(src: Path) -> tuple[int, int] | None:
    """(audio encoder, everything else) parameter counts, from the safetensors headers (no tensor is read)."""
    try:
        tensors = Checkpoint(src).tensors.values()
    except ExportError:  # the exporter reports it, with its fix
        return None
    audio = sum(math.prod(t.shape) for t in tensors if "audio_tower" in t.name)
    return audio, sum(math.prod(t.shape) for t in tensors) - audio
