"""The user's road on a stock Debian/Ubuntu Python, from a fresh clone: the README's main command
(`bash scripts/demo.sh`) on the distro's own, externally managed (PEP 668) `/usr/bin/python3` installs the runtime
into `.venv` without torch and transcribes; the runtime alone exports a checkpoint; `pipx install .` gives a
working `qasr-live`. (The README's test command runs on that interpreter in CI: `.ci/run`.)

The installs download from PyPI; llama-cpp-python's wheel comes from pip's cache, which the suite's own install
filled (building it again would take 5 minutes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DISTRO_PYTHON = Path("/usr/bin/python3")
SAMPLE = ROOT / "qasr_live" / "models" / "demo" / "sample.wav"
# What the runtime must never pull in (the dev extras and what they drag along).
DEV_ONLY = ("torch", "transformers", "qwen_asr", "onnxscript", "matplotlib", "pytest")
RUNTIME_VENV_LIMIT_MB = 400

pytestmark = pytest.mark.skipif(not DISTRO_PYTHON.exists(), reason="no distro Python at /usr/bin/python3")


def _pip_cache() -> str:
    return os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")


def _wheel_cache() -> Path:
    """Where install.sh keeps its llama-cpp-python builds (the suite's own install made one)."""
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("QASR_WHEEL_CACHE") or Path(xdg) / "qasr-live" / "wheels")


def _llama_wheel_dirs() -> str:
    dirs = [str(d) for d in sorted(_wheel_cache().glob("llama-cpp-python-*")) if not d.name.endswith(".partial")]
    assert dirs, f"no llama-cpp-python build in {_wheel_cache()}: run scripts/install.sh first"
    return " ".join(dirs)


def _user_env(home: Path) -> dict[str, str]:
    """A new user: own home and XDG directories (no config, no models), the distro Python first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QASR_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CACHE_HOME=str(home / ".cache"),
        PIP_CACHE_DIR=_pip_cache(),
        QASR_WHEEL_CACHE=str(_wheel_cache()),
        PATH=f"/usr/bin:/bin:{env.get('PATH', '')}",
    )
    return env


def _run(
    cmd: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Path:
    """A clone of this checkout at its working-tree state (tracked files, uncommitted changes included)."""
    dst = tmp_path_factory.mktemp("clone") / "qasr-live"
    identity = {f"GIT_{who}_{what}": "qasr-live tests" for who in ("AUTHOR", "COMMITTER") for what in ("NAME", "EMAIL")}
    snapshot = subprocess.run(
        ["git", "stash", "create"], cwd=ROOT, capture_output=True, text=True, check=True, env=os.environ | identity
    )
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dst)], check=True)
    if snapshot.stdout.strip():  # a commit object of the uncommitted state, reachable from the clone's source
        subprocess.run(["git", "-C", str(dst), "fetch", "-q", str(ROOT), snapshot.stdout.strip()], check=True)
        subprocess.run(["git", "-C", str(dst), "checkout", "-q", "FETCH_HEAD"], check=True)
    return dst


@pytest.fixture(scope="module")
def user_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def demo_run(fresh_clone, user_home) -> subprocess.CompletedProcess:
    env = _user_env(user_home) | {"PYTHON": str(DISTRO_PYTHON)}
    return _run(["bash", "scripts/demo.sh"], env, cwd=fresh_clone)


def _externally_managed(python: Path) -> bool:
    stdlib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return (Path(stdlib) / "EXTERNALLY-MANAGED").exists()


def test_demo_sh_on_the_distro_python(demo_run, fresh_clone, user_home):
    assert demo_run.returncode == 0, demo_run.stderr[-3000:]
    venv = fresh_clone / ".venv"
    # the venv was made from the distro interpreter, which stayed untouched
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in cfg, cfg
    if _externally_managed(DISTRO_PYTHON):  # Debian/Ubuntu: a global pip install is refused, so only a venv works
        refused = _run([str(DISTRO_PYTHON), "-m", "pip", "install", "--dry-run", "six"], _user_env(user_home))
        assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr
    # the same transcript as this suite's own installation gives on the embedded demo model
    here = subprocess.run(
        [sys.executable, "-m", "qasr_live", "transcribe", str(SAMPLE), "--format", "txt"],
        capture_output=True,
        text=True,
        env=_user_env(user_home) | {"PATH": os.environ["PATH"]},
    )
    assert here.returncode == 0, here.stderr
    assert demo_run.stdout.strip() and demo_run.stdout.strip() == here.stdout.strip()
    # the road to real weights is shown
    assert "qasr-live pull Qwen/Qwen3-ASR-0.6B" in demo_run.stderr
    assert "qasr-live serve" in demo_run.stderr


def test_runtime_venv_has_no_dev_packages_and_stays_small(demo_run, fresh_clone, report):
    assert demo_run.returncode == 0, demo_run.stderr[-3000:]
    python = fresh_clone / ".venv" / "bin" / "python"
    found = subprocess.run(
        [str(python), "-c", f"import importlib.util as u; print(' '.join(m for m in {DEV_ONLY!r} if u.find_spec(m)))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert found == [], f"the runtime venv has dev-only packages: {found}"
    size_mb = sum(f.stat().st_size for f in (fresh_clone / ".venv").rglob("*") if f.is_file() and not f.is_symlink())
    size_mb //= 1 << 20
    report(f"install: runtime venv of demo.sh on {DISTRO_PYTHON}: {size_mb} MiB (limit {RUNTIME_VENV_LIMIT_MB})")
    assert size_mb <= RUNTIME_VENV_LIMIT_MB, f"runtime venv is {size_mb} MB"


def test_demo_sh_again_installs_nothing(demo_run, fresh_clone, user_home):
    assert demo_run.returncode == 0, demo_run.stderr[-3000:]
    env = _user_env(user_home) | {"PYTHON": str(DISTRO_PYTHON)}
    again = _run(["bash", "scripts/demo.sh"], env, cwd=fresh_clone)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "pip install" not in again.stderr and again.stdout == demo_run.stdout


def test_runtime_venv_exports_and_transcribes_without_torch(demo_run, fresh_clone, tiny_checkpoints, tmp_path):
    """The torch-free exporter with exactly the runtime's dependencies: what `qasr-live pull` runs."""
    assert demo_run.returncode == 0, demo_run.stderr[-3000:]
    cli = str(fresh_clone / ".venv" / "bin" / "qasr-live")
    out = tmp_path / "model"
    env = _user_env(tmp_path / "home")
    exported = _run(
        [cli, "export", str(tiny_checkpoints["untied_gqa"]), str(out), "--encoder", "int8", "--decoder", "q8_0"], env
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (out / "manifest.json").is_file()
    transcribed = _run(
        [cli, "transcribe", str(SAMPLE), "--model", str(out), "--format", "json", "--out-dir", str(tmp_path / "out")],
        env,
    )
    assert transcribed.returncode == 0, transcribed.stderr[-3000:]
    assert (tmp_path / "out" / "sample.json").is_file()


def test_install_service_points_at_the_venv(demo_run, fresh_clone, tmp_path):
    assert demo_run.returncode == 0, demo_run.stderr[-3000:]
    env = _user_env(tmp_path / "home")
    done = _run([str(fresh_clone / ".venv" / "bin" / "qasr-live"), "install-service", "--no-enable"], env)
    assert done.returncode == 0, done.stderr
    unit = (tmp_path / "home" / ".config" / "systemd" / "user" / "qasr-live.service").read_text()
    assert f"ExecStart={fresh_clone / '.venv' / 'bin' / 'python'} -m qasr_live" in unit, unit


@pytest.mark.parametrize("tool", ["pipx", "uv"])
def test_tool_install_gives_a_working_command(fresh_clone, tmp_path, tool):
    """`pipx install .` and `uv tool install .`: a user-wide `qasr-live` for dictation and pull, in its own venv.
    Both take llama-cpp-python from install.sh's build (the wheel a user gets by running install.sh once, or
    builds themselves); everything else comes from PyPI."""
    found = shutil.which(tool, path=f"{Path(sys.executable).parent}:/usr/bin:{os.environ.get('PATH', '')}")
    assert found, f"{tool} is missing: scripts/install.sh installs it (pipx: apt, uv: the dev extra)"
    bin_dir = tmp_path / "bin"
    env = _user_env(tmp_path / "home") | {
        "PIPX_HOME": str(tmp_path / "pipx"),
        "PIPX_BIN_DIR": str(bin_dir),
        "PIP_FIND_LINKS": f"{os.environ.get('PIP_FIND_LINKS', '')} {_llama_wheel_dirs()}".strip(),
        "UV_TOOL_DIR": str(tmp_path / "uv-tools"),
        "UV_TOOL_BIN_DIR": str(bin_dir),
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "UV_FIND_LINKS": _llama_wheel_dirs().replace(" ", ","),
        "UV_PYTHON_DOWNLOADS": "never",
    }
    command = [found, "install", str(fresh_clone)]
    if tool == "uv":
        command = [found, "tool", "install", "--python", str(DISTRO_PYTHON), str(fresh_clone)]
    installed = _run(command, env)
    assert installed.returncode == 0, installed.stderr[-3000:]
    cli = str(bin_dir / "qasr-live")
    transcribed = _run([cli, "transcribe", str(SAMPLE), "--format", "txt"], env)
    assert transcribed.returncode == 0 and transcribed.stdout.strip(), transcribed.stderr[-3000:]
    for sub in ("pull", "models", "doctor"):
        helped = _run([cli, sub, "--help"], env)
        assert helped.returncode == 0, f"{sub}: {helped.stderr}"
