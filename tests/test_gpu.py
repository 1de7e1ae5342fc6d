"""GPU offload on the suite's CPU build of llama.cpp and CPU onnxruntime: what the libraries really report (no
GPU backend, no GPU provider), and every "GPU asked for but not there" path as the one line a user gets, through
the real library, the real CLI and the real install script. The GPU itself is proven by scripts/vulkan_check.sh
(tests/test_vulkan.py runs it when QASR_VULKAN=1)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import scipy.io.wavfile

from qasr_live.config import EngineConfig
from qasr_live.engine.decoder import Decoder
from qasr_live.engine.encoder import AudioEncoder
from qasr_live.engine.gpu import (
    CPU_PROVIDER,
    Device,
    LlamaBuild,
    OffloadReport,
    build_record,
    encoder_providers,
    layers_that_fit,
    llama_build,
    out_of_memory_error,
    plan_offload,
)
from qasr_live.engine.model_dir import ModelDir, open_model_dir
from qasr_live.engine.worker import EncoderWorker
from qasr_live.errors import ConfigError, DecoderError, EncoderCrashed

REPO = Path(__file__).resolve().parents[1]
GiB = 1 << 30


@pytest.fixture(scope="module")
def model(tiny_models) -> ModelDir:
    return open_model_dir(tiny_models["tied"], "fp32", "f32")


def _gpu(name: str, index: int, free: int = 8 * GiB, kind: str = "GPU", backend: str = "Vulkan") -> Device:
    return Device(name, f"test {name}", backend, kind, free, 2 * free, index)


CPU_DEVICE = Device("CPU", "cpu", "CPU", "CPU", 16 * GiB, 16 * GiB)
TWO_GPUS = LlamaBuild(("CPU", "Vulkan"), (CPU_DEVICE, _gpu("Vulkan0", 0), _gpu("Vulkan1", 1)), True)


# --- the CPU build, as it really is ---------------------------------------------------------------------------


def test_the_cpu_build_reports_no_gpu_backend_and_no_gpu_device() -> None:
    import llama_cpp.llama_cpp as llama

    build = llama_build()
    assert "CPU" in build.backends
    assert build.gpu_backends == ()
    assert build.gpus == ()
    assert build.supports_gpu_offload is bool(llama.llama_supports_gpu_offload()) is False
    cpu = [d for d in build.devices if d.kind == "CPU"]
    assert len(cpu) == 1 and cpu[0].index is None and cpu[0].total_bytes > 0  # the registry really answered


def test_gpu_layers_on_the_cpu_build_are_an_error_that_says_how_to_rebuild(model: ModelDir) -> None:
    with pytest.raises(DecoderError) as e:
        Decoder(model.decoder, n_ctx=512, n_gpu_layers=-1)
    message = str(e.value)
    assert "engine.n_gpu_layers is -1" in message and "no GPU backend" in message
    assert "scripts/install.sh --gpu cuda" in message and "engine.gpu: auto" in message
    assert "\n" not in message


def test_gpu_auto_on_the_cpu_build_warns_once_and_decodes_on_the_cpu(model: ModelDir, caplog) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="qasr_live"),
        Decoder(model.decoder, n_ctx=512, n_gpu_layers=0, gpu="auto") as decoder,
    ):
        decoder.feed_tokens(decoder.tokenize("<|im_start|>user\nhello"))
        token = decoder.sample()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "engine.gpu is auto" in warnings[0] and "runs on the CPU" in warnings[0]
    assert 0 <= token < decoder.n_vocab
    assert decoder.plan.n_gpu_layers == 0


def test_the_load_log_tells_where_every_layer_went(model: ModelDir) -> None:
    import gguf

    reader = gguf.GGUFReader(model.decoder)
    n_layer = int(reader.fields["qwen3.block_count"].parts[-1][0])
    with Decoder(model.decoder, n_ctx=512) as decoder:
        report = decoder.offload
    # llama.cpp's own per-layer lines, read from its log: the repeating layers and the output layer
    assert report.layers == {"CPU": n_layer + 1}
    assert report.gpu_layers == 0 and report.offloadable == 0  # (a build without GPU offload prints no count)
    assert report.device_mib() == {}  # nothing in GPU memory
    assert report.to_dict()["layers"] == {"CPU": n_layer + 1}


def test_cli_transcribe_with_gpu_layers_on_the_cpu_build_fails_in_one_line(model: ModelDir, tmp_path: Path) -> None:
    wav = tmp_path / "a.wav"
    scipy.io.wavfile.write(wav, 16000, (np.random.default_rng(0).standard_normal(16000) * 3000).astype(np.int16))
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  decoder_precision: f32\nengine:\n  n_gpu_layers: -1\n")
    cmd = [
        sys.executable,
        "-m",
        "qasr_live",
        "transcribe",
        str(wav),
        "--model",
        str(model.path),
        "--config",
        str(config),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 3, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("qasr-live: error:")]
    assert len(errors) == 1 and "no GPU backend" in errors[0] and "--gpu" in errors[0]
    assert "Traceback" not in done.stderr
    # the same with engine.gpu: auto transcribes, on the CPU, and the stats say where things ran
    config.write_text("model:\n  decoder_precision: f32\nengine:\n  n_gpu_layers: -1\n  gpu: auto\n")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "engine.gpu is auto" in done.stderr
    stats = {line.split()[0]: line for line in done.stderr.splitlines() if line.startswith("  ")}
    assert "layers on CPU" in stats["decoder"] and "GPU" not in stats["decoder"]
    assert "CPU" in stats["encoder"] and "llama.cpp" in stats


def test_gpu_cpu_with_gpu_layers_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"engine\.gpu is cpu but engine\.n_gpu_layers is 4"):
        EngineConfig(gpu="cpu", n_gpu_layers=4)


# --- the plan, against builds this machine does not have ------------------------------------------------------


def test_a_gpu_device_out_of_range_names_the_devices_there_are() -> None:
    with pytest.raises(DecoderError) as e:
        plan_offload(TWO_GPUS, "require", -1, 2)
    assert "engine.gpu_device is 2" in str(e.value) and "2 GPU device(s)" in str(e.value)
    assert "0: Vulkan0" in str(e.value) and "1: Vulkan1" in str(e.value) and "0..1" in str(e.value)


def test_the_plan_picks_layers_and_devices() -> None:
    everything = plan_offload(TWO_GPUS, "require", -1, None)
    assert everything.n_gpu_layers == 999 and everything.main_gpu is None
    assert [d.name for d in everything.devices] == ["Vulkan0", "Vulkan1"]
    second = plan_offload(TWO_GPUS, "require", 12, 1)
    assert (second.n_gpu_layers, second.main_gpu, [d.name for d in second.devices]) == (12, 1, ["Vulkan1"])
    assert plan_offload(TWO_GPUS, "auto", 0, None).n_gpu_layers == 999  # auto: all layers when there is a GPU
    assert plan_offload(TWO_GPUS, "require", 0, None).on_gpu is False  # require with 0 layers: the CPU, as asked
    assert plan_offload(TWO_GPUS, "cpu", 0, 0).on_gpu is False


def test_a_gpu_backend_without_a_device_says_to_check_the_driver() -> None:
    no_device = LlamaBuild(("CPU", "Vulkan"), (CPU_DEVICE,), False)
    with pytest.raises(DecoderError) as e:
        plan_offload(no_device, "require", -1, None)
    assert "has the Vulkan backend but it found no GPU device" in str(e.value) and "vulkaninfo" in str(e.value)


def test_integrated_gpus_count_only_without_a_discrete_one() -> None:
    from qasr_live.engine import gpu

    # the index rule of llama_build, applied to what a laptop's registry lists
    igpu_only = LlamaBuild(("CPU", "Vulkan"), (CPU_DEVICE, _gpu("Vulkan0", 0, kind="IGPU")), True)
    assert [d.name for d in plan_offload(igpu_only, "require", -1, 0).devices] == ["Vulkan0"]
    assert gpu.DEVICE_TYPES[:3] == ("CPU", "GPU", "IGPU")  # enum ggml_backend_dev_type's order


def test_out_of_memory_says_how_many_layers_would_fit(model: ModelDir) -> None:
    assert layers_that_fit(free_bytes=3 * GiB, gguf_bytes=29 * GiB // 10, n_layer=28, reserve_bytes=GiB // 2) == 25
    assert layers_that_fit(free_bytes=GiB // 4, gguf_bytes=GiB, n_layer=28, reserve_bytes=GiB // 2) == 0
    size = model.decoder.stat().st_size
    small = LlamaBuild(("CPU", "CUDA"), (CPU_DEVICE, _gpu("CUDA0", 0, free=size // 2, backend="CUDA")), True)
    error = out_of_memory_error(model.decoder, plan_offload(small, "require", -1, None), n_layer=4, reserve_bytes=0)
    # half the file, in five equal parts (four layers and the output layer): two whole layers
    assert "CUDA0" in str(error) and "about 2 of its 4 layers would fit: set engine.n_gpu_layers: 2" in str(error)


def test_the_offload_report_reads_a_gpu_load_log() -> None:
    # the lines as llama.cpp prints them (format strings of llama-model.cpp / llama-kv-cache.cpp / llama-context.cpp)
    report = OffloadReport()
    for il in range(3):
        report.feed(f"load_tensors: layer {il:3d} assigned to device Vulkan0, is_swa = 0\n")
    report.feed("load_tensors: layer   3 assigned to device CPU, is_swa = 0\n")
    report.feed("load_tensors: offloaded 3/5 layers to GPU\n")
    report.feed("load_tensors:      Vulkan0 model buffer size =   812.50 MiB\n")
    report.feed("load_tensors:   CPU_Mapped model buffer size =   300.00 MiB\n")
    report.feed("llama_kv_cache:    Vulkan0 KV buffer size =   168.00 MiB\n")
    report.feed("llama_context:    Vulkan0 compute buffer size =   300.25 MiB\n")
    report.feed("llama_context: Vulkan_Host compute buffer size =    12.00 MiB\n")
    assert report.layers == {"Vulkan0": 3, "CPU": 1} and report.gpu_layers == 3
    assert (report.offloaded, report.offloadable) == (3, 5)
    assert report.device_mib() == {"Vulkan0": pytest.approx(812.5 + 168 + 300.25)}
    assert report.summary().startswith("3 layers on Vulkan0, 1 layer on CPU (output layer included); device memory")


# --- the encoder's providers ----------------------------------------------------------------------------------


def test_auto_takes_the_gpu_providers_the_package_has_and_the_cpu() -> None:
    available = onnxruntime.get_available_providers()
    assert encoder_providers(["auto"], available) == [CPU_PROVIDER]  # the CPU package: nothing else to take
    fake_gpu_package = ["CUDAExecutionProvider", "OpenVINOExecutionProvider", CPU_PROVIDER]
    assert encoder_providers(["auto"], fake_gpu_package) == fake_gpu_package
    assert encoder_providers(["openvino", "auto"], fake_gpu_package)[:2] == [
        "OpenVINOExecutionProvider",
        "CUDAExecutionProvider",
    ]
    assert encoder_providers(["cpu"], fake_gpu_package) == [CPU_PROVIDER]


def test_a_provider_the_package_lacks_fails_naming_the_package(model: ModelDir) -> None:
    with pytest.raises(ConfigError) as e:
        AudioEncoder(model.frontend, model.backend, providers=["cuda"])
    assert "engine.encoder_providers lists cuda" in str(e.value) and "onnxruntime-gpu" in str(e.value)
    # the same from inside the encoder subprocess: raised in the parent, before it is called ready
    with pytest.raises(ConfigError, match="onnxruntime-gpu"):
        EncoderWorker(model.frontend, model.backend, providers=["cuda"])


def test_an_unknown_provider_name_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("engine:\n  encoder_providers: [cuda, tpu]\n")
    wav = tmp_path / "a.wav"
    scipy.io.wavfile.write(wav, 16000, np.zeros(16000, dtype=np.int16))
    done = subprocess.run(
        [sys.executable, "-m", "qasr_live", "transcribe", str(wav), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 2
    assert "'tpu' is not a provider" in done.stderr and "Traceback" not in done.stderr


def test_the_encoder_restarts_on_the_cpu_after_dying_on_a_gpu(model: ModelDir, caplog) -> None:
    mel = np.random.default_rng(1).standard_normal((128, 250)).astype(np.float32)
    with EncoderWorker(model.frontend, model.backend) as worker:
        expected = worker.encode(mel)
        assert worker.providers == [CPU_PROVIDER]
        # What a worker on a GPU reports at start (no GPU here: the state is set as its child would have),
        # then its death, as a driver crash or the OOM killer would end it.
        worker.providers = ["CUDAExecutionProvider", CPU_PROVIDER]
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(EncoderCrashed):
            worker.encode(mel)
        with caplog.at_level(logging.WARNING, logger="qasr_live"):
            worker.restart()
        assert any("on the CPU: it failed on CUDAExecutionProvider" in r.getMessage() for r in caplog.records)
        assert worker.providers == [CPU_PROVIDER] and worker._requested == ["cpu"]
        np.testing.assert_array_equal(worker.encode(mel), expected)


# --- the build record and the install script ------------------------------------------------------------------


def test_the_build_record_is_read_from_the_environment(tmp_path: Path) -> None:
    assert build_record(tmp_path) is None
    record = tmp_path / "share" / "qasr-live" / "llama-build.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"backend": "vulkan", "version": "0.3.36", "cmake_args": "-DGGML_VULKAN=on", "key": "k"}')
    assert build_record(tmp_path) == {
        "backend": "vulkan",
        "version": "0.3.36",
        "cmake_args": "-DGGML_VULKAN=on",
        "key": "k",
    }
    record.write_text("{broken")
    assert build_record(tmp_path) is None


def _install(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh"), *args],
        env={**os.environ, "QASR_VENV": str(tmp_path / "venv"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--gpu", "tpu"], {}, "--gpu (or QASR_GPU) is 'tpu'; use one of cuda, vulkan, metal, cpu."),
        ([], {"QASR_GPU": "rocm"}, "is 'rocm'"),
        (["--gpu=metal"], {}, "Metal exists only on macOS"),
        (["--gpu", "cuda"], {"PATH": "/usr/bin:/bin", "CUDA_HOME": "/nonexistent"}, "nvcc (the CUDA toolkit) is not"),
    ],
)
def test_install_checks_the_gpu_toolchain_before_building(tmp_path: Path, args, env, says) -> None:
    done = _install(tmp_path, *args, **env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("install.sh: error:") == 1 and says in done.stderr
    assert not (tmp_path / "venv").exists()  # nothing was built or installed


def test_install_refuses_vulkan_headers_too_old_for_ggml(tmp_path: Path) -> None:
    include = tmp_path / "include" / "vulkan"
    include.mkdir(parents=True)
    # Debian 12's headers, as far as the check reads them
    (include / "vulkan_core.h").write_text(
        "#define VK_HEADER_VERSION 239\n"
        "#define VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION(0, 1, 3, VK_HEADER_VERSION)\n"
    )
    done = _install(tmp_path, "--gpu", "vulkan", CMAKE_ARGS=f"-DVulkan_INCLUDE_DIR={include.parent}")
    assert done.returncode == 2, done.stderr
    assert "are 1.3.239, ggml-vulkan needs >= 1.3.275" in done.stderr and "-DVulkan_INCLUDE_DIR" in done.stderr
    assert not (tmp_path / "venv").exists()


def test_doctor_fails_gpu_layers_and_providers_the_installation_lacks(tmp_path: Path) -> None:
    from tests.test_doctor import _config, _env, _report

    config = _config(tmp_path, engine={"n_gpu_layers": -1, "encoder_providers": ["openvino", "cpu"]})
    status, checks = _report(config, _env(tmp_path))
    assert status == 6
    offload = checks[("llama.cpp", "gpu offload")]
    assert offload["status"] == "FAIL" and "no GPU backend" in offload["detail"] and "--gpu" in offload["fix"]
    devices = checks[("llama.cpp", "gpu devices")]
    assert devices["status"] == "ok" and [d["type"] for d in devices["data"]["devices"]] == ["CPU"]
    providers = checks[("onnxruntime", "providers")]
    assert providers["status"] == "FAIL" and "onnxruntime-openvino" in providers["detail"]
