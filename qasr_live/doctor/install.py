"""The installation: Python and its environment, the packages, llama.cpp's build, onnxruntime, the model."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import re
import sys
import sysconfig
import time
from pathlib import Path

from qasr_live import __version__
from qasr_live.doctor.context import Context, resolve_configured_model
from qasr_live.doctor.report import Check, Lines, first_line
from qasr_live.engine.gpu import REBUILD, build_record, encoder_providers, llama_build, plan_offload
from qasr_live.errors import ConfigError, DecoderError, ModelError

__all__ = ["check_llama", "check_model", "check_onnxruntime", "check_packages", "check_python"]

PULL_FIX = "qasr-live pull Qwen/Qwen3-ASR-0.6B"
#: Run-time dependencies (distribution names): a missing one is a FAIL.
REQUIRED = (
    "numpy",
    "scipy",
    "onnxruntime",
    "llama-cpp-python",
    "sounddevice",
    "webrtcvad-wheels",
    "websockets",
    "pyyaml",
)
#: Dependencies of one feature: a missing one is a warn.
OPTIONAL = {
    "pynput": "global hotkeys",
    "python-xlib": "typing and hotkeys on X11",
    "jeepney": "desktop notifications and the GNOME/KDE typing portal (D-Bus)",
}


def check_python(ctx: Context) -> list[Check]:
    out = Lines("Python")
    version = platform.python_version()
    # (an older Python could not import qasr-live at all: requires-python >= 3.11 keeps pip from installing it)
    out.ok("version", f"{version} ({sys.executable})", version=version, executable=sys.executable)
    # PEP 668: the distribution marks its interpreter as managed by the package manager
    managed = (Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED").exists()
    in_venv = sys.prefix != sys.base_prefix
    data = {"prefix": sys.prefix, "virtual_env": in_venv, "externally_managed": managed}
    if in_venv:
        kind = "pipx venv" if "/pipx/venvs/" in sys.prefix else "uv tool venv" if "/uv/tools/" in sys.prefix else ""
        note = "; the system's is externally managed (PEP 668): fine, this one is separate" if managed else ""
        out.ok("environment", f"virtual environment {sys.prefix}{f' ({kind})' if kind else ''}{note}", **data)
    elif managed:
        out.warn(
            "environment",
            f"no virtual environment: installed into {sys.prefix}, which the system's package manager owns (PEP 668)",
            "reinstall in an environment of its own: `pipx install qasr-live` (or `uv tool install qasr-live`)",
            **data,
        )
    else:
        out.ok("environment", f"no virtual environment ({sys.prefix}, not externally managed)", **data)
    return out


def check_packages(ctx: Context) -> list[Check]:
    out = Lines("Packages")
    here = Path(__file__).resolve().parents[1]
    try:
        dist = importlib.metadata.distribution("qasr-live")
        try:
            origin = json.loads(dist.read_text("direct_url.json") or "{}")
        except json.JSONDecodeError:  # pip's record of where it installed from: only informative here
            origin = {}
        editable = bool(origin.get("dir_info", {}).get("editable"))
        how = f"editable install of {origin.get('url', '?')}" if editable else "installed"
        out.ok("qasr-live", f"{__version__}, {here} ({how})", version=__version__, path=str(here))
    except importlib.metadata.PackageNotFoundError:
        out.warn(
            "qasr-live",
            f"{__version__} runs from the source tree {here}, not installed: dependencies are not tracked",
            "install it: `pip install -e .` in the source tree (or `pipx install qasr-live`)",
        )
    specs = _requirements()
    versions: dict[str, str | None] = {}
    for name in (*REQUIRED, *OPTIONAL):
        if name == "python-xlib" and not sys.platform.startswith("linux"):
            continue  # X11 only
        versions[name] = _installed(name)
        spec = specs.get(name, "")
        install = f"`{sys.executable} -m pip install '{name}{spec}'`"
        if versions[name] is None:
            if name in OPTIONAL:
                out.warn(name, f"not installed: no {OPTIONAL[name]}", f"install it: {install}")
            else:
                out.fail(name, "not installed: qasr-live cannot run without it", f"install it: {install}")
        elif spec and not _satisfies(versions[name] or "", spec):
            out.warn(name, f"{versions[name]} installed, qasr-live asks for {spec}", f"install that: {install}")
    out.ok("dependencies", ", ".join(f"{n} {v}" for n, v in versions.items() if v), versions=versions)
    torch = _installed("torch")
    where = "only `qasr-live export` uses it, the daemon never imports it"
    out.ok("torch", f"{torch} ({where})" if torch else f"not installed: fine, {where}", version=torch)
    return out


def check_llama(ctx: Context) -> list[Check]:
    out = Lines("llama.cpp")
    try:
        import llama_cpp
        import llama_cpp.llama_cpp as llama
    except (ImportError, OSError, RuntimeError) as e:  # llama_cpp raises RuntimeError when libllama fails to load
        fix = "reinstall it: `pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36`"
        out.fail("libllama", f"llama-cpp-python cannot load libllama: {first_line(e)}", fix)
        return out
    info = llama.llama_print_system_info().decode(errors="replace").strip(" |")
    build = llama_build(llama)
    record = build_record()
    features = [m.group(1) for m in re.finditer(r"(\w+) = 1", info)]
    how = f"; installed as the {record.get('backend')} build by scripts/install.sh" if record else ""
    out.ok(
        "build",
        f"llama-cpp-python {llama_cpp.__version__}, backends {', '.join(build.backends) or '?'}{how}, "
        f"CPU features {' '.join(features) or 'none reported'}",
        version=llama_cpp.__version__,
        backends=list(build.backends),
        record=record,
        system_info=info,
    )
    devices = [
        {
            "index": d.index,
            "name": d.name,
            "description": d.description,
            "type": d.kind,
            "free_mib": d.free_bytes >> 20,
            "total_mib": d.total_bytes >> 20,
        }
        for d in build.devices
    ]
    gpus = "; ".join(f"{d.index}: {d.describe()}" for d in build.gpus)
    out.ok("gpu devices", gpus or "none (the decoder can only run on the CPU)", devices=devices)
    engine = ctx.cfg.engine
    try:
        plan = plan_offload(build, engine.gpu, engine.n_gpu_layers, engine.gpu_device)
    except DecoderError as problem:
        out.fail(
            "gpu offload",
            str(problem),
            f"set enginengine.n_gpu_layers: 0 (or enginengine.gpu: auto), or install a GPU build: {REBUILD}",
            n_gpu_layers=engine.n_gpu_layers,
            gpu=engine.gpu,
        )
        return out
    if plan.on_gpu:
        layers = "all layers" if plan.n_gpu_layers >= 999 else f"{plan.n_gpu_layers} layers"
        detail = f"the decoder puts {layers} on {', '.join(d.describe() for d in plan.devices)}"
    else:
        detail = "the decoder runs on the CPU" + ("" if build.gpus else " (this build has no GPU device)")
    out.ok("gpu offload", detail, n_gpu_layers=plan.n_gpu_layers, devices=[d.name for d in plan.devices])
    return out


def check_onnxruntime(ctx: Context) -> list[Check]:
    out = Lines("onnxruntime")
    try:
        import onnxruntime
    except (ImportError, OSError) as e:
        fix = "reinstall it: `pip install --force-reinstall onnxruntime`"
        out.fail("onnxruntime", f"cannot be imported: {first_line(e)}", fix)
        return out
    providers = list(onnxruntime.get_available_providers())
    detail = f"{onnxruntime.__version__}: {', '.join(providers)}"
    data = {"version": onnxruntime.__version__, "providers": providers}
    if "CPUExecutionProvider" not in providers:
        out.fail("providers", detail + ": the encoder needs CPUExecutionProvider", "`pip install onnxruntime`", **data)
        return out
    try:
        chosen = encoder_providers(ctx.cfg.engine.encoder_providers, providers)
    except ConfigError as e:
        out.fail("providers", f"{detail}; {e}", "install the package it names, or set engine.encoder_providers: [auto]")
        return out
    uses = ", then ".join(p.removesuffix("ExecutionProvider") for p in chosen)
    out.ok("providers", f"{detail} (the encoder uses {uses})", encoder=chosen, **data)
    return out


def check_model(ctx: Context) -> list[Check]:
    out = Lines("Model")
    configured = ctx.cfg.model.dir
    fix = f"`{PULL_FIX}` for a fresh model, or re-export it with `qasr-live export SRC {configured or 'DIR'} --force`"
    started = time.perf_counter()
    try:
        # the resolver opens the model as serve does, sha256 of every chosen file included: a truncated or
        # corrupt file is this line's FAIL
        model, said = resolve_configured_model(ctx)
    except ModelError as e:
        out.fail("model", str(e), fix, dir=configured)
        return out
    seconds = time.perf_counter() - started
    files = (model.frontend, model.backend, model.decoder)
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    entries = model.manifest["files"].values()
    encoders = sorted({e["precision"] for e in entries if e["role"] == "encoder_backend"})
    decoders = sorted({e["precision"] for e in entries if e["role"] == "decoder"})
    detail = (
        f"{model.path}: encoder {model.encoder_precision} (of {'/'.join(encoders)}), decoder "
        f"{model.decoder_precision} (of {'/'.join(decoders)}); {len(files)} files, {megabytes:.1f} MB, sha256 "
        f"verified in {seconds:.1f} s"
    )
    data = {
        "path": str(model.path),
        "demo": model.is_demo,
        "encoder_precision": model.encoder_precision,
        "decoder_precision": model.decoder_precision,
        "files": [f.name for f in files],
        "log": said,
    }
    if model.is_demo:  # what the resolver logs about it is said here, with the fix
        out.warn("model", f"the embedded DEMO model (synthetic speech, small vocabulary), {detail}", PULL_FIX, **data)
    else:
        out.ok("model", "; ".join([detail, *said]), **data)
    return out


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _requirements() -> dict[str, str]:
    """qasr-live's run-time requirements as installed: {normalized name: specifier} ("" when unpinned)."""
    try:
        requires = importlib.metadata.requires("qasr-live") or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    out = {}
    for line in requires:
        req, _, marker = line.partition(";")
        if "extra" in marker:
            continue
        m = re.match(r"\s*([A-Za-z0-9._-]+)\s*(.*)", req)
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2).strip()
    return out


def _satisfies(version: str, spec: str) -> bool:
    """Whether ``version`` meets ``spec``; only ``==`` and ``>=`` clauses are checked (what qasr-live pins)."""

    def numbers(v: str) -> tuple[int, ...]:
        m = re.match(r"\d+(\.\d+)*", v.strip())
        return tuple(int(x) for x in m.group(0).split(".")) if m else ()

    def padded(a: tuple[int, ...], n: int) -> tuple[int, ...]:
        return a + (0,) * (n - len(a))

    have = numbers(version)
    for clause in spec.split(","):
        op, target = clause.strip()[:2], numbers(clause.strip()[2:])
        n = max(len(have), len(target))
        mine, theirs = padded(have, n), padded(target, n)
        if (op == "==" and mine != theirs) or (op == ">=" and mine < theirs):
            return False
    return True
