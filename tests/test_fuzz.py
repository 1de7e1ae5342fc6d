"""Hostile and random input against everything that parses it: the daemon's WebSocket messages and handshake query
strings and its ctl socket (one real daemon, real sockets), config.yaml and journal lines (in-process).

Properties: no crash (the daemon stays up, nothing answers 5xx or drops a connection without a reply), one clear
error per bad input (one ``error`` event / one ``ok: false`` line / one ``ConfigError`` whose message names the
place), and no wedge: after the fuzzing a fresh subscriber still gets a commit for new speech.

The budget is bounded for the normal run (``FUZZ_EXAMPLES`` per target, about a minute for the file); set
``QASR_FUZZ_EXAMPLES`` (e.g. 2000) for a longer run. The inputs tried per target are printed in the figures at
the end of the run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devkit.daemon_checks import commits_by_utterance
from devkit.daemon_harness import RealtimeMic, RunningDaemon, write_config
from devkit.demo_speech import known_sentences
from qasr_live.config import section_keys, sections
from qasr_live.config_file import parse_config
from qasr_live.errors import ConfigError, QasrError
from qasr_live.events import CLIENT_MESSAGES, SERVER_EVENTS, ControlAction
from qasr_live.model_store import DEMO_MODEL
from qasr_live.outputs.journal import Journal, JournalEntry

FUZZ_EXAMPLES = int(os.environ.get("QASR_FUZZ_EXAMPLES", "200"))
SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,  # no example database written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
TRIED: Counter[str] = Counter()
# The WebSocket clients of this module run keepalive pings on their own threads, and websockets draws each ping's
# payload from the `random` module: hypothesis sees the global random state move while it draws an example and
# takes it for a strategy using `random` (a deprecation warning, an error here). Nothing in these strategies does.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
RATE = 16000

# ----------------------------------------------------------------------------------------------------- strategies

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
_TYPES = [cls.TYPE for cls in CLIENT_MESSAGES + SERVER_EVENTS] + ["", "Control", "bogus"]
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(_TYPES) | json_values},
    optional={
        "action": st.sampled_from([str(a) for a in ControlAction]) | json_values,
        "language": st.sampled_from(["English", "english", "", "Klingon"]) | json_values,
        "context": st.text(max_size=60) | json_values,
        "since_seq": st.integers(min_value=-5, max_value=10**30) | json_values,
        "events": st.lists(st.sampled_from([cls.TYPE for cls in SERVER_EVENTS] + ["nope"]), max_size=3) | json_values,
        "v": st.sampled_from([1, 2, "1", None]),
        "seq": json_values,
        "extra": json_values,
    },
)
frames = (
    messages.map(json.dumps)
    | st.text(max_size=300)
    | st.binary(max_size=100)
    | st.integers(1, 20000).map(lambda n: "[" * n + "]" * n)
    | st.integers(1, 20000).map(lambda n: '{"type":"control","action":' + "{" * n)
)


def _valid_client_message(frame: str | bytes) -> bool:
    try:
        data = json.loads(frame)
    except (ValueError, TypeError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("type") in [cls.TYPE for cls in CLIENT_MESSAGES]


# ------------------------------------------------------------------------------------------------------- daemon


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    audio = known_sentences(DEMO_MODEL, 1, seed=5)[0][1]
    return (audio / (np.max(np.abs(audio)) + 1e-9) * 0.5 * 32767).astype(np.int16)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    config = write_config(
        tmp / "config.yaml",
        DEMO_MODEL,
        tmp,
        audio={"source": "-"},
        trigger={"mode": "ptt"},
        typing={"enabled": False},
        hotkeys={"enabled": False},
        streaming={"partial_interval_ms": 250, "memory_tokens": 0},
    )
    d = RunningDaemon(config, tmp, stdin=subprocess.PIPE)
    mic = RealtimeMic(d.proc.stdin)
    yield d, mic
    mic.close()
    code = d.stop()
    assert code == 0 and "Traceback" not in d.log() and "Fatal Python error" not in d.log(), d.log()[-3000:]


@pytest.fixture(scope="module")
def client(daemon):
    d, _ = daemon
    c = d.subscribe()
    yield c
    c.close()


def test_websocket_messages(daemon, client) -> None:
    d, _ = daemon
    state = {"marker": 0, "seen": 0}

    @SETTINGS
    @given(frame=frames)
    def one(frame: str | bytes) -> None:
        TRIED["websocket message"] += 1
        client.send_raw(frame)
        state["marker"] += 1
        marker = f"fuzz-marker-{state['marker']}"
        client.send({"type": marker})  # its error reply closes the replies to ``frame``
        client.wait_for(lambda e: e["type"] == "error" and marker in e["message"], timeout=30)
        errors = client.of_type("error")[state["seen"] :]
        state["seen"] += len(errors)
        replies = errors[:-1]
        assert len(replies) <= 1, (frame, replies)
        if not _valid_client_message(frame):
            assert len(replies) == 1, (frame, replies)
        for e in replies:
            assert e["code"] in {"bad_message", "forbidden", "control_failed", "config_failed"}, e
            assert e["message"] and "\n" not in e["message"] and e["seq"] == 0 and not e["fatal"], e

    one()
    # whatever the fuzzing pressed or configured: back to a known state
    client.send({"type": "config", "language": "", "context": ""})
    client.send({"type": "control", "action": "cancel"})
    client.send({"type": "control", "action": "ptt_release"})
    assert d.alive()
    assert "Traceback" not in d.log()


_HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
)
_QUERY_ALPHABET = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
queries = st.lists(
    st.tuples(
        st.sampled_from(["token", "since_seq", "session", "events", "x", ""]) | st.text(_QUERY_ALPHABET, max_size=8),
        st.text(_QUERY_ALPHABET, max_size=40) | st.integers(0, 10**40).map(str) | st.just("9" * 5000),
    ),
    max_size=4,
)


def test_websocket_query_strings(daemon) -> None:
    d, _ = daemon
    url = urlsplit(d.url)
    token = d.token()

    @SETTINGS
    @given(query=queries, with_token=st.booleans())
    def one(query: list[tuple[str, str]], with_token: bool) -> None:
        TRIED["websocket query string"] += 1
        path = "/?" + "&".join(f"{k}={v}" for k, v in query)
        auth = f"Authorization: Bearer {token}\r\n" if with_token else ""
        with socket.create_connection((url.hostname, url.port), timeout=10) as s:
            s.sendall(_HANDSHAKE.format(path=path, auth=auth).encode())
            status = s.makefile("rb").readline().split()
        assert len(status) >= 2 and status[0] == b"HTTP/1.1", status
        assert status[1] in {b"101", b"400", b"401", b"403", b"404", b"414"}, (path, status)

    one()
    assert d.alive()


ctl_lines = (
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b""))
    | st.text(max_size=100).map(lambda t: t.replace("\n", "").encode("utf-8", "surrogatepass"))
    | st.fixed_dictionaries({"command": st.sampled_from(["status", "nope", "STATUS", "ptt_release"]) | json_values})
    .map(json.dumps)
    .map(str.encode)
    | st.integers(1, 20000).map(lambda n: b'{"command":' + b"[" * n)
)


def test_ctl_requests(daemon) -> None:
    d, _ = daemon
    path = str(d.runtime_dir / "ctl.sock")

    @SETTINGS
    @given(line=ctl_lines)
    def one(line: bytes) -> None:
        TRIED["ctl request"] += 1
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(line + b"\n")
            reply = json.loads(s.makefile("rb").readline())
        assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), (line, reply)
        if not reply["ok"]:
            assert isinstance(reply["error"], str) and reply["error"] and "\n" not in reply["error"], reply

    one()
    assert d.alive() and "Traceback" not in d.log()


def test_no_wedge_after_fuzzing(daemon, client, sentence) -> None:
    """Runs after the targets above (file order): a fresh subscriber gets a commit for new speech."""
    d, mic = daemon
    # the fuzzing may have pressed the key (a random ctl line can be a valid command): release it, as a user would
    d.ctl("ptt-release")
    deadline = time.monotonic() + 30
    while d.status()["state"] != "idle":
        assert time.monotonic() < deadline, d.status()
        time.sleep(0.2)
    fresh = d.subscribe()
    d.ctl("ptt-press")
    mic.say(np.concatenate([sentence, np.zeros(RATE // 4, np.int16)]))
    d.ctl("ptt-release")
    end = fresh.wait_for(lambda e: e["type"] == "utterance_end" and e.get("reason") == "key_release", timeout=60)
    fresh.close()
    assert commits_by_utterance(fresh.events).get(end["utterance_id"], "").strip()


# ----------------------------------------------------------------------------------------- in-process parsers

_KEYS = {name: list(section_keys(cls)) for name, cls in sections().items()}
config_trees = st.dictionaries(
    st.sampled_from(list(_KEYS)) | st.text(max_size=8),
    st.none()
    | json_values
    | st.dictionaries(st.sampled_from(sorted({k for keys in _KEYS.values() for k in keys})), json_values, max_size=4),
    max_size=4,
)


@SETTINGS
@given(document=config_trees.map(lambda t: yaml.safe_dump(t, allow_unicode=True)) | st.text(max_size=300))
def test_config_yaml(document: str) -> None:
    TRIED["config.yaml"] += 1
    try:
        parse_config(document, "fuzz.yaml")
    except ConfigError as e:
        message = str(e)
        assert message.startswith("fuzz.yaml") and message.strip(), message
        assert "Traceback" not in message


entries = st.builds(
    JournalEntry,
    seq=st.integers(-2, 10**20),
    time=st.text(max_size=10),
    utterance_id=st.text(max_size=8),
    idx=st.integers(-2, 5),
    text=st.text(max_size=30),
    audio_start=st.floats(allow_nan=False) | st.integers(),
    audio_end=st.floats(allow_nan=False),
).map(lambda e: json.dumps(e.to_dict()).encode())
journal_lines = st.lists(
    entries | st.binary(max_size=80) | json_values.map(lambda v: json.dumps(v).encode()), max_size=6
)


@SETTINGS
@given(lines=journal_lines, torn=st.binary(max_size=40))
def test_journal_lines(tmp_path: Path, lines: list[bytes], torn: bytes) -> None:
    TRIED["journal file"] += 1
    for line in lines:
        assert JournalEntry.from_line(line) is None or JournalEntry.from_line(line).seq >= 1
    path = tmp_path / f"journal-{TRIED['journal file']}.jsonl"
    lines = [line.replace(b"\n", b" ") for line in lines]
    path.write_bytes(b"".join(line + b"\n" for line in lines) + torn.replace(b"\n", b" "))
    try:
        journal = Journal(path)
    except QasrError as e:  # a long tail without a newline: refused, with what to do
        assert str(e) and "\n" not in str(e)
        return
    with journal:
        valid = [e for e in (JournalEntry.from_line(line) for line in lines) if e is not None]
        completed = JournalEntry.from_line(torn.replace(b"\n", b" "))  # a last line that lacked only its newline
        assert journal.last_seq == (valid[-1].seq if valid else 0) or completed is not None
        seq = journal.append("u", 0, "text", 0.0, 1.0)
        assert seq == journal.last_seq
        assert journal.tail(1)[0].text == "text" and journal.tail(1)[0].seq == seq


def test_report_inputs_tried(report) -> None:
    for target, n in sorted(TRIED.items()):
        report(f"fuzz: {n} inputs tried on {target} (max_examples {FUZZ_EXAMPLES})")
    assert TRIED
