"""Typed, strictly validated configuration of qasr-live.

The configuration is a tree of frozen dataclasses: one per section of ``config.yaml`` (``model``,
``engine``, ``recognition``, ...), all nested in :class:`AppConfig`. The dataclass fields are the schema: each
field's type annotation says what YAML value it takes, and a small :class:`Spec` in the field's metadata adds
what the type cannot say (allowed choices, bounds, a one-line help). Validation is generic and driven by those
two things only (the validator is :mod:`qasr_live.schema`, shared with the event protocol), so adding a section
means adding one dataclass and one field of :class:`AppConfig`; adding a key means adding one field made with
:func:`_opt`.

Entry points:

* :func:`load_config` finds the file (explicit path, else ``$XDG_CONFIG_HOME/qasr-live/config.yaml``, else the
  built-in defaults) and parses it;
* :func:`parse_config` parses YAML text (used by tests and by :func:`load_config`);
* :func:`with_overrides` replaces a few dotted keys (the command line's ``--language`` and friends), validated
  the same way.

Every mistake a user can make (unknown section or key, wrong type, value out of range or not allowed, YAML
syntax error) raises :class:`~qasr_live.errors.ConfigError` whose message names the file and 1-based line (or
the command-line option), the dotted key, what is wrong and what is allowed, e.g.
``config.yaml:12: engine.n_ctx: 100 is below the minimum 512 (context window in tokens)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qasr_live import schema
from qasr_live.errors import ConfigError, InvalidValue

__all__ = [
    "SUPPORTED_LANGUAGES",
    "AppConfig",
    "AudioConfig",
    "ControlConfig",
    "EngineConfig",
    "HotkeysConfig",
    "JournalConfig",
    "ModelConfig",
    "RecognitionConfig",
    "Spec",
    "StreamingConfig",
    "TriggerConfig",
    "TypingConfig",
    "VadConfig",
    "WebSocketConfig",
    "config_keys",
    "default_config_path",
    "load_config",
    "parse_config",
    "with_overrides",
]

#: The 30 languages Qwen3-ASR recognises, in the canonical spelling the model's prompt uses.
SUPPORTED_LANGUAGES: tuple[str, ...] = (
    "Chinese",
    "English",
    "Cantonese",
    "Arabic",
    "German",
    "French",
    "Spanish",
    "Portuguese",
    "Indonesian",
    "Italian",
    "Korean",
    "Russian",
    "Thai",
    "Vietnamese",
    "Japanese",
    "Turkish",
    "Hindi",
    "Malay",
    "Dutch",
    "Swedish",
    "Danish",
    "Finnish",
    "Polish",
    "Czech",
    "Filipino",
    "Persian",
    "Greek",
    "Romanian",
    "Hungarian",
    "Macedonian",
)

_SPEC_KEY = "qasr_spec"


@dataclass(frozen=True, slots=True, kw_only=True)
class Spec(schema.Rules):
    """What a field's type annotation cannot say about its allowed values: the :class:`~qasr_live.schema.Rules`
    (``choices``, ``case_insensitive``, ``minimum``, ``maximum``, ``non_empty``), plus the key's one-line
    ``help`` and ``expand_user``: ``~`` in a path is expanded.
    """

    help: str
    expand_user: bool = False


def _opt(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field with a default and its :class:`Spec` (see there for the keyword arguments)."""
    return field(default=default, metadata={_SPEC_KEY: Spec(help=help, **spec)})


# --- sections -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """Which exported model to load and at what precision."""

    dir: str | None = _opt(
        None,
        "exported model directory; null = the embedded demo model",
        non_empty=True,
        expand_user=True,
    )
    encoder_precision: str = _opt(
        "auto",
        "ONNX audio encoder weights; auto = chosen from those in the model directory",
        choices=("auto", "fp32", "int8", "int4"),
    )
    decoder_precision: str = _opt(
        "auto",
        "GGUF decoder weights; auto = chosen from those in the model directory",
        choices=("auto", "f32", "f16", "q8_0", "q4_k"),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    """How the encoder and the llama.cpp decoder run."""

    encoder_threads: int = _opt(1, "CPU threads of the ONNX audio encoder", minimum=1)
    decoder_threads: int = _opt(2, "CPU threads of the llama.cpp decoder", minimum=1)
    n_gpu_layers: int = _opt(0, "decoder layers offloaded to the GPU; 0 = CPU only, -1 = all layers", minimum=-1)
    n_ctx: int = _opt(2048, "context window in tokens", minimum=512)
    n_batch: int = _opt(512, "llama.cpp prompt batch size in tokens", minimum=32)
    segment_seconds: float = _opt(30.0, "decoder segment length in seconds for long audio", minimum=5, maximum=300)
    max_new_tokens: int = _opt(512, "most tokens generated per segment", minimum=1)
    temperature: float = _opt(0.0, "sampling temperature; 0 = greedy", minimum=0)
    seed: int = _opt(0, "sampling seed (only used when temperature > 0)")
    repetition_guard: bool = _opt(True, "stop a segment that starts repeating itself")
    kv_cache_type: str = _opt("f16", "decoder KV cache element type", choices=("f16", "f32", "q8_0"))
    flash_attention: bool = _opt(False, "llama.cpp flash attention (f16 on the CPU; on for q8_0 KV cache)")
    repack_weights: bool = _opt(
        False, "llama.cpp's interleaved copy of quantized weights (faster generation, slower prefill on x86)"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RecognitionConfig:
    """What the model is told about the speech."""

    language: str | None = _opt(
        None,
        "spoken language; null = auto-detect",
        choices=SUPPORTED_LANGUAGES,
        case_insensitive=True,
    )
    context: str = _opt("", "background text / hot words given to the model in the system prompt")


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioConfig:
    """Where the daemon's audio comes from."""

    device: str | None = _opt(
        None,
        "input device, by (part of its) name as `qasr-live devices` lists it; null = the system default",
        non_empty=True,
    )
    source: str | None = _opt(
        None,
        "null = the microphone; a WAV file path, or '-' for raw 16 kHz mono s16le on stdin (tests, replay)",
        non_empty=True,
        expand_user=True,
    )
    block_ms: int = _opt(30, "capture block length in milliseconds", minimum=10, maximum=200)
    reopen_after_silence_s: float = _opt(
        10.0, "reopen the input stream after this long of pure digital silence; 0 = never", minimum=0
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class VadConfig:
    """Voice-activity detection: when an utterance starts and ends.

    Also the option set of :class:`~qasr_live.audio.vad.VadSegmenter` and ``trim()``, which take it as it is;
    code builds it directly, so construction validates it like config.yaml does: each key against its bounds,
    then the rules across keys, each failure a :class:`~qasr_live.errors.ConfigError` naming the keys.
    """

    aggressiveness: int = _opt(
        2, "webrtcvad mode: 0 keeps the most audio, 3 rejects the most non-speech", choices=(0, 1, 2, 3)
    )
    frame_ms: int = _opt(30, "webrtcvad frame length in milliseconds", choices=(10, 20, 30))
    pre_roll_ms: int = _opt(300, "audio kept before the detected onset", minimum=0, maximum=2000)
    start_ms: int = _opt(120, "voiced time within start_window_ms that starts an utterance", minimum=10)
    start_window_ms: int = _opt(300, "sliding window of the start hysteresis", minimum=10)
    hangover_ms: int = _opt(600, "continuous silence that ends an utterance", minimum=30, maximum=10000)
    min_speech_ms: int = _opt(250, "shorter speech is treated as a noise (no text)", minimum=0)
    max_utterance_s: float = _opt(
        30.0, "longest utterance; longer speech is cut at its deepest recent pause", minimum=2, maximum=300
    )
    rms_floor_dbfs: float = _opt(-55.0, "quieter audio is never speech (dBFS)", minimum=-120, maximum=0)

    def __post_init__(self) -> None:
        _check_section("vad", self)
        if self.start_ms > self.start_window_ms:
            raise ConfigError(
                f"vad.start_ms ({self.start_ms}) must not exceed vad.start_window_ms ({self.start_window_ms}): "
                "the start condition could never be met"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerConfig:
    """What starts and ends dictation."""

    mode: str = _opt(
        "ptt",
        "ptt = speak while the key is held; toggle = one press starts, the next stops; continuous = always on",
        choices=("ptt", "toggle", "continuous"),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class HotkeysConfig:
    """Global hotkeys (X11 and macOS; on Wayland bind keys to `qasr-live ctl` in the compositor)."""

    enabled: bool = _opt(True, "listen for the hotkeys below when a display is available")
    ptt: str | None = _opt("<ctrl>+<alt>+space", "push-to-talk key combination (trigger.mode ptt)", non_empty=True)
    toggle: str | None = _opt("<ctrl>+<alt>+d", "start/stop key combination (trigger.mode toggle)", non_empty=True)
    cancel: str | None = _opt(None, "discard the current utterance", non_empty=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class TypingConfig:
    """Typing committed text into the focused window."""

    enabled: bool = _opt(True, "type committed text into the focused window")
    backend: str = _opt(
        "auto",
        "auto = chosen from the session type (X11: XTest, macOS: pynput, Wayland: wtype, else clipboard paste)",
        choices=("auto", "pynput", "wtype", "clipboard"),
    )
    separator: str = _opt(" ", "typed between two utterances")
    char_delay_ms: float = _opt(0.0, "pause between typed characters (slow applications)", minimum=0, maximum=100)
    modifier_timeout_s: float = _opt(
        3.0, "longest wait for the hotkey's modifiers to be released before typing anyway", minimum=0, maximum=60
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamingConfig:
    """The streaming recognizer: partial results, commits and decoder memory."""

    partial_interval_ms: int = _opt(
        500, "how often a new partial result is decoded during speech; 0 = no partials", minimum=0, maximum=10000
    )
    rollback_tokens: int = _opt(
        5, "trailing tokens of a partial that stay uncommitted until speech ends", minimum=0, maximum=50
    )
    agreement: bool = _opt(True, "commit only text two partials agree on (LocalAgreement-2)")
    agreement_ms: int = _opt(
        400,
        "the earlier of the two agreeing partials heard at least this much less audio (0 = the previous partial)",
        minimum=0,
        maximum=10000,
    )
    reencode_open_window: bool = _opt(
        True, "exact mode: rows equal an offline encoding (open 8 s window re-run); false = each chunk encoded once"
    )
    memory_tokens: int = _opt(
        400,
        "decoder memory budget: previous utterances' audio + text tokens placed before the current one; 0 = off",
        minimum=0,
    )
    memory_utterances: int = _opt(3, "most previous utterances kept in the decoder memory", minimum=0, maximum=50)
    endpoint_speculation_ms: int = _opt(
        200, "VAD mode: start the final decode after this much silence, before the hangover ends; 0 = off", minimum=0
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSocketConfig:
    """The caption/control WebSocket server."""

    enabled: bool = _opt(True, "serve events to caption subscribers")
    host: str = _opt("127.0.0.1", "address to bind; anything but localhost exposes your dictation", non_empty=True)
    port: int = _opt(8765, "TCP port; 0 = any free port (written to the runtime directory)", minimum=0, maximum=65535)
    require_token: bool = _opt(True, "clients must present the token from the runtime directory")
    replay_events: int = _opt(2000, "events kept for `subscribe` with since_seq", minimum=0)
    client_queue: int = _opt(256, "events queued per client before its partials are dropped", minimum=8)


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalConfig:
    """The transcript journal: every commit, fsynced before it is typed or published."""

    enabled: bool = _opt(True, "append committed text to the journal")
    path: str | None = _opt(
        None, "journal file; null = $XDG_STATE_HOME/qasr-live/journal.jsonl", non_empty=True, expand_user=True
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlConfig:
    """The `qasr-live ctl` socket and runtime files."""

    runtime_dir: str | None = _opt(
        None,
        "directory of the ctl socket, token files and port file; null = $XDG_RUNTIME_DIR/qasr-live",
        non_empty=True,
        expand_user=True,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AppConfig:
    """The whole configuration: one field per section of config.yaml."""

    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    recognition: RecognitionConfig = field(default_factory=RecognitionConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    hotkeys: HotkeysConfig = field(default_factory=HotkeysConfig)
    typing: TypingConfig = field(default_factory=TypingConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    control: ControlConfig = field(default_factory=ControlConfig)


# --- schema walk ----------------------------------------------------------------------------------


def _sections() -> dict[str, type]:
    """Section name -> section dataclass, in declaration order."""
    hints = typing.get_type_hints(AppConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(AppConfig)}


def _keys(section_cls: type) -> dict[str, tuple[Any, Spec]]:
    """Key name -> (type annotation, Spec) of one section dataclass, in declaration order."""
    hints = typing.get_type_hints(section_cls)
    return {f.name: (hints[f.name], f.metadata[_SPEC_KEY]) for f in dataclasses.fields(section_cls)}


def config_keys() -> tuple[str, ...]:
    """Every valid dotted key (``section.key``), in declaration order."""
    return tuple(f"{name}.{key}" for name, cls in _sections().items() for key in _keys(cls))


# --- validation -----------------------------------------------------------------------------------

def _check_value(value: Any, annotation: Any, spec: Spec) -> tuple[Any, str | None]:
    """Validate and normalise one value: (normalised value, None) or (None, what is wrong)."""
    try:
        value = schema.check(annotation, value, spec)
    except InvalidValue as e:
        return None, str(e)  # config values are scalars: no path inside them, just the problem
    if spec.expand_user and isinstance(value, str):
        value = os.path.expanduser(value)
    return value, None


def _check_section(name: str, section: Any) -> None:
    """Validate every key of a section dataclass made in code (no file, no line); raises :class:`ConfigError`."""
    for key, (annotation, spec) in _keys(type(section)).items():
        _, problem = _check_value(getattr(section, key), annotation, spec)
        if problem is not None:
            raise ConfigError(f"{name}.{key}: {problem} ({spec.help})")


def _fail(where: str, dotted: str, problem: str, spec: Spec | None = None) -> ConfigError:
    suffix = f" ({spec.help})" if spec is not None else ""
    return ConfigError(f"{where}: {dotted}: {problem}{suffix}")


def _unknown(kind: str, name: Any, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"valid {kind}s are: {', '.join(valid)}"
    return f"unknown {kind}; {hint}"


# --- YAML -----------------------------------------------------------------------------------------


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _construct(node: yaml.Node) -> Any:
    """The Python value of a composed node, with the safe loader's rules."""
    return yaml.SafeLoader("").construct_object(node, deep=True)


def _mapping_items(
    node: yaml.MappingNode, source: str, dotted_prefix: str
) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
    """(key, key node, value node) of a mapping node; rejects non-string and duplicate keys."""
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        where = f"{source}:{_line(key_node)}"
        if not isinstance(key_node, yaml.ScalarNode):
            raise ConfigError(f"{where}: {dotted_prefix}<{_node_kind(key_node)}>: keys must be plain names")
        key = _construct(key_node)
        if not isinstance(key, str):
            raise ConfigError(f"{where}: {dotted_prefix}{schema.show(key)}: keys must be plain names")
        if key in seen:
            raise ConfigError(f"{where}: {dotted_prefix}{key}: duplicate key (first set on line {seen[key]})")
        seen[key] = _line(key_node)
        yield key, key_node, value_node


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def parse_config(text: str, source: str) -> AppConfig:
    """Parse and validate YAML ``text``; ``source`` names it in error messages (usually the file path).

    An empty document, or a section set to null, means the defaults. Raises :class:`ConfigError`.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    if root is None or _is_null(root):
        return AppConfig()
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            f"{source}:{_line(root)}: the top level must be a mapping of sections "
            f"({', '.join(_sections())}), got {_node_kind(root)}"
        )
    sections = _sections()
    built: dict[str, Any] = {}
    try:
        for name, key_node, value_node in _mapping_items(root, source, ""):
            if name not in sections:
                raise ConfigError(f"{source}:{_line(key_node)}: {name}: {_unknown('section', name, list(sections))}")
            built[name] = _parse_section(name, sections[name], value_node, source)
    except yaml.YAMLError as exc:  # a bad tag or the like, found while constructing a value
        raise _yaml_error(exc, source, "unsupported YAML value") from None
    return AppConfig(**built)


def _parse_section(name: str, cls: type, node: yaml.Node, source: str) -> Any:
    if _is_null(node):
        return cls()
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(
            f"{source}:{_line(node)}: {name}: the section must be a mapping of keys, got {_node_kind(node)}"
        )
    keys = _keys(cls)
    values: dict[str, Any] = {}
    for key, key_node, value_node in _mapping_items(node, source, f"{name}."):
        dotted = f"{name}.{key}"
        if key not in keys:
            raise ConfigError(f"{source}:{_line(key_node)}: {dotted}: {_unknown('key', key, list(keys))}")
        annotation, spec = keys[key]
        value, problem = _check_value(_construct(value_node), annotation, spec)
        if problem is not None:
            raise _fail(f"{source}:{_line(value_node)}", dotted, problem, spec)
        values[key] = value
    try:
        return cls(**values)
    except ConfigError as exc:  # a rule across keys (each key alone passed above): point at the section
        raise ConfigError(f"{source}:{_line(node)}: {exc}") from None


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return schema.describe(_construct(node))


def _yaml_error(exc: yaml.YAMLError, source: str, what: str = "YAML syntax error") -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{source}:{mark.line + 1}" if mark is not None else source
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    detail = f"{context}, {problem}" if context else problem
    return ConfigError(f"{where}: {what}: {detail}")


# --- loading --------------------------------------------------------------------------------------


def default_config_path() -> Path:
    """``$XDG_CONFIG_HOME/qasr-live/config.yaml``; ``~/.config`` stands in when the variable is unset or
    not an absolute path."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return base / "qasr-live" / "config.yaml"


def load_config(path: str | Path | None = None) -> AppConfig:
    """Load the configuration.

    Search order: the explicit ``path`` (which must exist), else :func:`default_config_path` if it exists,
    else the built-in defaults (``AppConfig()``). Raises :class:`ConfigError` for a missing explicit file, an
    unreadable file or invalid content.
    """
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            what = "is not a file" if file.exists() else "does not exist"
            raise ConfigError(f"{file}: config file {what}; pass an existing config.yaml or omit the option")
    else:
        file = default_config_path()
        if not file.is_file():
            return AppConfig()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read the config file: {exc}") from None
    return parse_config(text, str(file))


def with_overrides(
    cfg: AppConfig, overrides: Mapping[str, Any], *, sources: Mapping[str, str] | None = None
) -> AppConfig:
    """A copy of ``cfg`` with dotted keys replaced, e.g. ``{"recognition.language": "english"}``.

    Values are validated and normalised exactly as in config.yaml. Pass only the options the user actually
    gave: a ``None`` value sets the key to null (allowed only where null is). ``sources`` maps a dotted key to
    the name used in error messages (the command-line option, e.g. ``"--language"``); it defaults to
    ``"override"``. Raises :class:`ConfigError`.
    """
    sections = _sections()
    changes: dict[str, dict[str, Any]] = {}
    for dotted, raw in overrides.items():
        where = (sources or {}).get(dotted, "override")
        name, _, key = dotted.partition(".")
        if name not in sections:
            raise ConfigError(f"{where}: {dotted}: {_unknown('section', name, list(sections))}")
        keys = _keys(sections[name])
        if key not in keys:
            raise ConfigError(f"{where}: {dotted}: {_unknown('key', key, list(keys))}")
        annotation, spec = keys[key]
        value, problem = _check_value(raw, annotation, spec)
        if problem is not None:
            raise _fail(where, dotted, problem, spec)
        changes.setdefault(name, {})[key] = value
    replaced: dict[str, Any] = {}
    for name, kv in changes.items():
        try:
            replaced[name] = dataclasses.replace(getattr(cfg, name), **kv)
        except ConfigError as exc:  # a rule across keys of the section, broken by these overrides
            origin = ", ".join(dict.fromkeys((sources or {}).get(f"{name}.{key}", "override") for key in kv))
            raise ConfigError(f"{origin}: {exc}") from None
    return dataclasses.replace(cfg, **replaced)
