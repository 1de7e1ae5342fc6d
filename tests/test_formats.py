"""Transcript writers: exact txt/srt/json contents and atomic writes."""

from __future__ import annotations

import json
import os

import pytest

from qasr_live.offline import formats
from qasr_live.offline.formats import FORMATS, CueLimits, render, write_outputs
from qasr_live.offline.transcript import Segment, Stats, Transcript


def sample() -> Transcript:
    return Transcript(
        text="Hello world. Ünïcode 你好",
        language="English",
        segments=[
            Segment(0.0, 1.5, "Hello world."),
            Segment(1.5, 3.25, "   "),
            Segment(3661.2, 3662.0, "Ünïcode 你好"),
        ],
        token_ids=[9707, 1879, 13, 151645],
        stats=Stats(audio_seconds=10.0, wall_seconds=2.0, prefill_tokens=100, prefill_seconds=0.5),
    )


def test_formats_tuple():
    assert FORMATS == ("txt", "srt", "vtt", "json")


def test_txt():
    assert render(sample(), "txt") == "Hello world. Ünïcode 你好\n"


def test_srt_exact():
    assert render(sample(), "srt") == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello world.\n\n2\n01:01:01,200 --> 01:01:02,000\nÜnïcode 你好\n\n"
    )


def test_srt_timestamp_rounding():
    t = Transcript(text="a", language=None, segments=[Segment(59.9996, 60.0004, "a")])
    assert "00:01:00,000 --> 00:01:00,000" in render(t, "srt")


def test_srt_splits_long_segment_proportionally():
    text = " ".join(["x" * 40, "y" * 40, "z" * 40])  # 122 chars: cues of 81 and 40 characters
    t = Transcript(text=text, language=None, segments=[Segment(10.0, 20.0, text)])
    # 10 s shared 81:40 -> the cut is at 10 + 10 * 81 / 121 = 16.694 s
    assert render(t, "srt") == (
        f"1\n00:00:10,000 --> 00:00:16,694\n{'x' * 40} {'y' * 40}\n\n2\n00:00:16,694 --> 00:00:20,000\n{'z' * 40}\n\n"
    )


def test_srt_splits_unspaced_text():
    text = "字" * 200
    t = Transcript(text=text, language="Chinese", segments=[Segment(0.0, 20.0, text)])
    cues = render(t, "srt").split("\n\n")
    assert cues[-1] == ""
    cues = [c.split("\n") for c in cues[:-1]]
    assert [c[0] for c in cues] == ["1", "2", "3"]
    assert [len(c[2]) for c in cues] == [84, 84, 32]
    assert [c[1] for c in cues] == [
        "00:00:00,000 --> 00:00:08,400",
        "00:00:08,400 --> 00:00:16,800",
        "00:00:16,800 --> 00:00:20,000",
    ]
    assert "".join(c[2] for c in cues) == text


def test_srt_no_segments_is_empty():
    assert render(Transcript(text="", language=None), "srt") == ""


def test_json_round_trip():
    t = sample()
    raw = render(t, "json")
    assert "你好" in raw and "\\u" not in raw  # ensure_ascii=False
    assert raw.startswith('{\n  "text"')  # indent 2
    doc = json.loads(raw)
    assert doc == {
        "text": t.text,
        "language": "English",
        "segments": [{"start": s.start, "end": s.end, "text": s.text} for s in t.segments],
        "token_ids": [9707, 1879, 13, 151645],
        "stats": t.stats.to_dict(),
    }
    assert doc["stats"]["rtf"] == 0.2 and doc["stats"]["prefill_tps"] == 200.0
    rebuilt = Transcript(
        text=doc["text"],
        language=doc["language"],
        segments=[Segment(**s) for s in doc["segments"]],
        token_ids=doc["token_ids"],
        stats=Stats(**{k: v for k, v in doc["stats"].items() if k not in ("rtf", "prefill_tps", "generate_tps")}),
    )
    assert rebuilt == t


def test_unknown_format():
    with pytest.raises(ValueError, match="valid formats: txt, srt, vtt, json"):
        render(sample(), "ass")


def test_write_outputs_next_to_audio(tmp_path):
    audio = tmp_path / "talk.final.wav"
    audio.write_bytes(b"")
    paths = write_outputs(sample(), audio, ["srt", "txt", "json"])
    assert paths == [tmp_path / "talk.final.srt", tmp_path / "talk.final.txt", tmp_path / "talk.final.json"]
    for p, fmt in zip(paths, ("srt", "txt", "json"), strict=True):
        assert p.read_bytes() == render(sample(), fmt).encode("utf-8")
    assert sorted(os.listdir(tmp_path)) == [
        "talk.final.json",
        "talk.final.srt",
        "talk.final.txt",
        "talk.final.wav",
    ]


def test_write_outputs_into_out_dir(tmp_path):
    out = tmp_path / "out" / "nested"
    paths = write_outputs(sample(), tmp_path / "in" / "a.mp3", ("txt",), out_dir=out)
    assert paths == [out / "a.txt"]
    assert (out / "a.txt").read_text(encoding="utf-8") == "Hello world. Ünïcode 你好\n"
    assert os.listdir(out) == ["a.txt"]
    assert not (tmp_path / "in").exists()


def test_write_outputs_overwrites(tmp_path):
    (tmp_path / "a.txt").write_text("old and much longer content\n")
    write_outputs(sample(), tmp_path / "a.wav", ["txt"])
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "Hello world. Ünïcode 你好\n"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_write_is_atomic(tmp_path, monkeypatch):
    """If the final rename fails the old file is intact and no temporary file is left behind."""
    (tmp_path / "a.txt").write_text("old\n")

    def boom(src, dst):
        assert os.path.dirname(src) == os.path.dirname(dst)  # temp file lives in the target directory
        with open(src, encoding="utf-8") as f:
            assert f.read() == "Hello world. Ünïcode 你好\n"
        raise OSError("disk on fire")

    monkeypatch.setattr(formats.os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        write_outputs(sample(), tmp_path / "a.wav", ["txt"])
    assert (tmp_path / "a.txt").read_text() == "old\n"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_written_file_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        (path,) = write_outputs(sample(), tmp_path / "a.wav", ["txt"])
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_write_outputs_rejects_unknown_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"'doc'.*txt, srt, vtt, json"):
        write_outputs(sample(), tmp_path / "a.wav", ["txt", "doc"])
    assert os.listdir(tmp_path) == []


def _timed(text: str, start: float, step: float, words: list[str]) -> Segment:
    from qasr_live.offline.transcript import Word

    timed = tuple(
        Word(w, round(start + i * step, 3), round(start + i * step + step * 0.8, 3)) for i, w in enumerate(words)
    )
    return Segment(start, start + len(words) * step, text, timed)


def _cue_blocks(srt: str) -> list[tuple[float, float, list[str]]]:
    def seconds(stamp: str) -> float:
        h, m, rest = stamp.split(":")
        s, ms = rest.split(",")
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    cues = []
    for block in srt.strip().split("\n\n"):
        lines = block.split("\n")
        a, b = lines[1].split(" --> ")
        cues.append((seconds(a), seconds(b), lines[2:]))
    return cues


LONG_SENTENCE = "Hello, world! This is a test of the cue cutter, which never splits a word."


@pytest.mark.parametrize(
    ("text", "words", "limits"),
    [
        (
            LONG_SENTENCE,
            LONG_SENTENCE.split(),
            CueLimits(max_seconds=3.0, line_chars=12, lines=2),
        ),
        (
            "你好，世界。不能算是我们的问题",
            ["你", "好，", "世", "界。", "不", "能", "算", "是", "我", "们", "的", "问", "题"],
            CueLimits(max_seconds=2.0, line_chars=4, lines=1),
        ),
        (
            "supercalifragilistic word",
            ["supercalifragilistic", "word"],
            CueLimits(max_seconds=6.0, line_chars=8, lines=2),
        ),
    ],
)
def test_word_cues_respect_the_limits_and_never_split_a_word(text, words, limits):
    seg = _timed(text, 10.0, 0.4, words)
    cues = _cue_blocks(render(Transcript(text=text, language=None, segments=[seg]), "srt", limits))
    starts = {w.start for w in seg.words}
    shown: list[str] = []
    for a, _, lines in cues:
        assert a in starts  # every cue starts at a word
        assert len(lines) <= limits.lines
        for line in lines:
            assert len(line) <= limits.line_chars or line in words  # only a word longer than a line overflows
        shown += lines
    joined = "".join(shown).replace(" ", "")
    assert joined == "".join(words)  # every word once, in order, whole
    spans = [(a, b) for a, b, _ in cues]
    assert all(b - a <= limits.max_seconds + 0.4 for a, b in spans)
    vtt = render(Transcript(text=text, language=None, segments=[seg]), "vtt", limits)
    assert vtt.startswith("WEBVTT\n\n") and vtt.count(" --> ") == len(cues)


def test_json_carries_words_only_when_aligned():
    seg = _timed("Hello world.", 0.0, 0.5, ["Hello", "world."])
    doc = json.loads(
        render(Transcript(text="Hello world.", language="English", segments=[seg, Segment(1, 2, "x")]), "json")
    )
    assert doc["segments"][0]["words"] == [
        {"text": "Hello", "start": 0.0, "end": 0.4},
        {"text": "world.", "start": 0.5, "end": 0.9},
    ]
    assert "words" not in doc["segments"][1]
