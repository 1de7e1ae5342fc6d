"""The event vocabulary and versioned protocol: what the daemon publishes (bus, WebSocket) and clients send.

Every message is one frozen dataclass with a class constant ``TYPE``. Server → client events travel as
``{"v": 2, "seq": N, "type": "...", ...fields}``; client → server messages as ``{"type": "...", ...fields}``
(``v`` and ``seq`` may be present there too). Every field is annotated ``Annotated[type, "description"]`` with
type one of ``str``, :data:`Count`, ``float``, ``bool``, a ``StrEnum`` or ``Literal[...]``, ``X | None``,
``list[X]``, ``dict[str, X]``; parsing and validation are generic, driven by those annotations (the validator is
:mod:`qasr_live.schema`, shared with config.yaml), and so is ``json_schema()``, from which
``docs/events.schema.json`` is generated::

    python -m qasr_live.events > docs/events.schema.json

Rules of the wire format:

* every integer is a :data:`Count`, non-negative (they are all counters, indices or lengths); a ``float`` must
  be finite and may be written as a JSON integer;
* a closed set of strings (:class:`DictationState`, :class:`ControlAction`, ...) is a ``StrEnum``: on the wire its
  member's value, in Python its member (which also compares equal to that string);
* a field with a default may be left out (or, if it is optional, be ``null``); ``to_dict`` always writes every
  field;
* unknown types, unknown fields, missing fields and wrongly typed values are refused with a
  ``ProtocolError`` whose message names the field (``partial.rev: expected ...``). Any change to the set of
  events or fields bumps ``PROTOCOL_VERSION``.

Commits are append-only: for one utterance, ``commit.idx`` counts 0, 1, 2, ... and the utterance's final text is
the concatenation of its commits' ``text`` in that order. ``partial.text`` is the whole not-yet-committed tail
and replaces the previous partial of the same utterance (``rev`` increases per utterance).
"""

import dataclasses
import enum
import json
import typing
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self

from qasr_live import schema
from qasr_live.errors import InvalidValue, ProtocolError

__all__ = [
    "ACCEPTED_VERSIONS",
    "CLIENT_MESSAGES",
    "PROTOCOL_VERSION",
    "REGISTRY",
    "SERVER_EVENTS",
    "ClientMessage",
    "CommitEvent",
    "ConfigMessage",
    "ControlAction",
    "ControlMessage",
    "Count",
    "DictationState",
    "EndReason",
    "ErrorEvent",
    "HelloEvent",
    "OutputBackend",
    "OutputEvent",
    "PartialEvent",
    "RecordMode",
    "ServerEvent",
    "ServerEventType",
    "StateEvent",
    "SubscribeMessage",
    "UtteranceEndEvent",
    "UtteranceStartEvent",
    "UtteranceWordsEvent",
    "event_from_json",
    "event_to_json",
    "json_schema",
    "json_schema_text",
]

PROTOCOL_VERSION = 2
#: Versions a message may carry: 2 only added (the `utterance_words` event, `utterance_end.language`,
#: `commit.typed`, `commit.scratch`), so a version-1 message is still valid.
ACCEPTED_VERSIONS = (1, 2)
_RESERVED = ("v", "seq", "type")  # envelope keys; no event may have a field of these names


class _Message:
    """Behaviour shared by every event and message: generic ``to_dict`` / ``from_dict``."""

    __slots__ = ()
    TYPE: ClassVar[str]
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # every subclass is a dataclass

    def to_dict(self) -> dict[str, Any]:
        """``{"type": TYPE, ...every field}``, JSON-ready (lists and dicts are copies)."""
        out: dict[str, Any] = {"type": self.TYPE}
        for f in dataclasses.fields(self):
            out[f.name] = _copy(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Validate ``data`` (the fields, optionally with a matching ``type``) and build the message."""
        if not isinstance(data, dict):
            raise ProtocolError(f"{cls.TYPE}: expected a JSON object, got {schema.describe(data)}")
        data = dict(data)
        kind = data.pop("type", cls.TYPE)
        if kind != cls.TYPE:
            raise ProtocolError(f"{cls.TYPE}.type: expected {cls.TYPE!r}, got {schema.describe(kind)}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in fields]
        if unknown:
            allowed = ", ".join(fields) or "none"
            raise ProtocolError(f"{cls.TYPE}.{unknown[0]}: unknown field (allowed fields: {allowed})")
        kwargs = {}
        for name, f in fields.items():
            if name in data:
                kwargs[name] = _check(f.type, data[name], f"{cls.TYPE}.{name}")
            elif _required(f):
                raise ProtocolError(f"{cls.TYPE}.{name}: required field is missing")
        return cls(**kwargs)


class ServerEvent(_Message):
    """An event the daemon publishes: carries ``v`` and ``seq`` on the wire."""

    __slots__ = ()


class ClientMessage(_Message):
    """A message a client sends to the daemon: ``v`` and ``seq`` are optional on the wire."""

    __slots__ = ()


# ---------------------------------------------------------------------------------------------- vocabulary
# Closed sets of strings on the wire. The member order is the order the JSON schema lists them in.


class DictationState(enum.StrEnum):
    """Where the dictation state machine is."""

    IDLE = "idle"
    LISTENING = "listening"
    RECORDING = "recording"
    FINALIZING = "finalizing"


class RecordMode(enum.StrEnum):
    """How recording is started and stopped (``trigger.mode``)."""

    PTT = "ptt"
    TOGGLE = "toggle"
    CONTINUOUS = "continuous"


class EndReason(enum.StrEnum):
    """Why an utterance ended."""

    SILENCE = "silence"
    KEY_RELEASE = "key_release"
    MAX_LENGTH = "max_length"
    NO_SPEECH = "no_speech"
    CANCELLED = "cancelled"
    ERROR = "error"
    OVERLOAD = "overload"  # the recognizer fell too far behind: the daemon closed it and stopped taking audio


class OutputBackend(enum.StrEnum):
    """How committed text was delivered (``NONE``: nothing was typed)."""

    PYNPUT = "pynput"
    WTYPE = "wtype"
    PORTAL = "portal"  # the XDG RemoteDesktop portal (GNOME, KDE); protocol 2
    CLIPBOARD = "clipboard"
    NONE = "none"


class ControlAction(enum.StrEnum):
    """What a hotkey, ``qasr-live ctl``, a signal or a WebSocket ``control`` message asks the daemon to do."""

    START = "start"
    STOP = "stop"
    CANCEL = "cancel"
    FINALIZE = "finalize"
    TOGGLE = "toggle"
    PTT_PRESS = "ptt_press"
    PTT_RELEASE = "ptt_release"


# The TYPE of every server event (checked against SERVER_EVENTS at import).
ServerEventType = Literal[
    "hello", "state", "utterance_start", "partial", "commit", "utterance_end", "output", "error", "utterance_words"
]

#: Every integer of the protocol: a counter, index or length, never negative.
Count = Annotated[int, schema.Rules(minimum=0)]

# ---------------------------------------------------------------------------------------------- server → client


@dataclass(frozen=True, slots=True, kw_only=True)
class HelloEvent(ServerEvent):
    """First event on every connection: who the server is and what this client may do."""

    TYPE: ClassVar[str] = "hello"
    protocol: Annotated[Count, "protocol version the server speaks (PROTOCOL_VERSION)"]
    server_version: Annotated[str, "qasr-live version of the daemon"]
    session_id: Annotated[str, "identifies this daemon run; seq numbers are only comparable within one session"]
    scopes: Annotated[list[str], "what this client is allowed to do (e.g. read, control)"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StateEvent(ServerEvent):
    """The dictation state machine moved."""

    TYPE: ClassVar[str] = "state"
    state: Annotated[DictationState, "the new state"]
    mode: Annotated[RecordMode, "how recording is started and stopped"]


@dataclass(frozen=True, slots=True, kw_only=True)
class UtteranceStartEvent(ServerEvent):
    """Speech began: a new utterance."""

    TYPE: ClassVar[str] = "utterance_start"
    utterance_id: Annotated[str, "identifies the utterance in every later event about it"]
    audio_start: Annotated[float, "start of the utterance's audio, in seconds of the session's audio clock"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PartialEvent(ServerEvent):
    """A new hypothesis for the not-yet-committed tail of an utterance; replaces the previous partial."""

    TYPE: ClassVar[str] = "partial"
    utterance_id: Annotated[str, "the utterance"]
    rev: Annotated[Count, "revision, increasing within the utterance"]
    text: Annotated[str, "the whole not-yet-committed tail (not a delta)"]
    stable_prefix_len: Annotated[Count | None, "how many leading characters of text are unlikely to change"] = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitEvent(ServerEvent):
    """Text that is final: appended to the utterance, never revised."""

    TYPE: ClassVar[str] = "commit"
    utterance_id: Annotated[str, "the utterance"]
    idx: Annotated[Count, "commit index within the utterance, starting at 0"]
    text: Annotated[str, "the text appended by this commit (as the model wrote it: raw)"]
    typed: Annotated[
        str | None,
        "what this commit lets out to be typed after the voice commands and text rules (may hold back words "
        "that could begin a command; a commit with empty text at the utterance's end lets them out); "
        "null = not known (protocol 1)",
    ] = None
    scratch: Annotated[bool, '"scratch that": what was typed of the utterance (or the one before) is deleted'] = False


@dataclass(frozen=True, slots=True, kw_only=True)
class UtteranceEndEvent(ServerEvent):
    """The utterance is over; no further partial or commit refers to it."""

    TYPE: ClassVar[str] = "utterance_end"
    utterance_id: Annotated[str, "the utterance"]
    reason: Annotated[EndReason, "why it ended"]
    latency: Annotated[dict[str, float], "latency figures in milliseconds, e.g. first_partial_ms, final_ms"] = (
        dataclasses.field(default_factory=dict)
    )
    language: Annotated[str | None, "the language spoken (forced, or detected by the model); null if unknown"] = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UtteranceWordsEvent(ServerEvent):
    """When each word of an ended utterance was said (the forced aligner, run in the background after the
    utterance's text was committed and typed: it comes after utterance_end, possibly after later events)."""

    TYPE: ClassVar[str] = "utterance_words"
    utterance_id: Annotated[str, "the utterance"]
    language: Annotated[str | None, "the language spoken; null if unknown"]
    words: Annotated[list[str], "the words as written, punctuation attached (CJK: one character each)"]
    start: Annotated[list[float], "start of each word, in seconds of the session's audio clock (as audio_start)"]
    end: Annotated[list[float], "end of each word, same clock"]
    align_ms: Annotated[float, "how long the alignment took, in milliseconds"]


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputEvent(ServerEvent):
    """Committed text was (or failed to be) delivered to the focused window or clipboard."""

    TYPE: ClassVar[str] = "output"
    utterance_id: Annotated[str, "the utterance"]
    backend: Annotated[OutputBackend, "how the text was delivered"]
    ok: Annotated[bool, "whether delivery succeeded"]
    text: Annotated[str, "the text delivered"]
    error: Annotated[str | None, "why delivery failed, if it did"] = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorEvent(ServerEvent):
    """Something went wrong; if fatal, the server closes the connection after this event."""

    TYPE: ClassVar[str] = "error"
    code: Annotated[str, "stable machine-readable code, e.g. bad_message"]
    message: Annotated[str, "human-readable description, naming the problem and the fix"]
    fatal: Annotated[bool, "whether the connection (or the daemon) stops"]


# ---------------------------------------------------------------------------------------------- client → server


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribeMessage(ClientMessage):
    """Ask for events: optionally replay those after since_seq, optionally only some types."""

    TYPE: ClassVar[str] = "subscribe"
    since_seq: Annotated[Count | None, "replay retained events with seq greater than this"] = None
    events: Annotated[list[ServerEventType] | None, "only these event types (all if absent)"] = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlMessage(ClientMessage):
    """Drive the dictation state machine."""

    TYPE: ClassVar[str] = "control"
    action: Annotated[ControlAction, "what to do"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigMessage(ClientMessage):
    """Change recognition settings for the following utterances; absent or null fields are left unchanged."""

    TYPE: ClassVar[str] = "config"
    language: Annotated[str | None, "force this language"] = None
    context: Annotated[str | None, "context text (names, jargon) that biases recognition"] = None


SERVER_EVENTS: tuple[type[ServerEvent], ...] = (
    HelloEvent,
    StateEvent,
    UtteranceStartEvent,
    PartialEvent,
    CommitEvent,
    UtteranceEndEvent,
    OutputEvent,
    ErrorEvent,
    UtteranceWordsEvent,
)
CLIENT_MESSAGES: tuple[type[ClientMessage], ...] = (SubscribeMessage, ControlMessage, ConfigMessage)
REGISTRY: dict[str, type[_Message]] = {cls.TYPE: cls for cls in SERVER_EVENTS + CLIENT_MESSAGES}


def event_to_json(event: _Message, seq: int | None = None) -> str:
    """One wire message: ``{"v": 2, "seq": seq, "type": ..., ...fields}`` as compact JSON.

    ``seq`` is required for server events and optional (left out when ``None``) for client messages. The event is
    validated first, so whatever this returns, ``event_from_json`` accepts.
    """
    cls = type(event)
    if REGISTRY.get(getattr(cls, "TYPE", "")) is not cls:
        raise ProtocolError(f"{cls.__name__} is not a registered event type")
    envelope: dict[str, Any] = {"v": PROTOCOL_VERSION}
    if seq is not None:
        envelope["seq"] = _check(Count, seq, f"{cls.TYPE}.seq")
    elif isinstance(event, ServerEvent):
        _missing(cls, "seq")
    body = event.to_dict()
    cls.from_dict(body)  # validates every field value
    return json.dumps({**envelope, **body}, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def event_from_json(text: str | bytes) -> tuple[int | None, _Message]:
    """Parse and validate one wire message; return ``(seq, event)`` (``seq`` is ``None`` for a client message
    sent without one). Raises ``ProtocolError`` naming the offending field."""
    try:
        data = json.loads(text)
    except (ValueError, TypeError) as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ProtocolError(f"message is not valid JSON: {e}") from None
    except RecursionError:  # `[[[[...` deeper than Python's stack: hostile, not a protocol message
        raise ProtocolError("message is nested too deeply: no protocol message nests more than a few levels") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"message must be a JSON object, got {schema.describe(data)}")
    kind = data.pop("type", None)
    if kind is None:
        raise ProtocolError("type: required field is missing")
    cls = REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"type: unknown message type {schema.show(kind)} (known: {', '.join(REGISTRY)})")
    server = issubclass(cls, ServerEvent)
    if "v" in data:
        v = data.pop("v")
        if type(v) is not int or v not in ACCEPTED_VERSIONS:
            raise ProtocolError(f"{kind}.v: unsupported protocol version {schema.show(v)} (this is {PROTOCOL_VERSION})")
    elif server:
        _missing(cls, "v")
    seq = None
    if "seq" in data:
        seq = _check(Count, data.pop("seq"), f"{kind}.seq")
    elif server:
        _missing(cls, "seq")
    return seq, cls.from_dict(data)


# ---------------------------------------------------------------------------------------------- JSON schema


def json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of every wire message, generated from the dataclasses."""
    defs = {}
    for cls in SERVER_EVENTS + CLIENT_MESSAGES:
        server = issubclass(cls, ServerEvent)
        props: dict[str, Any] = {
            "v": (
                {"const": PROTOCOL_VERSION, "description": "protocol version"}
                if server
                else {"enum": list(ACCEPTED_VERSIONS), "description": "protocol version"}
            ),
            "seq": {"type": "integer", "minimum": 0, "description": "event sequence number, increasing"},
            "type": {"const": cls.TYPE},
        }
        required = ["v", "seq", "type"] if server else ["type"]
        for f in dataclasses.fields(cls):
            props[f.name] = {**schema.json_schema(f.type), "description": _doc(f.type)}
            if _required(f):
                required.append(f.name)
        defs[cls.TYPE] = {
            "title": cls.__name__,
            "description": (cls.__doc__ or "").strip(),
            "x-direction": "server-to-client" if server else "client-to-server",
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": False,
        }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"qasr-live event protocol, version {PROTOCOL_VERSION}",
        "description": "Generated by qasr_live.events.json_schema(); do not edit by hand.",
        "oneOf": [{"$ref": f"#/$defs/{name}"} for name in defs],
        "$defs": defs,
    }


def json_schema_text() -> str:
    """``json_schema()`` as the text of ``docs/events.schema.json``."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------- type machinery


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _missing(cls: type[_Message], name: str) -> typing.NoReturn:
    raise ProtocolError(f"{cls.TYPE}.{name}: required field is missing")


def _doc(tp: Any) -> str:
    """The description of an ``Annotated[type, "description"]`` field (the last metadata item)."""
    if typing.get_origin(tp) is Annotated and isinstance(tp.__metadata__[-1], str):
        return tp.__metadata__[-1]
    raise TypeError(f"field type {tp!r} is not Annotated[type, 'description']")


def _check(tp: Any, value: Any, where: str) -> Any:
    """``value`` validated against annotation ``tp`` and normalised (:func:`qasr_live.schema.check`);
    otherwise ``ProtocolError`` naming the field."""
    try:
        return schema.check(tp, value)
    except InvalidValue as e:
        raise ProtocolError(f"{where}{e.path}: {e.problem}") from None


def _copy(value: Any) -> Any:
    """A JSON-ready copy: lists and dicts copied, enum members as their plain string."""
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _unsigned_integers(node: Any) -> bool:
    """Whether every ``integer`` in a JSON schema fragment has a ``minimum`` >= 0 (a rule of the wire format)."""
    if isinstance(node, dict):
        if node.get("type") == "integer" and not node.get("minimum", -1) >= 0:
            return False
        return all(_unsigned_integers(v) for v in node.values())
    if isinstance(node, list):
        return all(_unsigned_integers(v) for v in node)
    return True


def _self_check() -> None:
    """Fail at import, not on the wire, if an event is declared wrongly."""
    if set(typing.get_args(ServerEventType)) != {cls.TYPE for cls in SERVER_EVENTS}:
        raise TypeError("ServerEventType must list exactly the TYPE of every server event")
    if len(REGISTRY) != len(SERVER_EVENTS) + len(CLIENT_MESSAGES):
        raise TypeError("two messages share a TYPE")
    for cls in REGISTRY.values():
        for f in dataclasses.fields(cls):
            if f.name in _RESERVED:
                raise TypeError(f"{cls.__name__}.{f.name}: {f.name!r} is reserved for the envelope")
            _doc(f.type)
            if not _unsigned_integers(schema.json_schema(f.type)):
                raise TypeError(f"{cls.__name__}.{f.name}: an integer of the protocol is a Count, not an int")


_self_check()

if __name__ == "__main__":
    print(json_schema_text(), end="")
