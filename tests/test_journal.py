"""The transcript journal: durable appends, seq continuity across restarts, torn-line repair, reading back."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from qasr_live.errors import QasrError
from qasr_live.outputs import journal as journal_mod
from qasr_live.outputs.journal import Journal, JournalEntry, default_journal_path, format_history, read_entries


def _fill(j: Journal, n: int, utterance: str = "u1") -> list[int]:
    return [j.append(utterance, i, f"text {i}", i * 1.0, i + 0.5) for i in range(n)]


def _raw_lines(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def test_append_returns_increasing_seq_and_writes_one_line_each(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        assert j.last_seq == 0
        assert _fill(j, 3) == [1, 2, 3]
        assert j.last_seq == 3
    lines = _raw_lines(path)
    assert [d["seq"] for d in lines] == [1, 2, 3]
    assert lines[1] == {**lines[1], "utterance_id": "u1", "idx": 1, "text": "text 1", "audio_start": 1.0}
    assert "T" in lines[0]["time"]  # ISO 8601 timestamp


def test_seq_is_monotonic_across_reopen(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        _fill(j, 2)
    with Journal(path) as j:
        assert j.last_seq == 2
        assert j.append("u2", 0, "again", 3.0, 4.0) == 3
    with Journal(path) as j:
        assert j.append("u3", 0, "and again", 5.0, 6.0) == 4
        assert [e.seq for e in j.tail(10)] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "torn",
    [b'{"seq":4,"time":"2025-01-01T00:00', b"\x00" * 300, b"garbage", b'{"seq":4,"text":"\xe4\xbd'],
    ids=["half-json", "nul-block", "garbage", "half-utf8"],
)
def test_torn_last_line_is_cut_off_and_earlier_lines_survive(tmp_path, torn):
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        _fill(j, 3)
    intact = path.read_bytes()
    with open(path, "ab") as f:
        f.write(torn)
    with Journal(path) as j:
        assert j.last_seq == 3
        assert path.read_bytes() == intact  # repaired: the torn bytes are gone, nothing else
        assert j.append("u2", 0, "after the crash", 9.0, 10.0) == 4
    assert [d["seq"] for d in _raw_lines(path)] == [1, 2, 3, 4]
    assert [e.text for e in read_entries(path)] == ["text 0", "text 1", "text 2", "after the crash"]


def test_last_line_missing_only_its_newline_is_kept(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        _fill(j, 2)
    line = JournalEntry(
        seq=3, time="2025-01-01T00:00:00+00:00", utterance_id="u9", idx=0, text="kept", audio_start=0, audio_end=1
    )
    with open(path, "ab") as f:
        f.write(line.to_line().rstrip(b"\n"))
    with Journal(path) as j:
        assert j.last_seq == 3
        assert j.append("u9", 1, " too", 1.0, 2.0) == 4
    assert [d["text"] for d in _raw_lines(path)] == ["text 0", "text 1", "kept", " too"]


def test_invalid_complete_line_is_skipped_not_deleted(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        _fill(j, 2)
    with open(path, "ab") as f:
        f.write(b"not json\n")
    with Journal(path) as j:
        assert j.last_seq == 2
        assert j.append("u2", 0, "next", 0.0, 1.0) == 3
        assert [e.seq for e in j.tail(5)] == [1, 2, 3]
    assert b"not json\n" in path.read_bytes()


def test_file_created_0600_with_parent_directories(tmp_path):
    path = tmp_path / "state" / "qasr-live" / "journal.jsonl"
    old = os.umask(0)  # the journal must not depend on a restrictive umask
    try:
        with Journal(path) as j:
            j.append("u1", 0, "secret", 0.0, 1.0)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.parent.is_dir()


def test_append_fsyncs_the_written_line_before_returning(tmp_path, monkeypatch):
    path = tmp_path / "j.jsonl"
    real_fsync = os.fsync
    seen = []  # (fd, file contents at the time of the fsync)

    def recording_fsync(fd):
        seen.append((fd, path.read_bytes() if path.exists() else b""))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with Journal(path) as j:
        seen.clear()
        j.append("u1", 0, "durable", 0.0, 1.0)
        assert len(seen) == 1
        fd, contents = seen[0]
        assert fd == j._fd
        assert contents.endswith(b'"text":"durable","audio_start":0.0,"audio_end":1.0,"typed":null,"scratch":false}\n')
        j.append("u1", 1, "twice", 1.0, 2.0)
        assert len(seen) == 2


def test_failed_write_leaves_no_partial_line(tmp_path, monkeypatch):
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        _fill(j, 2)
        real_write = os.write

        def half_then_fail(fd, data):
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "write", half_then_fail)
        with pytest.raises(OSError):
            j.append("u2", 0, "lost", 0.0, 1.0)
        monkeypatch.setattr(os, "write", real_write)
        assert j.append("u2", 0, "retried", 0.0, 1.0) == 3
    assert [d["text"] for d in _raw_lines(path)] == ["text 0", "text 1", "retried"]


def test_append_rejects_bad_arguments_without_writing(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        with pytest.raises(ValueError, match="idx"):
            j.append("u1", -1, "x", 0.0, 1.0)
        with pytest.raises(ValueError, match="audio_end"):
            j.append("u1", 0, "x", 0.0, float("nan"))
        with pytest.raises(TypeError):
            j.append("u1", 0, None, 0.0, 1.0)
        assert j.append("u1", 0, "ok", 0.0, 1.0) == 1
    assert len(_raw_lines(path)) == 1


def test_tail_and_since(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_mod, "_BLOCK", 37)  # read backwards across many small blocks
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        _fill(j, 3, "a")
        _fill(j, 4, "b")
        assert [e.seq for e in j.tail(2)] == [6, 7]
        assert [e.seq for e in j.tail(100)] == list(range(1, 8))
        assert j.tail(0) == []
        assert [(e.utterance_id, e.idx, e.text) for e in j.since(5)] == [("b", 2, "text 2"), ("b", 3, "text 3")]
        assert [e.seq for e in j.since(0)] == list(range(1, 8))
        assert j.since(7) == []
        assert j.tail(1)[0] == read_entries(path)[-1]
    with Journal(path) as j:  # also after a reopen
        assert [e.seq for e in j.since(4)] == [5, 6, 7]


def test_second_writer_is_refused_while_open(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path)
    try:
        with pytest.raises(QasrError, match="in use"):
            Journal(path)
    finally:
        j.close()
    with Journal(path) as again:
        assert again.append("u1", 0, "x", 0.0, 1.0) == 1


def test_closed_journal_refuses_appends(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    j.close()
    with pytest.raises(ValueError, match="closed"):
        j.append("u1", 0, "x", 0.0, 1.0)


def test_read_entries_skips_torn_tail_without_repairing(tmp_path):
    path = tmp_path / "j.jsonl"
    assert read_entries(path) == []
    with Journal(path) as j:
        _fill(j, 2)
    with open(path, "ab") as f:
        f.write(b'{"seq":3')
    before = path.read_bytes()
    assert [e.seq for e in read_entries(path)] == [1, 2]
    assert path.read_bytes() == before


def test_default_journal_path(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_journal_path() == tmp_path / "xdg" / "qasr-live" / "journal.jsonl"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_journal_path() == tmp_path / "home" / ".local" / "state" / "qasr-live" / "journal.jsonl"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/dir")  # the XDG spec says to ignore relative paths
    assert default_journal_path() == tmp_path / "home" / ".local" / "state" / "qasr-live" / "journal.jsonl"


def _entry(seq, time, utterance_id, idx, text):
    return JournalEntry(
        seq=seq, time=time, utterance_id=utterance_id, idx=idx, text=text, audio_start=0.0, audio_end=1.0
    )


def test_format_history_groups_utterances():
    def local(stamp):  # history shows local time; these stamps stay on distinct days in every time zone
        return datetime.fromisoformat(stamp).astimezone()

    day1, day2 = "2025-03-01T12:00:00.000+00:00", "2025-03-05T12:00:00.500+00:00"
    entries = [
        _entry(1, day1, "u1", 0, "Hello"),
        _entry(2, "2025-03-01T12:00:01.000+00:00", "u1", 1, " world."),
        _entry(3, day2, "u2", 0, "Line one\nline two"),
        _entry(4, "2025-03-05T12:00:02.000+00:00", "u3", 0, "Third."),
    ]
    assert format_history(entries) == (
        f"{local(day1):%Y-%m-%d}\n"
        f"  {local(day1):%H:%M:%S}  Hello world.\n"
        f"{local(day2):%Y-%m-%d}\n"
        f"  {local(day2):%H:%M:%S}  Line one\n"
        "            line two\n"
        f"  {local(day2) + timedelta(seconds=1.5):%H:%M:%S}  Third.\n"
    )
    assert format_history([]) == ""
