"""The WebSocket / ctl event protocol: round trips, validation, and the committed JSON schema."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from qasr_live import events
from qasr_live.errors import ProtocolError, QasrError
from qasr_live.events import (
    CLIENT_MESSAGES,
    PROTOCOL_VERSION,
    REGISTRY,
    SERVER_EVENTS,
    ClientMessage,
    CommitEvent,
    ConfigMessage,
    ControlMessage,
    ErrorEvent,
    HelloEvent,
    OutputEvent,
    PartialEvent,
    ServerEvent,
    StateEvent,
    SubscribeMessage,
    UtteranceEndEvent,
    UtteranceStartEvent,
    UtteranceWordsEvent,
    event_from_json,
    event_to_json,
    json_schema,
)

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "events.schema.json"

SAMPLES = [
    HelloEvent(protocol=PROTOCOL_VERSION, server_version="0.1.0", session_id="s-1", scopes=["read", "control"]),
    StateEvent(state="recording", mode="ptt"),
    UtteranceStartEvent(utterance_id="u1", audio_start=12.25),
    PartialEvent(utterance_id="u1", rev=0, text="hel"),
    PartialEvent(utterance_id="u1", rev=1, text="hello wor", stable_prefix_len=5),
    CommitEvent(utterance_id="u1", idx=0, text="Hello «world» 你好\n"),
    UtteranceEndEvent(utterance_id="u1", reason="silence", latency={"first_partial_ms": 180.5, "final_ms": 420.0}),
    UtteranceEndEvent(utterance_id="u2", reason="no_speech"),
    UtteranceEndEvent(utterance_id="u3", reason="silence", language="Chinese"),
    UtteranceWordsEvent(
        utterance_id="u3",
        language="Chinese",
        words=["你", "好，"],
        start=[12.5, 12.74],
        end=[12.66, 12.9],
        align_ms=41.5,
    ),
    OutputEvent(utterance_id="u1", backend="wtype", ok=True, text="Hello"),
    OutputEvent(utterance_id="u1", backend="none", ok=False, text="Hello", error="wtype not found"),
    ErrorEvent(code="bad_message", message="partial.rev: expected ...", fatal=False),
    SubscribeMessage(),
    SubscribeMessage(since_seq=41, events=["commit", "utterance_end"]),
    ControlMessage(action="ptt_press"),
    ConfigMessage(language="German", context="Qwen, llama.cpp"),
    ConfigMessage(),
]


def _valid_wire(event) -> dict:
    return json.loads(event_to_json(event, 7))


def test_samples_cover_every_message_type():
    assert {type(e).TYPE for e in SAMPLES} == set(REGISTRY)


def test_registry_holds_every_message_dataclass_of_the_module():
    declared = {
        obj
        for obj in vars(events).values()
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and issubclass(obj, ServerEvent | ClientMessage)
    }
    assert declared == set(REGISTRY.values()) == set(SERVER_EVENTS) | set(CLIENT_MESSAGES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).TYPE)
def test_round_trip_through_json(event):
    text = event_to_json(event, 123)
    wire = json.loads(text)
    assert wire["v"] == PROTOCOL_VERSION
    assert wire["seq"] == 123
    assert wire["type"] == event.TYPE
    assert event_from_json(text) == (123, event)
    assert event_from_json(text.encode("utf-8")) == (123, event)
    assert type(event).from_dict(event.to_dict()) == event
    assert dataclasses.is_dataclass(event)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(event, dataclasses.fields(event)[0].name, "changed")


def test_server_event_wire_starts_with_envelope():
    text = event_to_json(CommitEvent(utterance_id="u1", idx=2, text="x"), 9)
    assert list(json.loads(text))[:3] == ["v", "seq", "type"]
    wire = {"v": 2, "seq": 9, "type": "commit", "utterance_id": "u1", "idx": 2, "text": "x"}
    assert json.loads(text) == {**wire, "typed": None, "scratch": False}
    # protocol 2 only added optional fields: a version-1 message (without them) still parses
    assert event_from_json(json.dumps({**wire, "v": 1})) == (9, CommitEvent(utterance_id="u1", idx=2, text="x"))
    with pytest.raises(ProtocolError, match="unsupported protocol version 3"):
        event_from_json(json.dumps({**wire, "v": 3}))


def test_client_message_needs_no_seq_or_version():
    assert event_from_json('{"type": "control", "action": "toggle"}') == (None, ControlMessage(action="toggle"))
    assert event_from_json('{"type": "subscribe"}') == (None, SubscribeMessage())
    assert event_from_json('{"type": "config", "language": null}') == (None, ConfigMessage())
    text = event_to_json(ControlMessage(action="stop"))
    assert "seq" not in json.loads(text)
    assert event_from_json(text) == (None, ControlMessage(action="stop"))


def test_float_fields_accept_json_integers():
    _, event = event_from_json('{"v":1,"seq":0,"type":"utterance_start","utterance_id":"u","audio_start":3}')
    assert event == UtteranceStartEvent(utterance_id="u", audio_start=3.0)
    assert isinstance(event.audio_start, float)


def _mutated(event, **changes) -> str:
    wire = _valid_wire(event)
    for key, value in changes.items():
        if value is ...:
            del wire[key]
        else:
            wire[key] = value
    return json.dumps(wire)


PARTIAL = PartialEvent(utterance_id="u1", rev=3, text="abc")
OUTPUT = OutputEvent(utterance_id="u1", backend="pynput", ok=True, text="abc")
END = UtteranceEndEvent(utterance_id="u1", reason="silence", latency={"final_ms": 1.0})
SUB = SubscribeMessage(events=["commit"])


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (_mutated(PARTIAL, rev="3"), "partial.rev"),
        (_mutated(PARTIAL, rev=-1), "partial.rev"),
        (_mutated(PARTIAL, rev=True), "partial.rev"),
        (_mutated(PARTIAL, rev=1.5), "partial.rev"),
        (_mutated(PARTIAL, text=...), "partial.text"),
        (_mutated(PARTIAL, text=None), "partial.text"),
        (_mutated(PARTIAL, stable_prefix_len="2"), "partial.stable_prefix_len"),
        (_mutated(PARTIAL, bogus=1), "partial.bogus"),
        (_mutated(PARTIAL, seq=...), "partial.seq"),
        (_mutated(PARTIAL, seq=-4), "partial.seq"),
        (_mutated(PARTIAL, v=...), "partial.v"),
        (_mutated(PARTIAL, v=3), "partial.v"),
        (_mutated(OUTPUT, ok=1), "output.ok"),
        (_mutated(OUTPUT, backend="xdotool"), "output.backend"),
        (_mutated(END, latency={"final_ms": "fast"}), "utterance_end.latency['final_ms']"),
        (_mutated(END, latency=[1.0]), "utterance_end.latency"),
        (_mutated(END, reason="bored"), "utterance_end.reason"),
        (_mutated(StateEvent(state="idle", mode="toggle"), state="asleep"), "state.state"),
        (_mutated(HelloEvent(protocol=1, server_version="x", session_id="s", scopes=[]), scopes=["a", 2]), "scopes[1]"),
        (_mutated(SUB, events=["commit", "nope"]), "subscribe.events[1]"),
        (_mutated(SUB, since_seq="0"), "subscribe.since_seq"),
        ('{"type": "control", "action": "explode"}', "control.action"),
        ('{"type": "control"}', "control.action"),
        ('{"type": "teleport"}', "type"),
        ('{"action": "start"}', "type"),
        ('{"type": 5}', "type"),
    ],
)
def test_validation_errors_name_the_field(text, names):
    with pytest.raises(ProtocolError) as info:
        event_from_json(text)
    assert names in str(info.value)


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", '"hello"', "null", b"\xff\xfe"])
def test_malformed_messages_are_protocol_errors(text):
    with pytest.raises(ProtocolError):
        event_from_json(text)


def test_nan_is_refused():
    with pytest.raises(ProtocolError, match=r"utterance_end\.latency"):
        event_from_json(
            '{"v":1,"seq":1,"type":"utterance_end","utterance_id":"u","reason":"error","latency":{"x":NaN}}'
        )
    with pytest.raises(ProtocolError, match="audio_start"):
        event_to_json(UtteranceStartEvent(utterance_id="u", audio_start=float("inf")), 1)


def test_event_to_json_validates_what_it_sends():
    assert issubclass(ProtocolError, QasrError)
    with pytest.raises(ProtocolError, match=r"state\.state"):
        event_to_json(StateEvent(state="asleep", mode="ptt"), 1)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match=r"commit\.seq"):
        event_to_json(CommitEvent(utterance_id="u", idx=0, text="x"))  # server events need a seq
    with pytest.raises(ProtocolError, match=r"commit\.seq"):
        event_to_json(CommitEvent(utterance_id="u", idx=0, text="x"), -1)


# ------------------------------------------------------------------------------------------------- the schema


def test_committed_schema_file_equals_generated_schema():
    committed = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert committed == json_schema(), (
        "docs/events.schema.json is stale: regenerate it with `python -m qasr_live.events > docs/events.schema.json`"
    )


def test_every_dataclass_appears_in_the_schema():
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    refs = [entry["$ref"] for entry in schema["oneOf"]]
    for cls in SERVER_EVENTS + CLIENT_MESSAGES:
        definition = schema["$defs"][cls.TYPE]
        assert f"#/$defs/{cls.TYPE}" in refs
        assert definition["title"] == cls.__name__
        assert definition["properties"]["type"] == {"const": cls.TYPE}
        field_names = {f.name for f in dataclasses.fields(cls)}
        assert field_names <= set(definition["properties"])
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        required -= {f.name for f in dataclasses.fields(cls) if f.default_factory is not dataclasses.MISSING}
        expected_envelope = {"v", "seq", "type"} if issubclass(cls, ServerEvent) else {"type"}
        assert set(definition["required"]) == required | expected_envelope
    assert len(refs) == len(REGISTRY)


def _schema_errors(schema: dict, message: dict) -> list[str]:
    """Validation errors of ``message`` against ``schema``: jsonschema if installed, else a hand check."""
    try:
        import jsonschema
    except ImportError:
        definition = schema["$defs"].get(message.get("type"))
        if definition is None:
            return [f"unknown type {message.get('type')!r}"]
        errors = [f"missing {key}" for key in definition["required"] if key not in message]
        errors += [f"extra {key}" for key in message if key not in definition["properties"]]
        return errors
    validator = jsonschema.Draft202012Validator(schema)
    return [error.message for error in validator.iter_errors(message)]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).TYPE)
def test_generated_events_validate_against_the_schema(event):
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert _schema_errors(schema, json.loads(event_to_json(event, 5))) == []
    if isinstance(event, ClientMessage):
        assert _schema_errors(schema, json.loads(event_to_json(event))) == []


def test_schema_rejects_invalid_messages():
    schema = json_schema()
    wire = _valid_wire(PARTIAL)
    assert _schema_errors(schema, {k: v for k, v in wire.items() if k != "text"})
    assert _schema_errors(schema, {**wire, "bogus": 1})
    assert _schema_errors(schema, {k: v for k, v in wire.items() if k != "seq"})
    assert _schema_errors(schema, {"type": "teleport"})


def test_version_1_clients_are_still_understood():
    """Version 2 only added an event and a field: a client message stamped v 1 parses as before."""
    _, message = event_from_json('{"v": 1, "type": "control", "action": "toggle"}')
    assert message == ControlMessage(action="toggle")
    with pytest.raises(ProtocolError, match="unsupported protocol version 3"):
        event_from_json('{"v": 3, "type": "control", "action": "toggle"}')
