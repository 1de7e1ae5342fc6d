"""VadSegmenter and trim() on real speech (espeak-ng), silence, noise, clicks and bursts.

Every event list goes through ``_utterances``, which checks the event grammar and the audio invariant: the
``SpeechAudio`` blocks of an utterance are contiguous and concatenate to exactly ``input[start:end]``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.signal import butter, sosfilt

from qasr_live.audio.vad import (
    NoSpeech,
    SpeechAudio,
    SpeechEnd,
    SpeechStart,
    VadEvent,
    VadSegmenter,
    trim,
)
from qasr_live.config import VadConfig
from qasr_live.errors import ConfigError

SR = 16000
MS = SR // 1000
DEFAULT = VadConfig()
FRAME = DEFAULT.frame_ms * MS
PRE_ROLL = DEFAULT.pre_roll_ms * MS
HANGOVER = DEFAULT.hangover_ms * MS

# no commas (espeak pauses there) and each under ~2.5 s, so any 3 s stretch of the 40 s stream holds a gap
SENTENCES = [
    "The weekly meeting starts at nine tomorrow morning.",
    "She sent the signed letter to the bank by mail.",
    "My younger brother plays the guitar remarkably well.",
    "The evening train was twenty minutes late again.",
    "This old song always reminds me of the summer.",
    "He finally bought a new pair of running shoes.",
    "The garden looks especially lovely in early spring.",
    "Our local team won the final match last night.",
    "Heavy rain is expected later tonight in the north.",
    "I think I forgot my house keys at home today.",
    "Dinner will be ready in about fifteen minutes.",
    "They walked slowly along the quiet sandy beach.",
    "The office printer has run out of paper again.",
]


# -- helpers ---------------------------------------------------------------------------------------------------


@dataclass
class Utt:
    start: int
    end: int
    kind: str  # "speech" or "nospeech"
    reason: str | None


def _utterances(events: list[VadEvent], x: np.ndarray) -> list[Utt]:
    """Parse events into utterances, asserting the grammar and that the audio equals ``x[start:end]``."""
    out: list[Utt] = []
    start: int | None = None
    audio: list[np.ndarray] = []
    nxt = 0
    for ev in events:
        if isinstance(ev, SpeechStart):
            assert start is None, "SpeechStart inside an utterance"
            assert not out or ev.start_sample >= out[-1].end, "utterances overlap"
            start, nxt, audio = ev.start_sample, ev.start_sample, []
        elif isinstance(ev, SpeechAudio):
            assert start is not None, "SpeechAudio outside an utterance"
            assert ev.start_sample == nxt, "SpeechAudio blocks are not contiguous"
            assert ev.pcm.dtype == np.int16 and len(ev.pcm) > 0
            audio.append(ev.pcm)
            nxt = ev.end_sample
        else:
            assert start is not None, f"{ev} outside an utterance"
            end = ev.end_sample
            assert end == nxt, "the utterance's audio does not reach its end sample"
            got = np.concatenate(audio)
            np.testing.assert_array_equal(got, x[start:end])
            if isinstance(ev, SpeechEnd):
                out.append(Utt(start, end, "speech", ev.reason))
            else:
                assert isinstance(ev, NoSpeech) and ev.start_sample == start
                out.append(Utt(start, end, "nospeech", None))
            start = None
    assert start is None, "utterance left open after flush()"
    return out


def _run(x: np.ndarray, options: VadConfig | None = None) -> list[VadEvent]:
    seg = VadSegmenter(options)
    return seg.feed(x) + seg.flush()


def _segments(x: np.ndarray, options: VadConfig | None = None) -> list[Utt]:
    return _utterances(_run(x, options), x)


def _noise(n: int, dbfs: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(rng.standard_normal(n) * 32768 * 10 ** (dbfs / 20)).astype(np.int16)


def _at_peak_frame_dbfs(y: np.ndarray, dbfs: float) -> np.ndarray:
    """``y`` scaled so that its loudest frame has an RMS of ``dbfs``."""
    y = y.astype(np.float64)
    frames = y[: len(y) // FRAME * FRAME].reshape(-1, FRAME)
    loudest = np.sqrt((frames**2).mean(axis=1)).max()
    return np.round(y * (32768 * 10 ** (dbfs / 20)) / loudest).astype(np.int16)


def _pad(speech: np.ndarray, lead: int, tail: int, seed: int = 0) -> np.ndarray:
    """``speech`` between ``lead`` and ``tail`` samples of -65 dBFS noise (below the RMS floor), noise over all."""
    x = np.concatenate([np.zeros(lead, np.int16), speech, np.zeros(tail, np.int16)])
    return (x.astype(np.int32) + _noise(len(x), -65, seed)).clip(-32768, 32767).astype(np.int16)


# -- silence, noise, clicks ------------------------------------------------------------------------------------


def test_silence_gives_no_events():
    assert _run(np.zeros(5 * SR, np.int16)) == []


def test_noise_below_rms_floor_gives_nothing():
    # babble-like noise: 200-1200 Hz, modulated at a syllable rate of 4 Hz, loudest frame at -60 dBFS
    t = np.arange(4 * SR) / SR
    band = sosfilt(butter(4, [200, 1200], "bandpass", fs=SR, output="sos"), _noise(len(t), -20).astype(np.float64))
    band *= 1 + np.sin(2 * np.pi * 4 * t)
    x = _at_peak_frame_dbfs(band, -60)
    assert _run(x) == []
    # webrtcvad alone calls this noise speech: the RMS floor is what keeps it out
    assert any(isinstance(e, SpeechStart) for e in _run(x, VadConfig(rms_floor_dbfs=-120.0)))


def test_quiet_speech_below_rms_floor_is_ignored(say):
    quiet = _at_peak_frame_dbfs(say("The quick brown fox jumps over the lazy dog."), -60)
    x = np.concatenate([np.zeros(SR, np.int16), quiet, np.zeros(SR, np.int16)])
    assert _run(x) == []
    # a distant voice is still speech to webrtcvad; only the floor keeps it out
    utts = _segments(x, VadConfig(rms_floor_dbfs=-120.0))
    assert [u.kind for u in utts] == ["speech"]


def test_click_does_not_pass_start_hysteresis():
    x = np.zeros(2 * SR, np.int16)
    x[SR : SR + 5 * MS] = 20000 * np.sign(np.sin(np.arange(5 * MS)))
    assert _run(x) == []
    # the click is voiced for webrtcvad: with a one-frame start condition it would open an utterance
    utts = _segments(x, VadConfig(start_ms=30))
    assert [u.kind for u in utts] == ["nospeech"]


def test_short_burst_is_reported_as_no_speech(say):
    ah = say("ah")
    mid = len(ah) // 2
    burst = ah[mid - 90 * MS : mid + 90 * MS]  # 180 ms: passes the start hysteresis, shorter than min_speech_ms
    x = _pad(burst, SR, SR)
    events = _run(x)
    assert isinstance(events[0], SpeechStart) and isinstance(events[1], SpeechAudio)  # streamed before judged
    assert not any(isinstance(e, SpeechEnd) for e in events)
    utts = _utterances(events, x)
    assert [u.kind for u in utts] == ["nospeech"]
    # the same burst is an utterance when no minimum applies: NoSpeech is min_speech_ms at work
    assert [u.kind for u in _segments(x, VadConfig(min_speech_ms=0))] == ["speech"]


# -- utterance boundaries --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "Hello world.",
        "Send the report to Maria before Friday.",
    ],
)
def test_single_utterance_boundaries(say, text):
    speech = say(text)
    lead, tail = SR + 123, 2 * SR  # lead off the frame grid
    x = _pad(speech, lead, tail)
    onset, offset = lead, lead + len(speech)
    (u,) = _segments(x)
    assert u.kind == "speech" and u.reason == "silence"
    # the utterance starts a pre-roll before the first voiced frame (at most a frame or so late)
    assert onset - PRE_ROLL - FRAME <= u.start <= onset - PRE_ROLL + 3 * FRAME
    # ... and ends a hangover after the last voiced frame
    assert abs(u.end - (offset + HANGOVER)) <= 100 * MS


def test_events_stream_as_audio_arrives(say):
    speech = say("The quick brown fox jumps over the lazy dog.")
    x = _pad(speech, SR, 2 * SR)
    seg = VadSegmenter()
    events: list[VadEvent] = []
    started_at = ended_at = None
    emitted = 0  # end of the audio emitted so far
    for pos in range(0, len(x), 10 * MS):
        block = seg.feed(x[pos : pos + 10 * MS])
        fed = min(pos + 10 * MS, len(x))
        for ev in block:
            if isinstance(ev, SpeechStart):
                started_at = fed
            elif isinstance(ev, SpeechAudio):
                emitted = ev.end_sample
            else:
                ended_at = fed
        if started_at is not None and ended_at is None:
            # inside the utterance, each frame's audio leaves as soon as the frame is complete
            assert emitted > fed - FRAME
        events += block
    events += seg.flush()
    assert started_at is not None and ended_at is not None
    assert started_at <= SR + DEFAULT.start_window_ms * MS + FRAME  # start hysteresis, not end-of-utterance
    assert len(_utterances(events, x)) == 1


def test_pause_longer_than_hangover_gives_two_utterances(say):
    a, b = say("Open the window."), say("Close the door please.")
    gap = 1200 * MS
    x = _pad(np.concatenate([a, np.zeros(gap, np.int16), b]), SR, 2 * SR)
    utts = _segments(x)
    assert [(u.kind, u.reason) for u in utts] == [("speech", "silence")] * 2
    first_off, second_on = SR + len(a), SR + len(a) + gap
    assert abs(utts[0].end - (first_off + HANGOVER)) <= 100 * MS
    # the second pre-roll may not reach back into the first utterance
    assert utts[0].end <= utts[1].start <= second_on


def test_trailing_silence_counts_the_unvoiced_end_of_an_utterance(say):
    """What endpoint speculation watches: 0 before and during speech, then growing frame by frame through the
    hangover, and 0 again once the utterance has ended."""
    speech = say("Open the window.")
    seg = VadSegmenter()
    frame = 30 * MS
    seen = []
    for block in np.array_split(_pad(speech, SR, 2 * SR), range(frame, 3 * SR + len(speech), frame)):
        ended = any(isinstance(e, SpeechEnd) for e in seg.feed(block))
        seen.append((seg.trailing_silence_ms, ended))
    values = [v for v, _ in seen]
    assert values[: SR // frame] == [0] * (SR // frame)  # leading silence: no utterance yet
    end = next(i for i, (_, ended) in enumerate(seen) if ended)
    assert values[end - 1] >= 500 and values[end:] == [0] * (len(values) - end)
    run = values[end - 1] // 30  # the last unvoiced run grew by one frame per frame
    assert values[end - run : end] == list(range(30, 30 * run + 1, 30))


def test_pause_shorter_than_hangover_gives_one_utterance(say):
    a, b = say("Open the window."), say("Close the door please.")
    gap = 350 * MS
    x = _pad(np.concatenate([a, np.zeros(gap, np.int16), b]), SR, 2 * SR)
    (u,) = _segments(x)
    assert u.kind == "speech" and u.start < SR and u.end > SR + len(a) + gap + len(b)
    # the pause is a real pause: with a shorter hangover the same audio splits in two
    assert len(_segments(x, VadConfig(hangover_ms=200))) == 2


# -- max length ------------------------------------------------------------------------------------------------


def _continuous_stream(say, seconds: float = 40.0, seed: int = 7):
    """Sentences back to back with 150-250 ms gaps; return audio, gap spans, first onset and last offset."""
    rng = np.random.default_rng(seed)
    parts, gaps = [np.zeros(SR, np.int16)], []
    pos = SR
    i = 0
    while pos < SR + seconds * SR:
        if i:
            g = int(rng.integers(150, 251)) * MS
            gaps.append((pos, pos + g))
            parts.append(np.zeros(g, np.int16))
            pos += g
        s = say(SENTENCES[i % len(SENTENCES)])
        parts.append(s)
        pos += len(s)
        i += 1
    parts.append(np.zeros(SR, np.int16))
    x = np.concatenate(parts)
    x = (x.astype(np.int32) + _noise(len(x), -65, seed)).clip(-32768, 32767).astype(np.int16)
    return x, gaps, SR, pos


def test_max_length_cuts_inside_pauses_without_losing_audio(say):
    x, gaps, onset, offset = _continuous_stream(say)
    opts = VadConfig(max_utterance_s=10)
    events = _run(x, opts)
    utts = _utterances(events, x)
    assert len(utts) >= 4
    assert [u.reason for u in utts] == ["max_length"] * (len(utts) - 1) + ["silence"]
    for u in utts:
        assert u.kind == "speech"
        assert u.end - u.start <= 10 * SR
    for prev, nxt in itertools.pairwise(utts):
        cut = prev.end
        assert nxt.start == cut, "the remainder must start the next utterance"
        assert any(a <= cut < b for a, b in gaps), f"cut at {cut / SR:.3f} s is not inside a pause"
    # over the whole speech span, every input sample is in exactly one SpeechAudio, in order
    audio = np.concatenate([e.pcm for e in events if isinstance(e, SpeechAudio)])
    assert utts[0].start <= onset and utts[-1].end >= offset
    np.testing.assert_array_equal(audio, x[utts[0].start : utts[-1].end])


def test_max_length_cut_on_speech_without_pauses():
    # a constant vowel-like tone has no pause: the cut still happens, before the limit, and loses nothing
    t = np.arange(25 * SR) / SR
    voice = 6000 * np.sin(2 * np.pi * 150 * t) * (1 + 0.5 * np.sin(2 * np.pi * 4 * t))
    voice += 2000 * np.sin(2 * np.pi * 700 * t)
    x = np.concatenate([np.zeros(SR, np.int16), voice.astype(np.int16), np.zeros(2 * SR, np.int16)])
    utts = _segments(x, VadConfig(max_utterance_s=8))
    assert [u.reason for u in utts] == ["max_length"] * (len(utts) - 1) + ["silence"] and len(utts) >= 3
    assert all(u.end - u.start <= 8 * SR for u in utts)
    assert all(a.end == b.start for a, b in itertools.pairwise(utts))


def test_max_length_cut_goes_to_the_middle_of_the_pause():
    t = np.arange(12 * SR) / SR
    voice = (6000 * np.sin(2 * np.pi * 150 * t) + 2000 * np.sin(2 * np.pi * 700 * t)).astype(np.int16)
    hole = slice(7 * SR, 7 * SR + 400 * MS)  # digital silence, shorter than the hangover
    voice[hole] = 0
    x = np.concatenate([np.zeros(SR, np.int16), voice, np.zeros(2 * SR, np.int16)])
    utts = _segments(x, VadConfig(max_utterance_s=8))
    assert [u.reason for u in utts] == ["max_length", "silence"]
    # every 100 ms window in the hole is equally (perfectly) quiet: the cut goes to its middle, not its edge
    middle = SR + hole.start + 200 * MS
    assert abs(utts[0].end - middle) <= 10 * MS


def test_hangover_never_carries_an_utterance_past_max_length():
    # tones whose hangover ends right around the limit; a limit off the frame grid (4.01 s) makes the utterance's
    # length cross it inside a frame, where the hangover may complete before a cut would be due
    opts = VadConfig(max_utterance_s=4.01)
    limit = round(4.01 * SR)
    t = np.arange(5 * SR) / SR
    tone = (6000 * np.sin(2 * np.pi * 150 * t) + 2000 * np.sin(2 * np.pi * 700 * t)).astype(np.int16)
    capped = 0
    for ms in range(3000, 3200, 10):
        x = np.concatenate([np.zeros(SR, np.int16), tone[: ms * MS], np.zeros(2 * SR, np.int16)])
        utts = _segments(x, opts)
        assert utts and all(u.end - u.start <= limit for u in utts)
        capped += utts[0].reason == "silence" and utts[0].end - utts[0].start == limit
    assert capped  # the sweep did hit the case where the hangover crosses the limit


# -- block sizes, flush, reset ---------------------------------------------------------------------------------


def test_random_block_sizes_give_identical_events(say):
    x, _, _, _ = _continuous_stream(say, seconds=25, seed=3)
    opts = VadConfig(max_utterance_s=8)
    whole = _run(x, opts)
    assert any(isinstance(e, SpeechEnd) and e.reason == "max_length" for e in whole)
    rng = np.random.default_rng(11)
    for _ in range(3):
        seg = VadSegmenter(opts)
        events: list[VadEvent] = []
        pos = 0
        while pos < len(x):
            n = int(rng.choice([0, 1, 7, 160, 479, 480, 481, 1000, 4096, 16000]))
            events += seg.feed(x[pos : pos + n])
            pos += n
        events += seg.flush()
        assert events == whole


def test_flush_ends_utterance_in_progress(say):
    speech = say("The quick brown fox jumps over the lazy dog.")
    x = _pad(speech, SR, 0)[:-7]  # ends in speech, not on a frame boundary
    seg = VadSegmenter()
    events = seg.feed(x)
    assert not any(isinstance(e, SpeechEnd) for e in events)
    events += seg.flush()
    (u,) = _utterances(events, x)
    assert (u.kind, u.reason, u.end) == ("speech", "flush", len(x))
    # flush() also resets: the next stream starts at sample 0
    again = seg.feed(x) + seg.flush()
    assert again == events


def test_reset_forgets_the_stream(say):
    x = _pad(say("Hello world."), SR, SR)
    seg = VadSegmenter()
    seg.feed(x[: len(x) // 2])
    seg.reset()
    assert seg.feed(x) + seg.flush() == _run(x)


def test_emitted_audio_is_independent_of_caller_buffer(say):
    x = _pad(say("Hello world."), SR, SR)
    buf = x.copy()
    seg = VadSegmenter()
    events = seg.feed(buf)
    buf[:] = 0  # a sound-card callback reuses its buffer
    events += seg.flush()
    _utterances(events, x)
    audio = next(e for e in events if isinstance(e, SpeechAudio))
    with pytest.raises(ValueError):
        audio.pcm[0] = 1


def test_input_and_option_validation():
    seg = VadSegmenter()
    with pytest.raises(TypeError):
        seg.feed(np.zeros(480, np.float32))
    with pytest.raises(ValueError):
        seg.feed(np.zeros((480, 2), np.int16))
    assert seg.feed(np.zeros((480, 1), np.int16)) == []
    for bad in (
        {"frame_ms": 25},
        {"aggressiveness": 4},
        {"start_ms": 400},
        {"hangover_ms": 0},
        {"max_utterance_s": 0.5},
        {"rms_floor_dbfs": 3.0},
    ):
        with pytest.raises(ConfigError):
            VadConfig(**bad)


# -- trim (push-to-talk) ---------------------------------------------------------------------------------------


def test_trim_padded_speech(say):
    speech = say("Send the report to Maria before Friday.")
    lead, tail = 2 * SR + 77, 3 * SR
    x = _pad(speech, lead, tail)
    x[SR // 2 : SR // 2 + 5 * MS] = 20000  # a key click well before the speech: not a reason to keep the lead-in
    span = trim(x)
    assert span is not None
    start, end = span
    onset, offset = lead, lead + len(speech)
    assert onset - PRE_ROLL - FRAME <= start <= onset - PRE_ROLL + 3 * FRAME
    assert offset + PRE_ROLL - FRAME <= end <= offset + PRE_ROLL + 4 * FRAME
    # speech right at the edges: nothing to trim, nothing out of range
    assert trim(speech) == (0, len(speech))


def test_trim_keeps_inner_pauses(say):
    a, b = say("Open the window."), say("Close the door please.")
    x = _pad(np.concatenate([a, np.zeros(2 * SR, np.int16), b]), SR, SR)
    start, end = trim(x)
    assert start < SR and end > len(x) - SR


def test_trim_without_speech_is_none(say):
    assert trim(np.zeros(3 * SR, np.int16)) is None
    assert trim(_noise(3 * SR, -60)) is None
    ah = say("ah")
    mid = len(ah) // 2
    assert trim(_pad(ah[mid - 90 * MS : mid + 90 * MS], SR, SR)) is None  # shorter than min_speech_ms
