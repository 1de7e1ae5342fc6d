"""The user's installed models (``qasr-live pull`` / ``qasr-live models``) and the one rule that picks the model.

Layout: ``$XDG_DATA_HOME/qasr-live/models/`` (default ``~/.local/share/qasr-live/models/``) holds one exported
model directory per name, plus a file ``default`` with the name of the default model. The default lives here and
not in config.yaml because rewriting the user's YAML would lose their comments; config.yaml can still name a model
(``model.name``) or a directory (``model.dir``), and those win. Hidden entries are work in progress of the
exporter (``.NAME.partial-PID``) or a removal (``.NAME.removing-PID``) and are never listed.

:func:`resolve_model` is the one place that decides which model a command loads:
``--model DIR`` (an override of ``model.dir``) > ``model.dir`` > ``model.name`` > the default here > the demo
model embedded in the package.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qasr_live.engine.model_dir import KIND_ALIGNER, KIND_ASR, MANIFEST, ModelDir, open_model_dir, require_kind
from qasr_live.errors import ConfigError, ModelError, QasrError

if TYPE_CHECKING:
    from qasr_live.config import AppConfig

_LOGGER = logging.getLogger("qasr_live")
DEMO_MODEL = Path(__file__).parent / "models" / "demo"
DEFAULT_FILE = "default"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
PULL_HINT = "`qasr-live pull Qwen/Qwen3-ASR-0.6B`"


def models_dir() -> Path:
    """``$XDG_DATA_HOME/qasr-live/models``; a relative or empty XDG_DATA_HOME is ignored, as the spec says."""
    base = os.environ.get("XDG_DATA_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "qasr-live" / "models"


def check_name(name: str) -> str:
    """A model name is one path component a shell needs no quoting for: lower-case letters, digits, . _ -."""
    if not _NAME.fullmatch(name) or name == DEFAULT_FILE:
        raise ConfigError(
            f"invalid model name {name!r}: use lower-case letters, digits, '.', '_' and '-' (starting with a letter "
            f"or digit, at most 100 characters, not {DEFAULT_FILE!r}), e.g. qwen3-asr-0.6b."
        )
    return name


def name_for(source: str) -> str:
    """The name a pulled model gets: the repo's (or directory's) last component, lower-cased, e.g.
    ``Qwen/Qwen3-ASR-0.6B`` -> ``qwen3-asr-0.6b``."""
    local = Path(source).expanduser()
    last = (local.resolve().name if local.is_dir() else source.rstrip("/").rsplit("/", 1)[-1]).lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", last).lstrip("._-")[:100] or "model"
    return "model" if name == DEFAULT_FILE else name


def model_path(name: str, root: Path | None = None) -> Path:
    return (root or models_dir()) / check_name(name)


@dataclass(frozen=True, slots=True)
class InstalledModel:
    """One entry of the models directory, as `qasr-live models` shows it."""

    name: str
    path: Path
    size: int  # bytes of all its files
    encoders: tuple[str, ...]
    decoders: tuple[str, ...]
    repo: str | None  # the Hub repo it was pulled from, None for a local checkpoint
    revision: str | None  # the commit it was pulled at
    demo: bool
    is_default: bool
    problem: str | None  # why it cannot be loaded, None when it can


def installed_models(root: Path | None = None) -> list[InstalledModel]:
    """Every model directory in the store, sorted by name; broken ones too (with their problem), so they can be
    seen and removed."""
    root = root or models_dir()
    if not root.is_dir():
        return []
    default = _read_default(root)
    found = []
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        problem: str | None = None
        manifest: dict[str, object] = {}
        try:
            manifest = open_model_dir(path, verify=False).manifest  # sizes only: listing must stay fast
        except ModelError as e:
            problem = str(e)
        precisions = manifest.get("precisions")
        source = manifest.get("source")
        enc = precisions.get("encoder", ()) if isinstance(precisions, dict) else ()
        dec = precisions.get("decoder", ()) if isinstance(precisions, dict) else ()
        src = source if isinstance(source, dict) else {}
        found.append(
            InstalledModel(
                name=path.name,
                path=path,
                size=size,
                encoders=tuple(enc),
                decoders=tuple(dec),
                repo=src.get("repo"),
                revision=src.get("revision"),
                demo=bool(manifest.get("demo", False)),
                is_default=path.name == default,
                problem=problem,
            )
        )
    return found


def _installed_names(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _not_installed(name: str, root: Path, what: str = "no installed model is named") -> ModelError:
    names = _installed_names(root)
    have = f"installed: {', '.join(names)}" if names else f"none is installed in {root}"
    return ModelError(f"{what} {name!r} ({have}); install one with {PULL_HINT} or see `qasr-live models`.")


def _read_default(root: Path) -> str | None:
    try:
        name = (root / DEFAULT_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(
            f"{root / DEFAULT_FILE} cannot be read ({e}); delete it and choose the default again with "
            "`qasr-live models default NAME`."
        ) from e
    return name or None


def get_default(root: Path | None = None) -> str | None:
    """The name in the store's `default` file, None when there is none (it may name a model since deleted)."""
    return _read_default(root or models_dir())


def set_default(name: str, root: Path | None = None) -> None:
    """Make the installed model `name` the default; the file is replaced atomically (never half written)."""
    root = root or models_dir()
    if not (root / check_name(name) / MANIFEST).is_file():
        raise _not_installed(name, root)
    tmp = root / f".{DEFAULT_FILE}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / DEFAULT_FILE)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise QasrError(
            f"cannot write {root / DEFAULT_FILE} ({e.strerror or e}); make {root} writable, "
            "or set model.name in config.yaml instead."
        ) from e


def remove_model(name: str, root: Path | None = None) -> bool:
    """Delete the installed model `name`; returns whether it was the default (which is then unset). The
    directory is first renamed to a hidden name, so it is either complete or gone, never half deleted."""
    root = root or models_dir()
    path = root / check_name(name)
    if not path.is_dir():
        raise _not_installed(name, root)
    trash = root / f".{name}.removing-{os.getpid()}"
    try:
        os.replace(path, trash)
    except OSError as e:
        raise QasrError(f"cannot remove {path} ({e.strerror or e}); check the permissions of {root}.") from e
    was_default = _read_default(root) == name
    if was_default:
        (root / DEFAULT_FILE).unlink(missing_ok=True)
    shutil.rmtree(trash, ignore_errors=True)
    for stale in root.glob(".*.removing-*"):  # leftovers of removals that were killed mid-way
        shutil.rmtree(stale, ignore_errors=True)
    return was_default


def format_table(models: list[InstalledModel], root: Path) -> str:
    """The `qasr-live models` listing: one row per model, `*` marks the default."""
    if not models:
        return f"no models installed in {root}; install one with {PULL_HINT} (until then the embedded demo is used)"
    rows = [("", "NAME", "SIZE", "ENCODER", "DECODER", "SOURCE")]
    for m in models:
        source = f"{m.repo}@{(m.revision or '?')[:12]}" if m.repo else "local checkpoint"
        if m.demo:
            source += " (demo)"
        if m.problem:
            source = f"BROKEN: {m.problem}"
        rows.append(
            (
                "*" if m.is_default else "",
                m.name,
                f"{m.size / 1e6:.1f} MB",
                ",".join(m.encoders) or "-",
                ",".join(m.decoders) or "-",
                source,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1] for r in rows]
    default = _read_default(root)
    if default is None:
        lines.append("no default model: commands use the embedded demo (`qasr-live models default NAME`)")
    elif default not in {m.name for m in models}:
        lines.append(f"the default {default!r} is not installed any more; choose one: `qasr-live models default NAME`")
    return "\n".join(line.rstrip() for line in lines)


def resolve_model(cfg: AppConfig) -> ModelDir:
    """THE model of a command: ``model.dir`` (which --model overrides) > ``model.name`` > the store's default >
    the embedded demo model, opened with its files checked against the manifest's sha256 (doctor relies on it)."""
    m = cfg.model
    root = models_dir()
    path: Path
    if m.dir is not None:
        path = Path(m.dir)
    elif m.name is not None:
        path = root / check_name(m.name)
        if not path.is_dir():
            raise _not_installed(m.name, root, "model.name: no installed model is named")
    elif (default := _read_default(root)) is not None:
        path = root / default
        if not path.is_dir():
            raise _not_installed(default, root, f"the default model ({root / DEFAULT_FILE}) names")
    else:
        if not (DEMO_MODEL / MANIFEST).exists():
            raise ModelError(
                f"no model configured and no demo model embedded: install one with {PULL_HINT}, or set `model.dir` "
                "in config.yaml (or --model DIR) to a directory written by `qasr-live export`."
            )
        path = DEMO_MODEL
    model = open_model_dir(path, m.encoder_precision, m.decoder_precision, verify=True)
    require_kind(model, KIND_ASR, "model.dir" if m.dir is not None else "model.name" if m.name else "the default model")
    if model.is_demo:
        _LOGGER.warning(
            "using the embedded DEMO model: trained here on synthetic speech with a limited vocabulary. For real "
            f"dictation install Qwen3-ASR with {PULL_HINT} (it becomes the default model)."
        )
    return model


def resolve_aligner(cfg: AppConfig) -> ModelDir | None:
    """The aligner ``model.aligner`` names (an installed name, or a directory: a value with a "/" or one that
    exists), checked like the recognizer; None when none is configured."""
    value = cfg.model.aligner
    if value is None:
        return None
    root = models_dir()
    if "/" in value or Path(value).is_dir():
        path = Path(value)
    else:
        path = root / check_name(value)
        if not path.is_dir():
            raise ModelError(
                f"model.aligner: no installed model is named {value!r} (in {root}); install it with "
                "`qasr-live pull Qwen/Qwen3-ForcedAligner-0.6B` or name a directory written by `qasr-live export`."
            )
    return require_kind(open_model_dir(path, verify=True), KIND_ALIGNER, "model.aligner")


def is_aligner(path: Path) -> bool:
    """Whether an installed model directory holds an aligner (read from its manifest, unverified)."""
    return open_model_dir(path, verify=False).kind == KIND_ALIGNER
