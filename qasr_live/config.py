"""Typed, strictly validated configuration of qasr-live.

The configuration is a tree of frozen dataclasses: one per section of ``config.yaml`` (``model``,
``engine``, ``recognition``, ...), all nested in :class:`AppConfig`. The dataclass fields are the schema: each
field's type annotation says what YAML value it takes, and a small :class:`Spec` in the field's metadata adds
what the type cannot say (allowed choices, bounds, a one-line help). Validation is generic and driven by those
two things only (the validator is :mod:`qasr_live.schema`, shared with the event protocol), so adding a section
means adding one dataclass and one field of :class:`AppConfig`; adding a key means adding one field made with
:func:`_opt`.

Reading ``config.yaml`` and applying command-line overrides is :mod:`qasr_live.config_file`.

Every mistake a user can make (unknown section or key, wrong type, value out of range or not allowed, YAML
syntax error) raises :class:`~qasr_live.errors.ConfigError` whose message names the file and 1-based line (or
the command-line option), the dotted key, what is wrong and what is allowed, e.g.
``config.yaml:12: engine.n_ctx: 100 is below the minimum 512 (context window in tokens)``.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any

from qasr_live import schema
from qasr_live.errors import ConfigError, InvalidValue

__all__ = [
    "SUPPORTED_LANGUAGES",
    "AppConfig",
    "AudioConfig",
    "ControlConfig",
    "EngineConfig",
    "FeedbackConfig",
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
    "check_value",
    "config_keys",
    "section_keys",
    "sections",
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
#: engine.encoder_providers names (engine/gpu.py maps them to onnxruntime's execution providers)
ENCODER_PROVIDER_CHOICES = ("auto", "cuda", "rocm", "migraphx", "coreml", "directml", "openvino", "cpu")


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
        "exported model directory (wins over model.name); null = model.name, else the default model",
        non_empty=True,
        expand_user=True,
    )
    name: str | None = _opt(
        None,
        "an installed model's name (`qasr-live models`); null = the default model, else the embedded demo",
        non_empty=True,
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
    aligner: str | None = _opt(
        None,
        "Qwen3-ForcedAligner model for word times: an installed model's name or a directory; null = none",
        non_empty=True,
        expand_user=True,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    """How the encoder and the llama.cpp decoder run."""

    encoder_threads: int = _opt(1, "CPU threads of the ONNX audio encoder", minimum=1)
    decoder_threads: int = _opt(2, "CPU threads of the llama.cpp decoder", minimum=1)
    n_gpu_layers: int = _opt(0, "decoder layers offloaded to the GPU; 0 = CPU only, -1 = all layers", minimum=-1)
    gpu: str = _opt(
        "require",
        "require = offload n_gpu_layers, an error if the build or the GPU cannot; auto = all layers (or "
        "n_gpu_layers) when a GPU exists, else one warning and the CPU; cpu = never the GPU",
        choices=("require", "auto", "cpu"),
    )
    gpu_device: int | None = _opt(
        None, "the GPU of the decoder, by index (`qasr-live doctor` lists them); null = all of them", minimum=0
    )
    encoder_providers: list[str] = field(
        default_factory=lambda: ["auto"],
        metadata={
            _SPEC_KEY: Spec(
                help="onnxruntime execution providers of the audio encoder, in order of preference: auto (the GPU "
                "ones the installed onnxruntime has), cuda, rocm, migraphx, coreml, directml, openvino, cpu"
            )
        },
    )
    n_ctx: int | None = _opt(None, "context window in tokens; null = sized from the need", minimum=512)
    n_batch: int = _opt(128, "llama.cpp prompt batch size in tokens", minimum=32)
    segment_seconds: float = _opt(30.0, "decoder segment length in seconds for long audio", minimum=5, maximum=300)
    max_new_tokens: int = _opt(512, "most tokens generated per segment", minimum=1)
    temperature: float = _opt(0.0, "sampling temperature; 0 = greedy", minimum=0)
    seed: int = _opt(0, "sampling seed (only used when temperature > 0)")
    repetition_guard: bool = _opt(True, "stop a segment that starts repeating itself")
    fallback_retries: int = _opt(
        4,
        "re-decodes of a segment the repetition guard cut, each 0.3 hotter (seeded); the best is kept; 0 = off",
        minimum=0,
        maximum=10,
    )
    kv_cache_type: str = _opt("f16", "decoder KV cache element type", choices=("f16", "f32", "q8_0"))
    flash_attention: bool = _opt(False, "llama.cpp flash attention (f16 on the CPU; on for q8_0 KV cache)")
    repack_weights: bool = _opt(
        False, "llama.cpp's interleaved copy of quantized weights (faster generation, slower prefill on x86)"
    )

    def __post_init__(self) -> None:
        if not self.encoder_providers:
            raise ConfigError("engine.encoder_providers is empty: list at least one provider, e.g. [auto]")
        for name in self.encoder_providers:
            if name not in ENCODER_PROVIDER_CHOICES:
                raise ConfigError(
                    f"engine.encoder_providers: {name!r} is not a provider; choose from "
                    f"{', '.join(ENCODER_PROVIDER_CHOICES)}"
                )
        if self.gpu == "cpu" and self.n_gpu_layers != 0:
            raise ConfigError(
                f"engine.gpu is cpu but engine.n_gpu_layers is {self.n_gpu_layers}: set engine.gpu: require (or "
                "auto) to offload, or engine.n_gpu_layers: 0"
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
    itn: bool = _opt(True, "Chinese text: numbers, dates, times, percentages and money as digits (一千 -> 1000)")
    timestamps: bool = _opt(False, "time every word with the aligner (model.aligner): file outputs, live events")


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
        "auto = chosen from the session (X11: XTest, macOS: pynput, GNOME/KDE Wayland: the RemoteDesktop portal, "
        "other Wayland: wtype; the clipboard paste last)",
        choices=("auto", "pynput", "wtype", "portal", "clipboard"),
    )
    separator: str = _opt(" ", "typed between two utterances")
    char_delay_ms: float = _opt(0.0, "pause between typed characters (slow applications)", minimum=0, maximum=100)
    modifier_timeout_s: float = _opt(
        3.0, "longest wait for the hotkey's modifiers to be released before typing anyway", minimum=0, maximum=60
    )
    paste_timeout_s: float = _opt(
        2.0,
        "clipboard route: longest wait for the window to take the pasted text before the clipboard is restored",
        minimum=0.1,
        maximum=30,
    )
    paste_above_chars: int = _opt(
        4000, "a commit longer than this is pasted through the clipboard instead of typed key by key", minimum=1
    )
    focus_changed: str = _opt(
        "clipboard",
        "X11: the window focused when dictation started lost the focus before the text came: type = type anyway, "
        "hold = do not type (the journal keeps it), clipboard = put it on the clipboard; both notify",
        choices=("type", "hold", "clipboard"),
    )
    voice_commands: bool = _opt(
        True, 'spoken "new line", "new paragraph", "scratch that" act instead of being typed (per language)'
    )
    punctuation_words: str = _opt(
        "auto",
        'spoken "comma", "period"... become the mark; auto = only where the model did not punctuate',
        choices=("auto", "on", "off"),
    )
    replacements: dict[str, str] = field(
        default_factory=dict,
        metadata={
            _SPEC_KEY: Spec(help="typed instead: {word: replacement} whole words, case kept; a /regex/ key is a regex")
        },
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackConfig:
    """What the user sees of the daemon outside the window text goes to."""

    notifications: bool = _opt(
        True, "desktop notifications for failures (typing failed, text left on the clipboard, no microphone)"
    )
    sounds: bool = _opt(False, "a short sound when recording starts and stops (through the default output)")
    duck_volume: float = _opt(
        1.0,
        "while recording, other applications' playback is turned down to this fraction (PulseAudio/PipeWire); 1 = off",
        minimum=0,
        maximum=1,
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
        False, "true = exact mode: rows equal an offline encoding (open 8 s window re-run); false = each chunk once"
    )
    memory_tokens: int = _opt(
        400,
        "decoder memory budget: previous utterances' audio + text tokens placed before the current one; 0 = off",
        minimum=0,
    )
    memory_utterances: int = _opt(3, "most previous utterances kept in the decoder memory", minimum=0, maximum=50)
    memory_kv_reuse: bool = _opt(
        True,
        "the decoder memory's KV entries are kept, not computed again, when its oldest utterance leaves (moved "
        "down) and when the current audio changes (its text moved after the new rows); false = exact",
    )
    endpoint_speculation_ms: int = _opt(
        200, "VAD mode: start the final decode after this much silence, before the hangover ends; 0 = off", minimum=0
    )
    max_backlog_s: float = _opt(
        120.0,
        "most seconds of audio waiting for the recognizer; beyond it the daemon reports an overload and takes no "
        "audio until half of it is left",
        minimum=1,
        maximum=3600,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSocketConfig:
    """The caption/control WebSocket server."""

    enabled: bool = _opt(True, "serve events to caption subscribers")
    host: str = _opt(
        "127.0.0.1",
        "address to bind; anything but localhost exposes your dictation (and needs require_token)",
        non_empty=True,
    )
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
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    control: ControlConfig = field(default_factory=ControlConfig)


# --- schema walk ----------------------------------------------------------------------------------


def sections() -> dict[str, type]:
    """Section name -> section dataclass, in declaration order."""
    hints = typing.get_type_hints(AppConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(AppConfig)}


def section_keys(section_cls: type) -> dict[str, tuple[Any, Spec]]:
    """Key name -> (type annotation, Spec) of one section dataclass, in declaration order."""
    hints = typing.get_type_hints(section_cls)
    return {f.name: (hints[f.name], f.metadata[_SPEC_KEY]) for f in dataclasses.fields(section_cls)}


def config_keys() -> tuple[str, ...]:
    """Every valid dotted key (``section.key``), in declaration order."""
    return tuple(f"{name}.{key}" for name, cls in sections().items() for key in section_keys(cls))


# --- validation -----------------------------------------------------------------------------------


def check_value(value: Any, annotation: Any, spec: Spec) -> tuple[Any, str | None]:
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
    for key, (annotation, spec) in section_keys(type(section)).items():
        _, problem = check_value(getattr(section, key), annotation, spec)
        if problem is not None:
            raise ConfigError(f"{name}.{key}: {problem} ({spec.help})")
