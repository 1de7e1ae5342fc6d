"""The typed configuration layer: defaults, shipped config.yaml, search order, strict errors, overrides."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import yaml

from qasr_live.config import (
    SUPPORTED_LANGUAGES,
    AppConfig,
    EngineConfig,
    ModelConfig,
    RecognitionConfig,
    config_keys,
)
from qasr_live.config_file import default_config_path, load_config, parse_config, with_overrides
from qasr_live.errors import ConfigError, QasrError

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"


def _error(text: str, source: str = "test.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source)
    return str(info.value)


# --- defaults -------------------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = AppConfig()
    assert cfg.model == ModelConfig(dir=None, encoder_precision="auto", decoder_precision="auto")
    assert cfg.engine == EngineConfig(
        encoder_threads=1,
        decoder_threads=2,
        n_gpu_layers=0,
        n_ctx=None,
        n_batch=128,
        segment_seconds=30.0,
        max_new_tokens=512,
        temperature=0.0,
        seed=0,
        repetition_guard=True,
        kv_cache_type="f16",
    )
    assert cfg.recognition == RecognitionConfig(language=None, context="")
    assert isinstance(cfg.engine.segment_seconds, float)


def test_config_is_frozen_and_keyword_only() -> None:
    cfg = AppConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.engine.n_ctx = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        EngineConfig(1)  # type: ignore[misc]


def test_supported_languages() -> None:
    assert len(SUPPORTED_LANGUAGES) == 30
    assert len(set(SUPPORTED_LANGUAGES)) == 30
    assert all(lang == lang.capitalize() for lang in SUPPORTED_LANGUAGES)
    assert {"English", "Chinese", "Cantonese", "Macedonian", "Filipino"} <= set(SUPPORTED_LANGUAGES)


def test_empty_file_and_null_sections_mean_defaults() -> None:
    assert parse_config("", "empty.yaml") == AppConfig()
    assert parse_config("# only a comment\n", "c.yaml") == AppConfig()
    assert parse_config("model:\nengine: null\nrecognition: ~\n", "n.yaml") == AppConfig()


def test_partial_file_keeps_other_defaults() -> None:
    cfg = parse_config("engine:\n  n_ctx: 8192\n  temperature: 1\n", "p.yaml")
    assert cfg.engine.n_ctx == 8192
    assert cfg.engine.temperature == 1.0 and isinstance(cfg.engine.temperature, float)
    assert cfg == dataclasses.replace(
        AppConfig(), engine=dataclasses.replace(EngineConfig(), n_ctx=8192, temperature=1.0)
    )


def test_every_key_is_parsed() -> None:
    text = """
model:
  dir: /models/qwen3-asr
  encoder_precision: int8
  decoder_precision: q4_k
engine:
  encoder_threads: 3
  decoder_threads: 5
  n_gpu_layers: -1
  n_ctx: 2048
  n_batch: 64
  segment_seconds: 12.5
  max_new_tokens: 100
  temperature: 0.7
  seed: -42
  repetition_guard: false
  kv_cache_type: q8_0
recognition:
  language: German
  context: "Kubernetes, Qwen"
"""
    cfg = parse_config(text, "all.yaml")
    assert cfg == AppConfig(
        model=ModelConfig(dir="/models/qwen3-asr", encoder_precision="int8", decoder_precision="q4_k"),
        engine=EngineConfig(
            encoder_threads=3,
            decoder_threads=5,
            n_gpu_layers=-1,
            n_ctx=2048,
            n_batch=64,
            segment_seconds=12.5,
            max_new_tokens=100,
            temperature=0.7,
            seed=-42,
            repetition_guard=False,
            kv_cache_type="q8_0",
        ),
        recognition=RecognitionConfig(language="German", context="Kubernetes, Qwen"),
    )


def test_model_dir_expands_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = parse_config("model:\n  dir: ~/models/q\n", "m.yaml")
    assert cfg.model.dir == str(tmp_path / "models" / "q")


# --- shipped config.yaml --------------------------------------------------------------------------


def test_repo_config_yaml_loads_to_defaults() -> None:
    assert load_config(REPO_CONFIG) == AppConfig()


def test_repo_config_yaml_lists_every_key_with_a_comment() -> None:
    text = REPO_CONFIG.read_text(encoding="utf-8")
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    lines = text.splitlines()
    found = []
    for section_key, section in root.value:
        for key_node, _ in section.value:
            found.append(f"{section_key.value}.{key_node.value}")
            previous = lines[key_node.start_mark.line - 1].strip()
            assert previous.startswith("#"), f"config.yaml: {key_node.value} has no comment above it"
    assert found == list(config_keys())


def test_repo_config_yaml_lists_every_language() -> None:
    text = REPO_CONFIG.read_text(encoding="utf-8")
    for lang in SUPPORTED_LANGUAGES:
        assert lang in text


# --- search order ---------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_search_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_config_path() == xdg / "qasr-live" / "config.yaml"

    # nothing anywhere: built-in defaults
    assert load_config() == AppConfig()

    # the XDG file is used when it exists
    _write(xdg / "qasr-live" / "config.yaml", "engine:\n  n_ctx: 1024\n")
    assert load_config().engine.n_ctx == 1024

    # an explicit path wins over the XDG file
    explicit = _write(tmp_path / "explicit.yaml", "engine:\n  n_ctx: 2048\n")
    assert load_config(explicit).engine.n_ctx == 2048
    assert load_config(str(explicit)).engine.n_ctx == 2048


def test_search_falls_back_to_home_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_config_path() == tmp_path / ".config" / "qasr-live" / "config.yaml"
    _write(tmp_path / ".config" / "qasr-live" / "config.yaml", "recognition:\n  language: french\n")
    assert load_config().recognition.language == "French"


def test_explicit_missing_path_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    _write(tmp_path / "qasr-live" / "config.yaml", "")  # must not be used as a fallback
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        load_config(missing)
    with pytest.raises(ConfigError, match="not a file"):
        load_config(tmp_path)


def test_errors_from_a_file_name_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    bad = _write(tmp_path / "xdg" / "qasr-live" / "config.yaml", "engine:\n  n_ctx: 100\n")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value).startswith(f"{bad}:2: engine.n_ctx:")


# --- errors ---------------------------------------------------------------------------------------


def test_config_error_is_a_qasr_error() -> None:
    assert issubclass(ConfigError, QasrError)


def test_out_of_range_message() -> None:
    text = "# comment\nmodel:\n  dir: null\n\nengine:\n  decoder_threads: 2\n  n_ctx: 100\n"
    message = _error(text, "config.yaml")
    assert message == (
        "config.yaml:7: engine.n_ctx: 100 is below the minimum 512"
        " (context window in tokens; null = sized from the need)"
    )


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("4", "below the minimum 5"), ("300.5", "above the maximum 300"), ("5", None), ("300", None)],
)
def test_float_bounds(value: str, fragment: str | None) -> None:
    text = f"engine:\n  segment_seconds: {value}\n"
    if fragment is None:
        assert parse_config(text, "b.yaml").engine.segment_seconds == float(value)
    else:
        message = _error(text)
        assert message.startswith("test.yaml:2: engine.segment_seconds: ")
        assert fragment in message


@pytest.mark.parametrize(
    ("key", "bad", "good"),
    [
        ("encoder_threads", 0, 1),
        ("decoder_threads", 0, 1),
        ("n_gpu_layers", -2, -1),
        ("n_ctx", 511, 512),
        ("n_batch", 31, 32),
        ("max_new_tokens", 0, 1),
        ("temperature", -0.1, 0),
    ],
)
def test_engine_minimums(key: str, bad: float, good: float) -> None:
    message = _error(f"engine:\n  {key}: {bad}\n")
    assert message.startswith(f"test.yaml:2: engine.{key}: {bad} is below the minimum")
    assert getattr(parse_config(f"engine:\n  {key}: {good}\n", "ok.yaml").engine, key) == good


def test_unknown_key_suggests_closest() -> None:
    message = _error("engine:\n  n_ctx: 4096\n  decoder_thread: 4\n")
    assert message.startswith("test.yaml:3: engine.decoder_thread: unknown key")
    assert "did you mean 'decoder_threads'?" in message


def test_unknown_key_without_close_match_lists_keys() -> None:
    message = _error("recognition:\n  zzzzzz: 1\n")
    assert message.startswith("test.yaml:2: recognition.zzzzzz: unknown key")
    assert "language" in message and "context" in message


def test_unknown_section() -> None:
    message = _error("model:\n  dir: null\nengnie:\n  n_ctx: 4096\n")
    assert message.startswith("test.yaml:3: engnie: unknown section")
    assert "did you mean 'engine'?" in message


def test_wrong_type() -> None:
    message = _error("engine:\n\n  n_ctx: lots\n")
    assert message.startswith("test.yaml:3: engine.n_ctx: expected an integer or null, got a string ('lots')")


def test_float_for_int_is_rejected() -> None:
    message = _error("engine:\n  n_batch: 64.5\n")
    assert message.startswith("test.yaml:2: engine.n_batch: expected an integer")


def test_number_for_string_is_rejected() -> None:
    message = _error("recognition:\n  context: 123\n")
    assert message.startswith("test.yaml:2: recognition.context: expected a string, got an integer")


def test_bool_given_for_int() -> None:
    message = _error("engine:\n  seed: 1\n  decoder_threads: true\n")
    assert message.startswith("test.yaml:3: engine.decoder_threads: expected an integer, got a boolean")


def test_bool_given_for_float() -> None:
    message = _error("engine:\n  temperature: yes\n")
    assert message.startswith("test.yaml:2: engine.temperature: expected a number, got a boolean")


def test_string_given_for_bool() -> None:
    message = _error("engine:\n  repetition_guard: 'on'\n")
    assert message.startswith("test.yaml:2: engine.repetition_guard: expected a boolean")


def test_null_for_non_optional_key() -> None:
    message = _error("engine:\n  n_batch: null\n")
    assert message.startswith("test.yaml:2: engine.n_batch: null is not allowed")


def test_bad_choice_lists_allowed_values() -> None:
    message = _error("model:\n  dir: null\n  encoder_precision: fp16\n")
    assert message.startswith("test.yaml:3: model.encoder_precision: 'fp16' is not allowed")
    assert "auto, fp32, int8, int4" in message


@pytest.mark.parametrize(
    ("key", "bad", "allowed"),
    [
        ("model.decoder_precision", "q4_0", "auto, f32, f16, q8_0, q4_k"),
        ("engine.kv_cache_type", "q4_0", "f16, f32, q8_0"),
    ],
)
def test_other_choices(key: str, bad: str, allowed: str) -> None:
    section, name = key.split(".")
    message = _error(f"{section}:\n  {name}: {bad}\n")
    assert message.startswith(f"test.yaml:2: {key}: '{bad}' is not allowed")
    assert allowed in message


def test_choices_are_case_sensitive_except_language() -> None:
    message = _error("engine:\n  kv_cache_type: F16\n")
    assert message.startswith("test.yaml:2: engine.kv_cache_type:")


def test_unsupported_language() -> None:
    message = _error("recognition:\n  language: Klingon\n")
    assert message.startswith("test.yaml:2: recognition.language: 'Klingon' is not allowed")
    assert "English" in message and "Macedonian" in message


def test_empty_model_dir_is_rejected() -> None:
    message = _error("model:\n  dir: ''\n")
    assert message.startswith("test.yaml:2: model.dir: must not be empty")


def test_non_mapping_section() -> None:
    message = _error("model:\n  dir: null\nengine: 4\n")
    assert message.startswith("test.yaml:3: engine: the section must be a mapping")
    message = _error("engine:\n  - n_ctx\n")
    assert message.startswith("test.yaml:2: engine: the section must be a mapping")


def test_non_mapping_top_level() -> None:
    assert _error("- model\n").startswith("test.yaml:1: the top level must be a mapping")


def test_duplicate_key() -> None:
    message = _error("engine:\n  n_ctx: 1024\n  n_ctx: 2048\n")
    assert message.startswith("test.yaml:3: engine.n_ctx: duplicate key (first set on line 2)")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("engine:\n  n_ctx: 4096\n n_batch: 512\n", 3),  # bad indentation
        ("recognition:\n  context: 'unterminated\n", 3),
        ("engine: {n_ctx: 4096\n", 2),
    ],
)
def test_yaml_syntax_error(text: str, line: int) -> None:
    message = _error(text)
    assert message.startswith(f"test.yaml:{line}: YAML syntax error:")


def test_unsafe_tag_is_rejected() -> None:
    message = _error("engine:\n  n_ctx: !!python/object:os.system 1\n")
    assert message.startswith("test.yaml:2: unsupported YAML value:")


# --- language normalisation -----------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["english", "ENGLISH", "English", "eNgLiSh"])
def test_language_normalised(spelling: str) -> None:
    cfg = parse_config(f"recognition:\n  language: {spelling}\n", "l.yaml")
    assert cfg.recognition.language == "English"


def test_every_language_accepted_in_lower_case() -> None:
    for lang in SUPPORTED_LANGUAGES:
        cfg = parse_config(f"recognition:\n  language: {lang.lower()}\n", "l.yaml")
        assert cfg.recognition.language == lang


# --- overrides ------------------------------------------------------------------------------------


def test_overrides_replace_only_named_keys() -> None:
    base = parse_config("engine:\n  n_ctx: 8192\n", "b.yaml")
    cfg = with_overrides(
        base,
        {"recognition.language": "japanese", "recognition.context": "Qwen", "model.dir": "/m"},
    )
    assert cfg.recognition == RecognitionConfig(language="Japanese", context="Qwen")
    assert cfg.model == ModelConfig(dir="/m")
    assert cfg.engine == base.engine  # untouched section survives
    assert base.recognition == RecognitionConfig()  # the original is not modified


def test_overrides_empty_is_identity() -> None:
    base = AppConfig()
    assert with_overrides(base, {}) == base


def test_overrides_expand_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = with_overrides(AppConfig(), {"model.dir": "~/x"})
    assert cfg.model.dir == os.path.join(str(tmp_path), "x")


def test_overrides_validate_and_name_the_option() -> None:
    with pytest.raises(ConfigError) as info:
        with_overrides(AppConfig(), {"recognition.language": "klingon"}, sources={"recognition.language": "--language"})
    assert str(info.value).startswith("--language: recognition.language: 'klingon' is not allowed")

    with pytest.raises(ConfigError) as info:
        with_overrides(AppConfig(), {"engine.n_ctx": True})
    assert str(info.value).startswith("override: engine.n_ctx: expected an integer or null, got a boolean")


def test_overrides_unknown_keys() -> None:
    with pytest.raises(ConfigError, match=r"recognition\.langauge: unknown key; did you mean 'language'\?"):
        with_overrides(AppConfig(), {"recognition.langauge": "English"})
    with pytest.raises(ConfigError, match=r"modle\.dir: unknown section; did you mean 'model'\?"):
        with_overrides(AppConfig(), {"modle.dir": "/m"})
