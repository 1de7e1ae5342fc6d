"""`qasr-live pull` and `qasr-live models`: the real huggingface_hub client in a real `qasr-live` subprocess, over
real HTTP against a fake Hugging Face Hub (devkit/fake_hub.py), with tiny random checkpoints of the real
architecture, into temporary HF_HOME / XDG_DATA_HOME directories; the disk-full cases use real small tmpfs mounts
that really fill up."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from devkit.fake_hub import FakeHub
from devkit.random_aligner import TINY_ALIGNER_SPECS, build_random_aligner
from devkit.random_checkpoint import RandomModelSpec, build_random_checkpoint
from qasr_live.config import AppConfig, ModelConfig
from qasr_live.errors import EXIT_DOWNLOAD, EXIT_INTERRUPTED, EXIT_MODEL, EXIT_USAGE, ConfigError, ModelError
from qasr_live.model_store import DEMO_MODEL, resolve_model

ROOT = Path(__file__).resolve().parents[1]
REPO = "Qwen/Qwen3-ASR-0.6B"
NAME = "qwen3-asr-0.6b"
TOKEN = "hf_fake_token_for_tests"
SAMPLE = DEMO_MODEL / "sample.wav"
# A random model repeats itself at once; without the guard it writes tokens to compare.
TRANSCRIBE_CONFIG = "engine:\n  repetition_guard: false\n  max_new_tokens: 16\n"
CHUNK = 10 * 1024 * 1024  # huggingface_hub writes a transfer to disk in blocks of this size


# --- helpers -------------------------------------------------------------------------------------------------


def dead_endpoint() -> str:
    """An address where nothing listens (a port just released by the OS)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def make_env(tmp: Path, endpoint: str, **extra: str) -> dict[str, str]:
    """The environment of a user whose HF cache, data and config directories are under `tmp`; nothing of the
    machine's own Hugging Face settings (token, cache, offline mode) leaks in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGING_FACE", "XDG_DATA", "XDG_CONFIG")) and k != "TRANSFORMERS_OFFLINE"
    }
    env |= {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(tmp / "hf"),
        "XDG_DATA_HOME": str(tmp / "data"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    return env | extra


def qasr(*args: str | Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "qasr_live", *map(str, args)]
    return subprocess.run(
        cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def start(*args: str | Path, env: dict[str, str], stdin: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "qasr_live", *map(str, args)]
    return subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def one_error(proc: subprocess.CompletedProcess[str] | SimpleNamespace, code: int, *parts: str) -> str:
    """The command failed with `code` and said so in exactly one `qasr-live: error:` line naming `parts`."""
    assert proc.returncode == code, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("qasr-live: error: ")]
    assert len(errors) == 1, proc.stderr[-4000:]
    for part in parts:
        assert part in errors[0], (part, errors[0])
    return errors[0]


def models_dir(tmp: Path) -> Path:
    return tmp / "data" / "qasr-live" / "models"


def entries(directory: Path) -> list[str]:
    """Everything in a directory, hidden work directories included; [] when it does not exist."""
    return sorted(os.listdir(directory)) if directory.exists() else []


def store_entries(tmp: Path) -> list[str]:
    return entries(models_dir(tmp))


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def incomplete_blobs(tmp: Path, repo: str = REPO) -> list[Path]:
    blobs = tmp / "hf" / "hub" / f"models--{repo.replace('/', '--')}" / "blobs"
    return sorted(blobs.glob("*.incomplete")) if blobs.exists() else []


def fill(directory: Path) -> int:
    """Write a file into `directory` until its file system is full; returns the bytes written."""
    written = 0
    block = b"\0" * 65536
    with open(directory / "filler", "wb") as f:
        while True:
            try:
                f.write(block)
                f.flush()
                written += len(block)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
        with contextlib.suppress(OSError):  # the last partial block may still be buffered
            os.fsync(f.fileno())
    return written


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# --- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repos(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """The directories the hub serves: the tiny checkpoint as Qwen3-ASR, a ForcedAligner and a BERT config."""
    root = tmp_path_factory.mktemp("repos")
    asr = tiny_checkpoints["tied"]
    aligner = build_random_aligner(root / "aligner", TINY_ALIGNER_SPECS["aligner_gqa"], decorrelate=0)
    bert = root / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    (bert / "model.safetensors").write_bytes(os.urandom(300_000))
    (bert / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    return {"asr": asr, "aligner": aligner, "bert": bert}


@pytest.fixture(scope="module")
def hub(repos):
    with FakeHub(token=TOKEN) as hub:
        hub.add_repo(REPO, repos["asr"])
        hub.add_repo("Qwen/Qwen3-ForcedAligner-0.6B", repos["aligner"])
        hub.add_repo("google-bert/bert-base-uncased", repos["bert"])
        hub.add_repo("acme/private-asr", repos["asr"], private=True)
        hub.add_repo("acme/gated-asr", repos["asr"], gated=True)
        yield hub


@pytest.fixture(scope="module")
def pulled(hub, tmp_path_factory, report):
    """One real pull of the tiny checkpoint, with the default options, into a fresh user's directories."""
    tmp = tmp_path_factory.mktemp("pulled")
    env = make_env(tmp, hub.endpoint)
    t0 = time.perf_counter()
    proc = qasr("pull", REPO, env=env)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    served = dict(hub.bytes_by_file)  # what this pull fetched (later tests pull from the same hub)
    m = re.search(r"download ([\d.]+) s, conversion ([\d.]+) s", proc.stdout)
    assert m, proc.stdout
    report(
        f"pull of the tiny checkpoint from the fake hub: {wall:.1f} s wall for the whole command (download "
        f"{m[1]} s, conversion {m[2]} s, the rest is Python and library start-up)"
    )
    return SimpleNamespace(tmp=tmp, env=env, proc=proc, path=models_dir(tmp) / NAME, served=served)


@pytest.fixture(scope="module")
def medium_checkpoint(tmp_path_factory) -> Path:
    """A random checkpoint whose weights (13.7 MB) outgrow huggingface_hub's 10 MiB write block, so an
    interrupted transfer leaves a partial file to resume from (a smaller one is buffered whole in memory)."""
    spec = RandomModelSpec(
        text_hidden=256, text_layers=4, text_heads=4, text_kv_heads=2, head_dim=64, text_ffn=768, init_std=0.1, seed=3
    )
    path = build_random_checkpoint(tmp_path_factory.mktemp("medium") / "ckpt", spec)
    assert (path / "model.safetensors").stat().st_size > CHUNK + 2_000_000
    return path


@pytest.fixture
def medium_hub(medium_checkpoint):
    with FakeHub() as hub:
        hub.add_repo(REPO, medium_checkpoint)
        yield hub


@pytest.fixture
def small_fs(tmp_path):
    """mount(name, size) -> a directory on a fresh tmpfs of that size (unmounted afterwards)."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): the disk-full cases need it")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


# --- the good road -------------------------------------------------------------------------------------------


def test_pull_installs_the_model_and_makes_it_the_default(pulled, hub, repos):
    repo = hub.repos[REPO]
    assert store_entries(pulled.tmp) == ["default", NAME]  # no hidden leftovers
    assert (models_dir(pulled.tmp) / "default").read_text().strip() == NAME
    m = manifest(pulled.path)
    assert m["precisions"] == {"encoder": ["int8"], "decoder": ["q4_k"]}
    assert m["demo"] is False
    assert {k: m["source"][k] for k in ("repo", "revision", "ref", "endpoint", "name")} == {
        "repo": REPO,
        "revision": repo.sha,
        "ref": "main",
        "endpoint": hub.endpoint,
        "name": "Qwen3-ASR-0.6B",
    }
    # the weights came over plain HTTP from this server (the Xet path would fetch them elsewhere), once
    assert pulled.served[f"{REPO}/model.safetensors"] == (repos["asr"] / "model.safetensors").stat().st_size
    # only what the exporter reads was fetched
    served = {key.split("/", 2)[2] for key in pulled.served if key.startswith(REPO + "/")}
    assert "preprocessor_config.json" not in served and "chat_template.jinja" not in served
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= served
    # into the normal Hugging Face cache, at the commit
    snapshot = pulled.tmp / "hf" / "hub" / "models--Qwen--Qwen3-ASR-0.6B" / "snapshots" / repo.sha
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(served)
    assert "is the default model" in pulled.proc.stdout

    listing = qasr("models", env=pulled.env)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if NAME in line)
    assert row.startswith("*") and "int8" in row and "q4_k" in row and f"{REPO}@{repo.sha[:12]}" in row


def test_transcribe_without_model_uses_the_pulled_default(pulled, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(TRANSCRIBE_CONFIG)
    plain = qasr("transcribe", SAMPLE, "--config", config, env=pulled.env)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert f"{NAME} (encoder int8, decoder q4_k)" in plain.stderr
    assert "DEMO model" not in plain.stderr
    explicit = qasr("transcribe", SAMPLE, "--config", config, "--model", pulled.path, "-q", env=pulled.env)
    demo = qasr("transcribe", SAMPLE, "--config", config, "--model", DEMO_MODEL, "-q", env=pulled.env)
    assert explicit.returncode == 0 and demo.returncode == 0, explicit.stderr + demo.stderr
    assert plain.stdout.strip()
    assert plain.stdout == explicit.stdout
    assert plain.stdout != demo.stdout  # the comparison can tell the models apart


def test_pull_again_keeps_an_up_to_date_model(pulled, hub):
    weights_before = hub.bytes_by_file[f"{REPO}/model.safetensors"]
    inode = (pulled.path / "manifest.json").stat().st_ino
    again = qasr("pull", REPO, env=pulled.env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "up to date" in again.stdout
    assert (pulled.path / "manifest.json").stat().st_ino == inode  # not converted again
    assert hub.bytes_by_file[f"{REPO}/model.safetensors"] == weights_before  # nor downloaded again


def test_offline_with_a_complete_cache_needs_no_server(pulled, tmp_path):
    env = make_env(tmp_path, dead_endpoint(), HF_HOME=pulled.env["HF_HOME"], HF_HUB_OFFLINE="1")
    done = qasr("pull", REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert manifest(models_dir(tmp_path) / NAME)["source"]["revision"] == manifest(pulled.path)["source"]["revision"]


def test_unreachable_hub_with_a_complete_cache_uses_the_cache(pulled):
    env = pulled.env | {"HF_ENDPOINT": dead_endpoint()}
    done = qasr("pull", REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cannot reach" in done.stderr and "using the cached download" in done.stderr
    assert "up to date" in done.stdout


def test_pull_a_local_checkpoint_directory(tiny_checkpoints, tmp_path):
    """A directory is converted as it is: no Hub involved (nothing listens at HF_ENDPOINT)."""
    env = make_env(tmp_path, dead_endpoint())
    assert "no models installed" in qasr("models", env=env).stdout
    src = tiny_checkpoints["untied_gqa"]
    one_error(qasr("pull", src, "--revision", "v1", env=env), EXIT_USAGE, "--revision applies to Hub repos")
    done = qasr("pull", src, "--precision", "fp32/f16", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    m = manifest(models_dir(tmp_path) / "untied_gqa")
    assert m["source"]["path"] == str(src.resolve()) and "repo" not in m["source"]
    row = next(line for line in qasr("models", env=env).stdout.splitlines() if "untied_gqa" in line)
    assert row.startswith("*") and "local checkpoint" in row


# --- failures: one line each, nothing installed ---------------------------------------------------------------


def test_offline_with_nothing_cached(tmp_path):
    env = make_env(tmp_path, dead_endpoint(), HF_HUB_OFFLINE="1")
    one_error(qasr("pull", REPO, env=env), EXIT_DOWNLOAD, "HF_HUB_OFFLINE=1", REPO, "unset HF_HUB_OFFLINE")
    assert store_entries(tmp_path) == []


def test_unreachable_hub(tmp_path):
    endpoint = dead_endpoint()
    proc = qasr("pull", REPO, env=make_env(tmp_path, endpoint))
    one_error(proc, EXIT_DOWNLOAD, f"cannot reach {endpoint}", "connection refused", "HF_ENDPOINT")
    assert store_entries(tmp_path) == []


def test_unknown_repo(hub, tmp_path):
    proc = qasr("pull", "Qwen/Qwen3-ASR-9B", env=make_env(tmp_path, hub.endpoint))
    one_error(proc, EXIT_DOWNLOAD, "no model repository Qwen/Qwen3-ASR-9B", hub.endpoint, "check the name")
    assert store_entries(tmp_path) == []


def test_unknown_revision(hub, tmp_path):
    proc = qasr("pull", REPO, "--revision", "v9", env=make_env(tmp_path, hub.endpoint))
    one_error(proc, EXIT_DOWNLOAD, "no revision 'v9'", "--revision")


def test_private_repo_needs_the_token(hub, tmp_path):
    repo = "acme/private-asr"
    env = make_env(tmp_path, hub.endpoint)
    one_error(qasr("pull", repo, env=env), EXIT_DOWNLOAD, f"no model repository {repo}", "private", "HF_TOKEN")
    wrong = qasr("pull", repo, env=env | {"HF_TOKEN": "hf_wrong"})
    one_error(wrong, EXIT_DOWNLOAD, "rejected the token", "HF_TOKEN")
    assert store_entries(tmp_path) == []
    served = hub.bytes_by_file.get(f"{repo}/model.safetensors", 0)
    assert served == 0

    done = qasr("pull", repo, "--precision", "fp32/f16", env=env | {"HF_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr[-3000:]
    m = manifest(models_dir(tmp_path) / "private-asr")
    assert m["source"]["repo"] == repo and m["precisions"] == {"encoder": ["fp32"], "decoder": ["f16"]}


def test_gated_repo_without_a_token(hub, tmp_path):
    proc = qasr("pull", "acme/gated-asr", env=make_env(tmp_path, hub.endpoint))
    one_error(proc, EXIT_DOWNLOAD, "acme/gated-asr is gated", "huggingface-cli login", "HF_TOKEN")


@pytest.mark.parametrize(
    ("repo", "parts"),
    [
        ("google-bert/bert-base-uncased", ["not a Qwen3-ASR checkpoint", "'bert'", "Qwen/Qwen3-ASR-0.6B"]),
    ],
)
def test_not_an_asr_checkpoint_is_refused_before_the_weights(hub, tmp_path, repo, parts):
    proc = qasr("pull", repo, env=make_env(tmp_path, hub.endpoint))
    line = one_error(proc, EXIT_USAGE, *parts)
    assert str(tmp_path) not in line  # the repo is named, not its place in the cache
    assert hub.bytes_by_file.get(f"{repo}/config.json", 0) > 0
    assert hub.bytes_by_file.get(f"{repo}/model.safetensors", 0) == 0
    assert store_entries(tmp_path) == []


def test_bad_options_fail_before_the_network(tmp_path):
    env = make_env(tmp_path, dead_endpoint())
    one_error(qasr("pull", REPO, "--precision", "int3/q4_k", env=env), EXIT_USAGE, "--precision", "int3", "int8/q4_k")
    one_error(qasr("pull", REPO, "--precision", "int8", env=env), EXIT_USAGE, "--precision", "ENCODER/DECODER")
    one_error(qasr("pull", REPO, "--name", "My Model", env=env), EXIT_USAGE, "invalid model name 'My Model'")
    one_error(qasr("pull", "no-such-dir", env=env), EXIT_USAGE, "neither a checkpoint directory nor", "OWNER/NAME")


def _blocked(tmp_path, module: str) -> str:
    """A PYTHONPATH entry that makes `import module` fail as if it were not installed."""
    blocker = tmp_path / f"no-{module}" / module
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n"
    )
    return str(blocker.parent)


def test_pull_converts_without_torch(tiny_checkpoints, tmp_path):
    """What a runtime-only install has is enough: torch (and with it transformers and qwen_asr) cannot load."""
    env = make_env(tmp_path, dead_endpoint(), PYTHONPATH=_blocked(tmp_path, "torch"))
    proc = qasr("pull", tiny_checkpoints["tied"], "--default", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (name,) = [e for e in store_entries(tmp_path) if e != "default"]
    assert manifest(models_dir(tmp_path) / name)["files"]


def test_a_missing_converter_library_is_one_line(tiny_checkpoints, tmp_path):
    env = make_env(tmp_path, dead_endpoint(), PYTHONPATH=_blocked(tmp_path, "gguf"))
    proc = qasr("pull", tiny_checkpoints["tied"], env=env)
    one_error(proc, EXIT_USAGE, "needs the Python package gguf", "reinstall qasr-live")
    assert store_entries(tmp_path) == []


def test_a_name_taken_by_another_source_is_not_replaced(pulled, tmp_path):
    data = shutil.copytree(pulled.tmp / "data", tmp_path / "data")
    env = pulled.env | {"XDG_DATA_HOME": str(data), "HF_ENDPOINT": dead_endpoint()}
    proc = qasr("pull", "acme/other-asr", "--name", NAME, env=env)
    one_error(proc, EXIT_USAGE, f"{NAME!r} is already installed from {REPO}", "--name", "models remove")
    assert manifest(data / "qasr-live" / "models" / NAME)["source"]["repo"] == REPO


# --- interrupted downloads resume ----------------------------------------------------------------------------


def test_a_cut_download_fails_in_one_line_and_resumes(medium_hub, medium_checkpoint, tmp_path):
    weights = medium_checkpoint / "model.safetensors"
    size = weights.stat().st_size
    env = make_env(tmp_path, medium_hub.endpoint)
    medium_hub.cut(after=CHUNK + 500_000, files="model.safetensors")
    one_error(
        qasr("pull", REPO, env=env), EXIT_DOWNLOAD, "broke off", "connection closed after", "run the same command again"
    )
    assert store_entries(tmp_path) == []
    [partial] = incomplete_blobs(tmp_path)
    assert partial.stat().st_size == CHUNK  # what arrived before the cut, in whole write blocks

    # offline, the half-downloaded cache is not mistaken for a checkpoint
    offline = qasr("pull", REPO, env=env | {"HF_HUB_OFFLINE": "1"})
    one_error(offline, EXIT_DOWNLOAD, "HF_HUB_OFFLINE=1", "only part of", "model.safetensors")

    ranges_before = len(medium_hub.range_requests)
    done = qasr("pull", REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r for _, r in medium_hub.range_requests[ranges_before:]] == [f"bytes={CHUNK}-"]
    served = medium_hub.bytes_by_file[f"{REPO}/model.safetensors"]
    assert size < served < 1.5 * size, (served, size)
    assert incomplete_blobs(tmp_path) == []
    blob = next(
        (tmp_path / "hf" / "hub" / "models--Qwen--Qwen3-ASR-0.6B" / "blobs").glob(
            medium_hub.repos[REPO].files["model.safetensors"].sha256
        )
    )
    assert blob.read_bytes() == weights.read_bytes()
    assert store_entries(tmp_path) == ["default", NAME]


def reap(proc: subprocess.Popen, hub: FakeHub | None = None) -> None:
    """After a test's dealings with a running pull: let a held transfer go, and never leave the process behind."""
    if hub is not None:
        hub.release()
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_ctrl_c_during_the_download_fails_in_one_line_and_resumes(medium_hub, medium_checkpoint, tmp_path):
    env = make_env(tmp_path, medium_hub.endpoint)
    medium_hub.stall(after=CHUNK + 500_000, files="model.safetensors")
    proc = start("pull", REPO, env=env)
    try:
        assert medium_hub.stalled.wait(120), "the download never reached the stall"
        wait_for(lambda: any(p.stat().st_size >= CHUNK for p in incomplete_blobs(tmp_path)), 30, "the first block")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        reap(proc, medium_hub)
    one_error(
        SimpleNamespace(returncode=proc.returncode, stderr=stderr),
        EXIT_INTERRUPTED,
        "interrupted while downloading",
        "run the same command again to resume",
    )
    assert store_entries(tmp_path) == []

    ranges_before = len(medium_hub.range_requests)
    done = qasr("pull", REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r for _, r in medium_hub.range_requests[ranges_before:]] == [f"bytes={CHUNK}-"]
    size = (medium_checkpoint / "model.safetensors").stat().st_size
    assert medium_hub.bytes_by_file[f"{REPO}/model.safetensors"] < 1.5 * size


# --- full disks ----------------------------------------------------------------------------------------------


def test_a_download_that_cannot_fit_is_refused_before_it_starts(hub, small_fs, tmp_path):
    hf = small_fs("hf", "400k")
    proc = qasr("pull", REPO, env=make_env(tmp_path, hub.endpoint, HF_HOME=str(hf)))
    one_error(proc, EXIT_DOWNLOAD, "not enough disk space", "MB left to download", "HF_HOME")
    assert store_entries(tmp_path) == []


def test_disk_full_during_the_download(hub, small_fs, tmp_path):
    hf = small_fs("hf", "3m")
    env = make_env(tmp_path, hub.endpoint, HF_HOME=str(hf))
    hub.stall(after=100_000, files="model.safetensors")
    proc = start("pull", REPO, env=env)
    try:
        assert hub.stalled.wait(120), "the download never reached the stall"
        fill(hf)  # another program takes the rest of the disk while the weights are on their way
        hub.release()
        _, stderr = proc.communicate(timeout=120)
    finally:
        reap(proc, hub)
    one_error(
        SimpleNamespace(returncode=proc.returncode, stderr=stderr),
        EXIT_DOWNLOAD,
        "no space left",
        str(hf),
        "HF_HOME",
        "resume",
    )
    assert store_entries(tmp_path) == []


def test_a_conversion_that_cannot_fit_is_refused_before_it_starts(pulled, small_fs, tmp_path):
    data = small_fs("data", "600k")
    env = pulled.env | {"XDG_DATA_HOME": str(data)}
    proc = qasr("pull", REPO, env=env)
    one_error(proc, EXIT_USAGE, "not enough disk space to convert", "XDG_DATA_HOME", "the next run only converts")
    assert entries(data / "qasr-live" / "models") == []


def test_disk_full_during_the_conversion(pulled, small_fs, tmp_path):
    data = small_fs("data", "8m")
    env = pulled.env | {"XDG_DATA_HOME": str(data)}
    root = data / "qasr-live" / "models"
    proc = start("pull", REPO, env=env)
    try:
        wait_for(lambda: root.is_dir() and any(p.name.startswith(".") for p in root.iterdir()), 120, "the export")
        fill(data)  # the disk fills up while the exporter writes
        _, stderr = proc.communicate(timeout=300)
    finally:
        reap(proc)
    one_error(
        SimpleNamespace(returncode=proc.returncode, stderr=stderr),
        EXIT_USAGE,
        "filled up while converting",
        "nothing was installed",
        "XDG_DATA_HOME",
    )
    assert sorted(os.listdir(root)) == []  # no model, no half model, no hidden work directory


# --- the default question ------------------------------------------------------------------------------------


def run_on_terminal(args: list[str], env: dict[str, str], answer: bytes) -> tuple[int, str, str]:
    """Run with stdin on a pseudo-terminal that has `answer` typed ahead."""
    master, slave = os.openpty()
    try:
        proc = start(*args, env=env, stdin=slave)
        os.close(slave)
        os.write(master, answer)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        os.close(master)
    return proc.returncode, stdout, stderr


def test_the_default_question(pulled, tiny_models, tmp_path, hub):
    data = shutil.copytree(pulled.tmp / "data", tmp_path / "data")
    root = data / "qasr-live" / "models"
    shutil.copytree(tiny_models["untied_gqa"], root / "other")
    env = pulled.env | {"XDG_DATA_HOME": str(data)}
    assert qasr("models", "default", "other", env=env).returncode == 0

    def default() -> str:
        return (root / "default").read_text().strip()

    # not a terminal: another model's default is left alone, and nobody is asked
    script = qasr("pull", REPO, env=env)
    assert script.returncode == 0 and "[Y/n]" not in script.stderr and default() == "other"
    # a terminal: asked; "n" keeps the default, Enter accepts
    code, _, stderr = run_on_terminal(["pull", REPO], env, b"n\n")
    assert code == 0 and f"make {NAME} the default model? [Y/n]" in stderr and default() == "other"
    code, stdout, _ = run_on_terminal(["pull", REPO], env, b"\n")
    assert code == 0 and default() == NAME and "is the default model" in stdout
    # the options decide without asking
    code, _, stderr = run_on_terminal(["pull", REPO, "--default"], env | {"XDG_DATA_HOME": str(data)}, b"")
    assert code == 0 and "[Y/n]" not in stderr and default() == NAME
    assert qasr("models", "default", "other", env=env).returncode == 0
    code, _, stderr = run_on_terminal(["pull", REPO, "--no-default"], env, b"")
    assert code == 0 and "[Y/n]" not in stderr and default() == "other"


# --- the store: models, remove, default, model.name ----------------------------------------------------------


@pytest.fixture
def store(tiny_models, tmp_path, monkeypatch):
    """Two installed models (exports of the tiny checkpoints) in a fresh user's models directory."""
    root = models_dir(tmp_path)
    root.mkdir(parents=True)
    for name, model in (("alpha", tiny_models["tied"]), ("beta", tiny_models["untied_gqa"])):
        shutil.copytree(model, root / name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return SimpleNamespace(root=root, env=make_env(tmp_path, dead_endpoint()), tmp=tmp_path)


def test_models_list_default_and_remove(store):
    env = store.env
    listing = qasr("models", env=env)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[1:] if line.split()[0] in ("alpha", "beta")}
    assert set(rows) == {"alpha", "beta"}
    assert "f32,f16,q8_0" in rows["alpha"] and "local checkpoint" in rows["alpha"]
    assert "no default model" in listing.stdout

    assert qasr("models", "default", "beta", env=env).returncode == 0
    assert (store.root / "default").read_text() == "beta\n"
    beta_row = next(line for line in qasr("models", env=env).stdout.splitlines() if " beta " in line)
    assert beta_row.startswith("*")

    removed = qasr("models", "remove", "beta", env=env)
    assert removed.returncode == 0 and "it was the default" in removed.stdout
    assert sorted(os.listdir(store.root)) == ["alpha"]  # the model, its default, no hidden trash

    one_error(qasr("models", "remove", "beta", env=env), EXIT_MODEL, "'beta'", "installed: alpha", "qasr-live pull")
    one_error(qasr("models", "default", "gamma", env=env), EXIT_MODEL, "'gamma'", "installed: alpha")
    one_error(qasr("models", "remove", "../alpha", env=env), EXIT_USAGE, "invalid model name")
    assert (store.root / "alpha" / "manifest.json").exists()


def test_a_broken_model_is_listed_and_removable(store):
    (store.root / "alpha" / "manifest.json").unlink()
    listing = qasr("models", env=store.env)
    row = next(line for line in listing.stdout.splitlines() if "alpha" in line)
    assert "BROKEN" in row and "no manifest.json" in row
    assert qasr("models", "remove", "alpha", env=store.env).returncode == 0
    assert sorted(os.listdir(store.root)) == ["beta"]


def test_resolution_order(store):
    alpha, beta = store.root / "alpha", store.root / "beta"
    assert resolve_model(AppConfig()).path == DEMO_MODEL
    (store.root / "default").write_text("alpha\n")
    assert resolve_model(AppConfig()).path == alpha
    assert resolve_model(AppConfig(model=ModelConfig(name="beta"))).path == beta
    assert resolve_model(AppConfig(model=ModelConfig(name="beta", dir=str(alpha)))).path == alpha
    (store.root / "default").write_text("gone\n")
    with pytest.raises(ModelError, match=r"names 'gone'.*installed: alpha, beta"):
        resolve_model(AppConfig())
    with pytest.raises(ConfigError, match="invalid model name"):
        resolve_model(AppConfig(model=ModelConfig(name="../beta")))


def test_model_name_in_config(store):
    config = store.tmp / "config.yaml"
    config.write_text(TRANSCRIBE_CONFIG + "model:\n  name: beta\n")
    done = qasr("transcribe", SAMPLE, "--config", config, env=store.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^  model +beta \(", done.stderr, re.M), done.stderr
    # --model DIR wins over model.name
    done = qasr("transcribe", SAMPLE, "--config", config, "--model", store.root / "alpha", env=store.env)
    assert done.returncode == 0 and re.search(r"^  model +alpha \(", done.stderr, re.M), done.stderr

    config.write_text("model:\n  name: nope\n")
    proc = qasr("transcribe", SAMPLE, "--config", config, env=store.env)
    one_error(proc, EXIT_MODEL, "model.name", "'nope'", "installed: alpha, beta", "qasr-live pull")


def test_pull_installs_an_aligner_without_taking_the_default(hub, tmp_path):
    """A Qwen3-ForcedAligner pulls like a recognizer, and is named for model.aligner, never made the default."""
    env = make_env(tmp_path, hub.endpoint)
    proc = qasr("pull", "Qwen/Qwen3-ForcedAligner-0.6B", "--precision", "fp32/f16", env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = manifest(models_dir(tmp_path) / "qwen3-forcedaligner-0.6b")
    assert m["kind"] == "qwen3-forced-aligner" and "classifier.f32.npy" in m["files"]
    assert "default" not in store_entries(tmp_path)
    assert "model.aligner: qwen3-forcedaligner-0.6b" in proc.stdout
    assert "is the default model" not in proc.stdout
    again = qasr("pull", "Qwen/Qwen3-ForcedAligner-0.6B", "--precision", "fp32/f16", "--default", env=env)
    assert again.returncode == 0 and "--default ignored" in again.stderr
    assert "default" not in store_entries(tmp_path)
