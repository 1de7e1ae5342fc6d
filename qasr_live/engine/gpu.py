"""What the decoder and the encoder can run on, asked of the libraries themselves, and the plan made of it.

Decoder: llama-cpp-python exposes `llama_supports_gpu_offload()` but not ggml's backend registry, so the registry
functions are declared here with ctypes against the libggml that llama_cpp loaded (the same files, so the same
process-wide registry): which backends the build has (CPU, Vulkan, CUDA, Metal...) and which devices they found,
with their memory. `plan_offload` turns `engine.gpu`, `engine.n_gpu_layers` and `engine.gpu_device` into the
model parameters, or into one clear error; `OffloadReport` reads back where llama.cpp put the layers (its own log
lines: the only place it says so) for the log, `transcribe`'s stats and `doctor`.

Encoder: `encoder_providers` maps `engine.encoder_providers` to onnxruntime execution providers that the installed
onnxruntime package really has.

The build record: `scripts/install.sh --gpu ...` writes `<venv>/share/qasr-live/llama-build.json` (backend, CMake
arguments); `build_record()` reads it for `doctor` and the stats. The registry is the truth of what runs; the
record says what was asked for at install time.
"""

from __future__ import annotations

import ctypes
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from qasr_live.config import ENCODER_PROVIDER_CHOICES
from qasr_live.errors import ConfigError, DecoderError

_LOGGER = logging.getLogger(__name__)

DEVICE_TYPES = ("CPU", "GPU", "IGPU", "ACCEL", "META")  # enum ggml_backend_dev_type, in order
_GPU_TYPES = ("GPU", "IGPU")
REBUILD = "bash scripts/install.sh --gpu cuda (NVIDIA), --gpu vulkan (AMD, Intel, NVIDIA) or --gpu metal (macOS)"
_MiB = 1024 * 1024


# --- what the llama.cpp build has -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Device:
    """One ggml backend device. `index`: its place among the GPU devices llama.cpp offloads to (what
    `engine.gpu_device` names), None for the others (the CPU)."""

    name: str  # "Vulkan0", "CUDA0", "CPU"
    description: str  # "NVIDIA GeForce RTX 4090", "llvmpipe (LLVM 15.0.6, 256 bits)"
    backend: str  # the backend it belongs to: "Vulkan", "CUDA", "Metal", "CPU"
    kind: str  # one of DEVICE_TYPES
    free_bytes: int
    total_bytes: int
    index: int | None = None

    def describe(self) -> str:
        memory = f", {self.free_bytes / _MiB:.0f} of {self.total_bytes / _MiB:.0f} MiB free" if self.total_bytes else ""
        return f"{self.name} ({self.description}{memory})"


@dataclass(frozen=True, slots=True)
class LlamaBuild:
    """What the loaded libllama can run on."""

    backends: tuple[str, ...]  # compiled-in backends, "CPU" included
    devices: tuple[Device, ...]  # every device of every backend
    supports_gpu_offload: bool  # llama_supports_gpu_offload()

    @property
    def gpu_backends(self) -> tuple[str, ...]:
        return tuple(b for b in self.backends if b not in ("CPU", "BLAS", "RPC"))

    @property
    def gpus(self) -> tuple[Device, ...]:
        """The devices llama.cpp offloads to, in its order (`engine.gpu_device` indexes this)."""
        return tuple(d for d in self.devices if d.index is not None)


def _ggml_libraries(llama: ModuleType) -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """libggml (the registry) and libggml-base (the device functions), opened from the directory llama_cpp loaded
    libllama from (LLAMA_CPP_LIB_PATH included): dlopen hands back the already loaded libraries."""
    from llama_cpp._ctypes_extensions import load_shared_library

    lib_dir = Path(llama._base_path)
    ggml = load_shared_library("ggml", lib_dir)
    base = load_shared_library("ggml-base", lib_dir)
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    for lib, fname, args, res in (
        (ggml, "ggml_backend_dev_count", [], sz),
        (ggml, "ggml_backend_dev_get", [sz], vp),
        (ggml, "ggml_backend_reg_count", [], sz),
        (ggml, "ggml_backend_reg_get", [sz], vp),
        (base, "ggml_backend_reg_name", [vp], ctypes.c_char_p),
        (base, "ggml_backend_dev_name", [vp], ctypes.c_char_p),
        (base, "ggml_backend_dev_description", [vp], ctypes.c_char_p),
        (base, "ggml_backend_dev_memory", [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)], None),
        (base, "ggml_backend_dev_type", [vp], ctypes.c_int),
        (base, "ggml_backend_dev_backend_reg", [vp], vp),
    ):
        fn = getattr(lib, fname)
        fn.argtypes, fn.restype = args, res
    return ggml, base


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw else ""


def llama_build(llama: ModuleType | None = None) -> LlamaBuild:
    """Ask the loaded llama.cpp which backends it was built with and which devices they see (with the memory
    free now). `llama`: `llama_cpp.llama_cpp` (imported here when None)."""
    if llama is None:
        import llama_cpp.llama_cpp as llama_module

        llama = llama_module
    llama.llama_backend_init()
    ggml, base = _ggml_libraries(llama)
    backends = tuple(
        _text(base.ggml_backend_reg_name(ggml.ggml_backend_reg_get(i))) for i in range(ggml.ggml_backend_reg_count())
    )
    raw: list[tuple[str, str, str, str, int, int]] = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind_id = base.ggml_backend_dev_type(dev)
        kind = DEVICE_TYPES[kind_id] if 0 <= kind_id < len(DEVICE_TYPES) else f"type {kind_id}"
        backend = _text(base.ggml_backend_reg_name(base.ggml_backend_dev_backend_reg(dev)))
        name, desc = _text(base.ggml_backend_dev_name(dev)), _text(base.ggml_backend_dev_description(dev))
        raw.append((name, desc, backend, kind, free.value, total.value))
    # llama.cpp's own choice (llama.cpp: llama_model_load): the discrete GPUs, or the integrated ones when there
    # is no discrete GPU; RPC servers are not ours to pick.
    offload_kind = "GPU" if any(r[3] == "GPU" and r[2] != "RPC" for r in raw) else "IGPU"
    devices, n = [], 0
    for name, desc, backend, kind, free_b, total_b in raw:
        index = None
        if kind == offload_kind and backend != "RPC":
            index, n = n, n + 1
        devices.append(Device(name, desc, backend, kind, free_b, total_b, index))
    return LlamaBuild(backends, tuple(devices), bool(llama.llama_supports_gpu_offload()))


def build_record(prefix: str | Path | None = None) -> dict[str, Any] | None:
    """What `scripts/install.sh --gpu` recorded of the llama-cpp-python build in this environment (backend,
    version, cmake_args), or None when it was installed some other way."""
    path = Path(sys.prefix if prefix is None else prefix) / "share" / "qasr-live" / "llama-build.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # absent (pip install) or damaged: the registry still says what runs
        return None
    return record if isinstance(record, dict) else None


# --- the decoder's offload plan -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OffloadPlan:
    """Model parameters: how many layers (llama.cpp's n_gpu_layers; 999 = all) and on which device."""

    n_gpu_layers: int
    main_gpu: int | None  # None = llama.cpp splits the layers over all GPU devices
    devices: tuple[Device, ...]  # the devices it may use

    @property
    def on_gpu(self) -> bool:
        return self.n_gpu_layers != 0


def plan_offload(build: LlamaBuild, gpu: str, n_gpu_layers: int, gpu_device: int | None) -> OffloadPlan:
    """`engine.gpu` (require | auto | cpu), `engine.n_gpu_layers` (0 none, -1 all, N) and `engine.gpu_device` (an
    index into `build.gpus`, None = all of them) against what the build has. `require` offloads n_gpu_layers, fails
    when it cannot; `auto` offloads n_gpu_layers (0 taken as all) when a GPU device exists, else warns once and
    stays on the CPU. Raises DecoderError (the fix in the message)."""
    if gpu == "cpu":
        return OffloadPlan(0, None, ())
    layers = -1 if gpu == "auto" and n_gpu_layers == 0 else n_gpu_layers
    if layers == 0:
        return OffloadPlan(0, None, ())
    if not build.gpus:
        if not build.gpu_backends:
            why = "this llama.cpp build has no GPU backend (backends: " + ", ".join(build.backends) + ")"
            fix = f"rebuild it with one: {REBUILD}"
        else:
            why = f"this llama.cpp build has the {'/'.join(build.gpu_backends)} backend but it found no GPU device"
            fix = (
                "check the driver (Vulkan: `vulkaninfo --summary`; CUDA: `nvidia-smi`; a driver older than the "
                "toolkit the build used is not seen), and GGML_VK_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES"
            )
        if gpu == "auto":
            _LOGGER.warning("engine.gpu is auto: %s; the decoder runs on the CPU (%s)", why, fix)
            return OffloadPlan(0, None, ())
        raise DecoderError(
            f"engine.n_gpu_layers is {n_gpu_layers} but {why}: {fix}, or set engine.n_gpu_layers: 0 "
            "(or engine.gpu: auto to fall back to the CPU with a warning)."
        )
    if gpu_device is not None and gpu_device >= len(build.gpus):
        seen = "; ".join(f"{d.index}: {d.describe()}" for d in build.gpus)
        raise DecoderError(
            f"engine.gpu_device is {gpu_device} but llama.cpp sees {len(build.gpus)} GPU device(s) ({seen}): "
            f"set engine.gpu_device to 0..{len(build.gpus) - 1}, or null for all of them."
        )
    devices = build.gpus if gpu_device is None else (build.gpus[gpu_device],)
    return OffloadPlan(999 if layers < 0 else layers, gpu_device, devices)


def layers_that_fit(free_bytes: int, gguf_bytes: int, n_layer: int, reserve_bytes: int) -> int:
    """How many of a model's `n_layer` layers fit in `free_bytes` of device memory: the GGUF's weights spread
    evenly over the layers plus the output layer, after `reserve_bytes` (KV cache and compute buffers)."""
    per_layer = max(1, gguf_bytes // (n_layer + 1))
    return max(0, min(n_layer, (free_bytes - reserve_bytes) // per_layer))


def out_of_memory_error(path: Path, plan: OffloadPlan, n_layer: int | None, reserve_bytes: int) -> DecoderError:
    """The error of a load that failed with layers offloaded: usually the model did not fit; say how many would."""
    free = sum(d.free_bytes for d in plan.devices)
    where = ", ".join(d.describe() for d in plan.devices)
    if n_layer and free:
        fit = layers_that_fit(free, path.stat().st_size, n_layer, reserve_bytes)
        hint = f"about {fit} of its {n_layer} layers would fit: set engine.n_gpu_layers: {fit}"
    else:
        hint = "lower engine.n_gpu_layers"
    return DecoderError(
        f"llama.cpp cannot load {path.name} with {'all' if plan.n_gpu_layers >= 999 else plan.n_gpu_layers} layers "
        f"on {where}: out of GPU memory? {hint} (or a smaller model precision, or engine.n_gpu_layers: 0; "
        "--verbose shows llama.cpp's reason)."
    )


# --- where the layers went (llama.cpp's log, captured during the load) ----------------------------------------

_ASSIGNED = re.compile(r"layer\s+(\d+) assigned to device (\S+?),")
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_MODEL_BUF = re.compile(r"(\S+) model buffer size =\s*([\d.]+) MiB")
_KV_BUF = re.compile(r"(\S+) KV buffer size =\s*([\d.]+) MiB")
_COMPUTE_BUF = re.compile(r"(\S+) compute buffer size =\s*([\d.]+) MiB")


@dataclass(slots=True)
class OffloadReport:
    """Where llama.cpp put the model: layers per device (the output layer is one of them, so a model of 28
    layers has 29), and MiB of weights, KV cache and compute buffers per buffer (device) name.
    `offloaded`/`offloadable`: its own count, printed only by a build with GPU offload."""

    layers: dict[str, int] = field(default_factory=dict)
    offloaded: int = 0
    offloadable: int = 0
    weights_mib: dict[str, float] = field(default_factory=dict)
    kv_mib: dict[str, float] = field(default_factory=dict)
    compute_mib: dict[str, float] = field(default_factory=dict)

    def feed(self, line: str) -> None:
        """One llama.cpp log line (the load's lines come in one at a time)."""
        if m := _ASSIGNED.search(line):
            self.layers[m.group(2)] = self.layers.get(m.group(2), 0) + 1
        elif m := _OFFLOADED.search(line):
            self.offloaded, self.offloadable = int(m.group(1)), int(m.group(2))
        elif m := _MODEL_BUF.search(line):
            self.weights_mib[m.group(1)] = self.weights_mib.get(m.group(1), 0.0) + float(m.group(2))
        elif m := _KV_BUF.search(line):
            self.kv_mib[m.group(1)] = self.kv_mib.get(m.group(1), 0.0) + float(m.group(2))
        elif m := _COMPUTE_BUF.search(line):
            self.compute_mib[m.group(1)] = self.compute_mib.get(m.group(1), 0.0) + float(m.group(2))

    @property
    def gpu_layers(self) -> int:
        """Layers llama.cpp really assigned to a GPU (its "offloaded N/M" line says what was asked for)."""
        return sum(n for dev, n in self.layers.items() if dev != "CPU")

    def device_mib(self) -> dict[str, float]:
        """MiB in each non-host buffer: what the model takes of each GPU's memory (weights + KV + compute)."""
        total: dict[str, float] = {}
        for table in (self.weights_mib, self.kv_mib, self.compute_mib):
            for name, mib in table.items():
                if not _is_host_buffer(name):
                    total[name] = total.get(name, 0.0) + mib
        return total

    def summary(self) -> str:
        """One line: "28 layers on Vulkan0, 0 on CPU; Vulkan0 1204 MiB" (what the log and doctor show)."""
        if not self.layers:
            return "on the CPU"
        layers = ", ".join(f"{n} layer{'s' * (n != 1)} on {dev}" for dev, n in self.layers.items())
        vram = ", ".join(f"{name} {mib:.0f} MiB" for name, mib in self.device_mib().items())
        out = f"{layers} (output layer included)"
        return f"{out}; device memory: {vram}" if vram else out

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": dict(self.layers),
            "gpu_layers": self.gpu_layers,
            "device_mib": {k: round(v, 1) for k, v in self.device_mib().items()},
        }


def _is_host_buffer(name: str) -> bool:
    # CPU, CPU_Mapped, CPU_REPACK, Vulkan_Host, CUDA_Host: system memory, not the GPU's
    return name.startswith("CPU") or name.endswith("_Host")


# --- the encoder's execution providers ------------------------------------------------------------------------

#: engine.encoder_providers names -> onnxruntime execution providers; `auto` tries the GPU ones in this order.
PROVIDERS = {
    "cuda": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
assert set(PROVIDERS) | {"auto"} == set(ENCODER_PROVIDER_CHOICES), "config.py names the same providers"
_PACKAGES = {
    "cuda": "onnxruntime-gpu (`bash scripts/install.sh --gpu cuda`)",
    "rocm": "onnxruntime-rocm (AMD's wheels, repo.radeon.com)",
    "migraphx": "onnxruntime-migraphx",
    "coreml": "onnxruntime on macOS",
    "directml": "onnxruntime-directml (Windows)",
    "openvino": "onnxruntime-openvino",
}
CPU_PROVIDER = PROVIDERS["cpu"]


def encoder_providers(requested: list[str] | tuple[str, ...], available: list[str]) -> list[str]:
    """The onnxruntime providers for `engine.encoder_providers` (names from ENCODER_PROVIDER_CHOICES) among
    `available` (onnxruntime.get_available_providers()); CPU is always last. A listed provider the package
    lacks is a ConfigError naming the package that has it; `auto` takes the GPU ones that exist."""
    out: list[str] = []
    for name in requested:
        if name == "auto":
            out += [p for key, p in PROVIDERS.items() if key != "cpu" and p in available and p not in out]
            continue
        provider = PROVIDERS[name]
        if provider not in available:
            have = ", ".join(p.removesuffix("ExecutionProvider") for p in available)
            raise ConfigError(
                f"engine.encoder_providers lists {name} but the installed onnxruntime has no {provider} "
                f"(it has: {have}): install {_PACKAGES.get(name, 'the onnxruntime package with it')} in place of "
                "onnxruntime, or remove it from the list (auto takes what exists)."
            )
        if provider not in out:
            out.append(provider)
    if CPU_PROVIDER not in out:
        out.append(CPU_PROVIDER)
    return out
