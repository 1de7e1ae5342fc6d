"""Bad input everywhere: every failure a user can cause is a QasrError whose message names the problem and the
fix, the CLI reports it in one line with the exit status of its class (2 for usage, 3 for the model), and nothing
is left half-written.

Model directories are private copies of the session's exported tiny model, damaged one way per test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

import qasr_live.export.decoder_gguf
import qasr_live.export.encoder_graph
from qasr_live.engine.decoder import Decoder
from qasr_live.engine.encoder import AudioEncoder
from qasr_live.engine.model_dir import MANIFEST, decoder_file, encoder_file, open_model_dir, sha256_file
from qasr_live.errors import EXIT_MODEL, EXIT_USAGE, AudioError, DecoderError, ExportError, ModelError
from qasr_live.export.exporter import export_checkpoint
from qasr_live.offline.pipeline import check_audio

MODEL = "tied"
# What "auto" picks from the tiny model (encoders fp32,int8; decoders f32,f16,q8_0): the files a run opens.
ENC, DEC = "int8", "q8_0"
CHOSEN = [encoder_file("frontend", ENC), encoder_file("backend", ENC), decoder_file(DEC)]
EXPORT_FIX = "qasr-live export"


# --------------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def model(tiny_models, tmp_path) -> Path:
    """A private copy of the exported tiny model, free to damage."""
    return Path(shutil.copytree(tiny_models[MODEL], tmp_path / "model"))


def edit_manifest(model: Path, edit: Callable[[dict], object]) -> None:
    path = model / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    edit(manifest)
    path.write_text(json.dumps(manifest), encoding="utf-8")


def replace_consistently(model: Path, name: str, data: bytes) -> None:
    """Overwrite a model file and make its manifest entry agree, so that only the content itself is bad."""
    (model / name).write_bytes(data)
    edit_manifest(model, lambda m: m["files"][name].update(size=len(data), sha256=hashlib.sha256(data).hexdigest()))


def garbage(n: int = 4096) -> bytes:
    return np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()


def assert_names(message: str, *parts: str) -> None:
    for part in parts:
        assert part in message, f"{part!r} is not in the message: {message}"


def snapshot(directory: Path) -> dict[str, str]:
    """name -> sha256 of every file in `directory`."""
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()}


def export(src: Path, out: Path, **options) -> Path:
    return export_checkpoint(src, out, progress=lambda _line: None, **options)


def leftovers(out: Path) -> list[str]:
    """The exporter's hidden work directories (`.OUT.partial-PID`, `.OUT.old-PID`) left beside `out`."""
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


# ------------------------------------------------------------------------------------------ model directory


def test_intact_copy_opens(model):
    """Guards every test below: the undamaged copy opens, with the files the damage targets."""
    opened = open_model_dir(model)
    assert (opened.encoder_precision, opened.decoder_precision) == (ENC, DEC)
    assert [opened.frontend.name, opened.backend.name, opened.decoder.name] == CHOSEN


def _plain_file(model: Path) -> Path:
    (model / "notes.txt").write_text("not a model")
    return model / "notes.txt"


def _corrupt_json(model: Path) -> None:
    (model / MANIFEST).write_text('{"format_version": 1, "files": {', encoding="utf-8")


def _dims_mismatch(manifest: dict) -> None:
    manifest["dims"]["encoder_output_dim"] = manifest["dims"]["decoder_hidden"] + 8


@pytest.mark.parametrize(
    ("damage", "parts"),
    [
        pytest.param(shutil.rmtree, ["does not exist", "model.dir", EXPORT_FIX], id="dir-missing"),
        pytest.param(_plain_file, ["notes.txt", "is not a directory", "model.dir", EXPORT_FIX], id="dir-is-file"),
        pytest.param(lambda m: (m / MANIFEST).unlink(), [f"no {MANIFEST}", EXPORT_FIX], id="no-manifest"),
        pytest.param(_corrupt_json, [MANIFEST, "corrupt", EXPORT_FIX], id="manifest-bad-json"),
        pytest.param(lambda m: (m / MANIFEST).write_text("[1]"), [MANIFEST, "corrupt", EXPORT_FIX], id="manifest-list"),
        pytest.param(
            lambda m: edit_manifest(m, lambda d: d.update(format_version=99)),
            [MANIFEST, "unknown format_version 99", "reads version 1", EXPORT_FIX],
            id="format-version",
        ),
        pytest.param(
            lambda m: edit_manifest(m, lambda d: d["files"][decoder_file(DEC)].pop("sha256")),
            [MANIFEST, decoder_file(DEC), "lacks sha256", EXPORT_FIX],
            id="entry-lacks-key",
        ),
        pytest.param(
            lambda m: edit_manifest(m, lambda d: d.pop("dims")),
            [MANIFEST, "dims", "encoder_output_dim", EXPORT_FIX],
            id="no-dims",
        ),
        pytest.param(
            lambda m: edit_manifest(m, _dims_mismatch),
            [MANIFEST, "encoder_output_dim", "decoder_hidden", "different models", EXPORT_FIX],
            id="dims-mismatch",
        ),
    ],
)
def test_bad_model_dir(model, damage, parts):
    """`damage(model)` breaks the copy; it returns the path to open instead of the copy where that differs."""
    target = damage(model)
    target = target if isinstance(target, Path) else model
    with pytest.raises(ModelError) as err:
        open_model_dir(target)
    assert_names(str(err.value), str(target), *parts)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", CHOSEN)
@pytest.mark.parametrize(
    ("damage", "parts"),
    [
        pytest.param(Path.unlink, ["is missing", "listed in the manifest"], id="missing"),
        pytest.param(_truncate, ["bytes, the manifest says", "truncated"], id="truncated"),
        pytest.param(_flip_bytes, ["sha256", "corrupt"], id="same-size-corrupt"),
    ],
)
def test_damaged_model_file(model, name, damage, parts):
    size = (model / name).stat().st_size
    damage(model / name)
    if damage is _flip_bytes:
        assert (model / name).stat().st_size == size  # only the checksum can tell
    with pytest.raises(ModelError) as err:
        open_model_dir(model)
    assert_names(str(err.value), str(model / name), *parts, f"qasr-live export SRC {model} --force")


@pytest.mark.parametrize(
    ("option", "wanted", "available", "key"),
    [
        ("decoder_precision", "q4_k", "f16, f32, q8_0", "model.decoder_precision"),
        ("encoder_precision", "int4", "fp32, int8", "model.encoder_precision"),
    ],
)
def test_precision_not_in_model(model, option, wanted, available, key):
    with pytest.raises(ModelError) as err:
        open_model_dir(model, **{option: wanted})
    flag = "--" + option.removesuffix("_precision")
    assert_names(str(err.value), repr(wanted), f"it has: {available}", key, "'auto'", f"{flag} {wanted}")


@pytest.mark.parametrize(
    "content",
    [pytest.param(lambda _data: garbage(), id="garbage"), pytest.param(lambda d: d[: len(d) // 2], id="truncated")],
)
def test_unloadable_gguf_passes_manifest_but_decoder_refuses(model, content):
    name = decoder_file(DEC)
    replace_consistently(model, name, content((model / name).read_bytes()))
    opened = open_model_dir(model)  # sizes and checksums agree: only llama.cpp can tell
    with pytest.raises(DecoderError) as err:
        Decoder(opened.decoder, n_ctx=256)
    assert_names(str(err.value), name, "cannot load", "corrupt", "re-export", EXPORT_FIX)


def test_intact_gguf_loads(model):
    """Guards the test above: the copied GGUF itself loads."""
    with Decoder(open_model_dir(model).decoder, n_ctx=256) as decoder:
        assert decoder.n_vocab > 0


@pytest.mark.parametrize("part", ["frontend", "backend"])
def test_unloadable_onnx_passes_manifest_but_encoder_refuses(model, part):
    replace_consistently(model, encoder_file(part, ENC), garbage())
    opened = open_model_dir(model)
    AudioEncoder(model / encoder_file("frontend", "fp32"), model / encoder_file("backend", "fp32"))  # intact ones load
    with pytest.raises(ModelError) as err:
        AudioEncoder(opened.frontend, opened.backend)
    assert_names(str(err.value), encoder_file(part, ENC), "cannot load the ONNX encoder", "Re-export", EXPORT_FIX)


# ------------------------------------------------------------------------------------------------- exporter


def _write_config(config: dict | str) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        src = tmp_path / "checkpoint"
        src.mkdir()
        (src / "config.json").write_text(json.dumps(config) if isinstance(config, dict) else config)
        return src

    return make


def _empty_dir(tmp_path: Path) -> Path:
    (tmp_path / "checkpoint").mkdir()
    return tmp_path / "checkpoint"


@pytest.mark.parametrize(
    ("make_src", "parts"),
    [
        pytest.param(
            lambda t: t / "nowhere", ["nowhere", "is not a directory", "huggingface-cli download"], id="no-src"
        ),
        pytest.param(_empty_dir, ["no config.json", "huggingface-cli download"], id="no-config"),
        pytest.param(_write_config("{oops"), ["config.json", "not valid JSON", "download"], id="bad-json"),
        pytest.param(
            _write_config({"model_type": "whisper"}),
            ["config.json", "`thinker_config`", "'whisper'", "Qwen/Qwen3-ASR-0.6B"],
            id="no-thinker-config",
        ),
    ],
)
def test_export_bad_source(tmp_path, make_src, parts):
    out = tmp_path / "out" / "model"
    with pytest.raises(ExportError) as err:
        export(make_src(tmp_path), out)
    assert_names(str(err.value), *parts)
    assert not out.parent.exists()


@pytest.mark.parametrize(
    ("option", "value", "parts"),
    [
        ("decoders", ["f16", "q3"], ["--decoder", "unknown precision q3", "f32, f16, q8_0, q4_k"]),
        ("encoders", ["int3"], ["--encoder", "unknown precision int3", "fp32, int8, int4"]),
    ],
)
def test_export_unknown_precision(tiny_checkpoints, tmp_path, option, value, parts):
    out = tmp_path / "model"
    with pytest.raises(ExportError) as err:
        export(tiny_checkpoints[MODEL], out, **{option: value})
    assert_names(str(err.value), *parts)
    assert not out.exists()


def test_export_refuses_existing_out_without_force(tiny_checkpoints, model):
    before = snapshot(model)
    with pytest.raises(ExportError) as err:
        export(tiny_checkpoints[MODEL], model)
    assert_names(str(err.value), str(model), "already exists", "--force")
    assert snapshot(model) == before


def interrupt_after(monkeypatch, module, name: str, exc: type[BaseException]) -> dict:
    """Make `module.name` (an export step writing into the partial directory, path first) do its work and then
    raise `exc`; returns what the partial directory held at that moment."""
    real, seen = getattr(module, name), {}

    def step(path, *args, **kwargs):
        real(path, *args, **kwargs)
        partial = Path(path).parent
        seen.update(partial=partial, files=sorted(os.listdir(partial)))
        raise exc(f"interrupted in {name}")

    monkeypatch.setattr(module, name, step)
    return seen


STEPS = [
    pytest.param(qasr_live.export.encoder_graph, "quantize_int8", id="in-encoder-int8"),
    pytest.param(qasr_live.export.decoder_gguf, "write_gguf", id="in-decoder"),
]
INTERRUPTIONS = [pytest.param(KeyboardInterrupt, id="ctrl-c"), pytest.param(RuntimeError, id="error")]


@pytest.mark.parametrize(("module", "name"), STEPS)
@pytest.mark.parametrize("exc", INTERRUPTIONS)
def test_interrupted_export_leaves_nothing(tiny_checkpoints, tmp_path, monkeypatch, module, name, exc):
    out = tmp_path / "model"
    seen = interrupt_after(monkeypatch, module, name, exc)
    with pytest.raises(exc):
        export(tiny_checkpoints[MODEL], out, encoders=["fp32", "int8"], decoders=["f16"])
    assert seen["partial"].name.startswith(f".{out.name}.partial-")
    assert seen["files"], "the step ran before any file was written: the test proves nothing"
    assert not out.exists()
    assert leftovers(out) == []


@pytest.mark.parametrize(("module", "name"), STEPS)
@pytest.mark.parametrize("exc", INTERRUPTIONS)
def test_failed_forced_export_keeps_old_model(tiny_checkpoints, model, monkeypatch, module, name, exc):
    before = snapshot(model)
    interrupt_after(monkeypatch, module, name, exc)
    with pytest.raises(exc):
        export(tiny_checkpoints["untied_gqa"], model, encoders=["fp32", "int8"], decoders=["f16"], force=True)
    assert snapshot(model) == before
    assert leftovers(model) == []
    open_model_dir(model)


@pytest.mark.parametrize(
    "exc", [pytest.param(OSError, id="rename-fails"), pytest.param(KeyboardInterrupt, id="ctrl-c")]
)
def test_failed_final_rename_keeps_old_model(tiny_checkpoints, model, monkeypatch, exc):
    """The last step swaps the finished directory in; if that rename fails, the old model is put back."""
    before, real_replace = snapshot(model), os.replace

    def replace(src, dst):
        if ".partial-" in Path(src).name:
            raise exc("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(exc):
        export(tiny_checkpoints["untied_gqa"], model, encoders=["fp32"], decoders=["f16"], force=True)
    assert snapshot(model) == before
    assert leftovers(model) == []


def test_forced_export_replaces_old_model(tiny_checkpoints, model):
    """Guards the two tests above: with nothing failing, --force does replace the model, leaving nothing else."""
    export(tiny_checkpoints["untied_gqa"], model, encoders=["fp32"], decoders=["f16"], force=True)
    opened = open_model_dir(model)
    assert opened.manifest["source"]["name"] == "untied_gqa"
    assert sorted(p.name for p in model.iterdir()) == sorted([MANIFEST, *opened.manifest["files"]])
    assert leftovers(model) == []


# ---------------------------------------------------------------------------------------------------- audio


def test_check_audio_accepts_good_audio():
    audio = np.linspace(-0.5, 0.5, 16000)
    checked = check_audio(audio)
    assert checked.dtype == np.float32 and checked.shape == (16000,)


def _nan_audio() -> np.ndarray:
    audio = np.zeros(32000, dtype=np.float32)
    audio[8000:8003] = np.nan
    audio[20000] = np.inf
    return audio


@pytest.mark.parametrize(
    ("audio", "parts"),
    [
        pytest.param(np.zeros(0, np.float32), ["empty", "0 samples", "not empty"], id="empty"),
        pytest.param(_nan_audio(), ["4 NaN/infinite samples", "first at 0.500 s", "re-record"], id="nan"),
        pytest.param(np.zeros((16000, 2), np.float32), ["mono", "(16000, 2)", "average the channels"], id="2d"),
    ],
)
def test_check_audio_rejects(audio, parts):
    with pytest.raises(AudioError) as err:
        check_audio(audio)
    assert_names(str(err.value), *parts)


# ------------------------------------------------------------------------------------------ CLI, end to end


def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "qasr_live", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)


def assert_user_error(proc: subprocess.CompletedProcess, *parts: str, code: int = EXIT_USAGE) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("qasr-live: error: ")]
    assert len(errors) == 1, proc.stderr
    assert_names(errors[0], *parts)
    assert proc.stdout == ""


def _wav(name: str, samples: np.ndarray) -> Callable[[Path], Path]:
    def make(audio_dir: Path) -> Path:
        wavfile.write(audio_dir / name, 16000, samples)
        return audio_dir / name

    return make


def _raw(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(audio_dir: Path) -> Path:
        (audio_dir / name).write_bytes(data)
        return audio_dir / name

    return make


def _nan_wav() -> np.ndarray:
    audio = np.full(16000, 0.1, dtype=np.float32)
    audio[4000] = np.nan
    return audio


GOOD_WAV = _wav("good.wav", (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32))


@pytest.fixture
def cli_case(model, tmp_path):
    """Runs `qasr-live transcribe AUDIO --model MODEL ... EXTRA` asking for every output format; returns
    (process, audio dir listing before, after, out dir)."""
    audio_dir, out_dir = tmp_path / "audio", tmp_path / "out"
    audio_dir.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text("engine:\n  max_new_tokens: 4\n")

    def run(make_audio: Callable[[Path], Path], *extra: str, model_dir: Path = model):
        audio = make_audio(audio_dir)
        before = sorted(os.listdir(audio_dir))
        proc = run_cli(
            "transcribe",
            audio,
            "--model",
            model_dir,
            "--config",
            config,
            "--format",
            "txt,srt,json",
            "--out-dir",
            out_dir,
            "-q",
            *extra,
            cwd=tmp_path,
        )
        written = sorted(os.listdir(out_dir)) if out_dir.exists() else []
        return proc, before, sorted(os.listdir(audio_dir)), written

    return run


def test_cli_good_input_writes_outputs(cli_case):
    """Guards the cases below: with good input the same command succeeds and does write files."""
    proc, before, after, written = cli_case(GOOD_WAV)
    assert proc.returncode == 0, proc.stderr
    assert written == ["good.json", "good.srt", "good.txt"]
    assert before == after


@pytest.mark.parametrize(
    ("make_audio", "extra", "parts"),
    [
        pytest.param(lambda d: d / "nope.wav", [], ["nope.wav", "no such file"], id="missing-file"),
        pytest.param(lambda d: Path(d), [], ["audio", "is a directory"], id="directory"),
        pytest.param(_raw("zero.wav", b""), [], ["zero.wav", "empty (0 bytes)"], id="zero-bytes"),
        pytest.param(_raw("x.xyz", garbage()), [], ["x.xyz", "ffmpeg", "convert", "WAV"], id="undecodable"),
        pytest.param(
            _wav("empty.wav", np.zeros(0, np.float32)), [], ["empty.wav", "no audio", "0 samples"], id="empty-wav"
        ),
        pytest.param(_wav("nan.wav", _nan_wav()), [], ["nan.wav", "1 sample(s) are NaN", "0.250 s"], id="nan-wav"),
        pytest.param(GOOD_WAV, ["--language", "Klingon"], ["--language", "'Klingon'", "English"], id="language"),
        pytest.param(
            GOOD_WAV, ["--format", "docx"], ["--format", "unknown format docx", "txt, srt, vtt, json"], id="format"
        ),
    ],
)
def test_cli_bad_input(cli_case, make_audio, extra, parts):
    proc, before, after, written = cli_case(make_audio, *extra)
    assert_user_error(proc, *parts)
    assert written == []
    assert after == before


@pytest.mark.parametrize(
    ("damage", "parts"),
    [
        pytest.param(shutil.rmtree, ["does not exist", "model.dir"], id="missing-model"),
        pytest.param(lambda m: _truncate(m / decoder_file(DEC)), [decoder_file(DEC), "truncated"], id="truncated"),
        pytest.param(
            lambda m: edit_manifest(m, lambda d: d.update(format_version=2)), ["format_version 2"], id="version"
        ),
    ],
)
def test_cli_bad_model(cli_case, model, damage, parts):
    damage(model)
    proc, _, _, written = cli_case(GOOD_WAV)
    assert_user_error(proc, str(model), *parts, EXPORT_FIX, code=EXIT_MODEL)
    assert written == []


@pytest.mark.parametrize(
    ("extra", "parts"),
    [
        pytest.param(["--decoder", "q3"], ["--decoder", "unknown precision q3"], id="precision"),
        pytest.param(["--encoder", "fp32,int9"], ["--encoder", "unknown precision int9"], id="encoder-precision"),
    ],
)
def test_cli_export_bad_option(tiny_checkpoints, tmp_path, extra, parts):
    out = tmp_path / "model"
    proc = run_cli("export", tiny_checkpoints[MODEL], out, *extra, cwd=tmp_path)
    assert_user_error(proc, *parts)
    assert not out.exists() and leftovers(out) == []


def test_cli_export_existing_out(tiny_checkpoints, model, tmp_path):
    before = snapshot(model)
    proc = run_cli("export", tiny_checkpoints[MODEL], model, cwd=tmp_path)
    assert_user_error(proc, str(model), "already exists", "--force")
    assert snapshot(model) == before


def test_export_removes_partial_dirs_of_killed_exports(tiny_checkpoints, tmp_path):
    """An export killed with SIGKILL leaves `.OUT.partial-PID`; the next export of OUT removes it."""
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".model.partial-{dead.pid}"
    (stale / "sub").mkdir(parents=True)
    alive = tmp_path / f".model.partial-{os.getppid()}"  # a live process's export is left alone
    alive.mkdir()
    export_checkpoint(
        tiny_checkpoints["tied"], tmp_path / "model", encoders=["fp32"], decoders=["f32"], progress=lambda _l: None
    )
    assert not stale.exists() and alive.exists()
