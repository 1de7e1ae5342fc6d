"""Voice-activity segmentation: 16 kHz mono int16 audio in, utterance events out (sans-I/O).

``VadSegmenter`` owns no threads, sockets or clocks. The caller pushes audio with ``feed()`` in blocks of any size
and gets back a list of events; time is the number of samples fed since construction (or ``reset()``), so the
result depends only on the audio, never on how it was split into blocks or when it arrived. Its options are the
``vad`` section of config.yaml, :class:`~qasr_live.config.VadConfig`, as it is (the names below are its keys).

Frames
    The stream is cut into frames of ``frame_ms`` on a fixed grid starting at sample 0 (a partial frame waits for
    the next ``feed()``). A frame is *voiced* when webrtcvad says speech **and** its RMS is at least
    ``rms_floor_dbfs``: webrtcvad adapts to the level of its input and happily calls a whisper-quiet TV or a
    distant voice speech, which a dictation daemon must not transcribe.

State machine
    IDLE
        Recent frames are kept (``start_window_ms`` plus ``pre_roll_ms``) with their voiced flags. When at least
        ``start_ms`` of the last ``start_window_ms`` are voiced (start hysteresis: a lone click or a breath is not
        enough), the utterance starts. Its *onset* is the first voiced frame of that window and its start sample
        is ``onset - pre_roll_ms`` (never before sample 0 nor before the end of the previous utterance, so no
        sample is ever in two utterances). → emit ``SpeechStart`` and one ``SpeechAudio`` carrying everything
        from the start sample to the end of the current frame (pre-roll included). → SPEECH.
    SPEECH
        Every further frame is emitted as its own ``SpeechAudio`` as soon as it is complete (one event per frame,
        which is what makes the events independent of the block sizes), except in the last ``lookback`` before
        ``max_utterance_s`` (see below). The utterance ends:

        * ``"silence"``: after ``hangover_ms`` of continuous unvoiced frames; ``end_sample`` is the end of the
          frame that completed the hangover, so the utterance keeps the hangover audio (≈ last voiced frame
          + ``hangover_ms``). Should that carry the utterance past ``max_utterance_s`` (by less than a frame),
          it ends at the limit and the few silent samples after it belong to no utterance.
        * ``"max_length"``: when it reaches ``max_utterance_s``. To cut in a pause rather than inside a word,
          streaming is held back for the last ``lookback`` = min(3 s, max_utterance_s / 2) before the limit;
          at the limit the held audio is searched for its lowest-RMS 100 ms window (10 ms hop; among equally
          quiet neighbouring windows, the middle of the quiet stretch) and the cut is the centre of that window.
          The audio before the cut closes this utterance (``SpeechAudio`` + ``SpeechEnd(cut, "max_length")``),
          the rest opens the next one at once (``SpeechStart(cut)`` + ``SpeechAudio``), still in SPEECH: no
          sample is lost or duplicated, and no start hysteresis is needed since speech is going on. (If the
          limit falls inside a hangover, the cut lands in the trailing silence and the remainder, holding no
          voiced frame, soon ends as ``NoSpeech``.)
        * ``"flush"``: ``flush()`` was called (end of stream); the partial frame is emitted too and
          ``end_sample`` is the number of samples fed (capped at ``max_utterance_s`` like ``"silence"``).

        An utterance whose speech — from its onset to the end of its last voiced frame, i.e. without pre-roll
        and hangover — is shorter than ``min_speech_ms`` ends with ``NoSpeech`` instead of ``SpeechEnd``
        (a cough, a door, a click that passed the start hysteresis). A ``"max_length"`` cut always reports
        ``SpeechEnd``: the part before it lasts at least max_utterance_s - lookback. After ``"silence"``,
        ``"flush"`` or ``NoSpeech`` → IDLE.

Events and the audio they carry
    Per utterance the events are, in order: ``SpeechStart(start_sample)``, one or more
    ``SpeechAudio(pcm, start_sample)``, then exactly one of ``SpeechEnd(end_sample, reason)`` or
    ``NoSpeech(start_sample, end_sample)``. The ``SpeechAudio`` blocks are contiguous: the first begins at the
    utterance's start sample, each next one at the previous ``start_sample + len(pcm)``, and the last ends at
    ``end_sample``. Hence ``np.concatenate([a.pcm for a in audio_events]) == input[start_sample:end_sample]``
    exactly, so a consumer can encode incrementally and needs nothing else. Utterances never overlap.

``trim()`` is the push-to-talk helper: the key decides the utterance and VAD only removes the leading and
trailing non-speech (keeping ``pre_roll_ms`` of margin on both sides) and reports ``None`` when there is no
speech of at least ``min_speech_ms``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import webrtcvad

from qasr_live.audio.pcm import INT16_FULL_SCALE, SAMPLE_RATE, as_mono_int16
from qasr_live.config import VadConfig

__all__ = [
    "NoSpeech",
    "SpeechAudio",
    "SpeechEnd",
    "SpeechEndReason",
    "SpeechStart",
    "VadEvent",
    "VadSegmenter",
    "trim",
]

_CUT_WINDOW = SAMPLE_RATE // 10  # 100 ms: long enough to skip stop closures inside words, short enough for a pause
_CUT_HOP = SAMPLE_RATE // 100  # 10 ms resolution for the cut point
_MAX_LOOKBACK = 3 * SAMPLE_RATE  # how far back a max-length cut may reach (and so how long streaming is held)


class SpeechEndReason(StrEnum):
    """Why the segmenter ended an utterance (the daemon maps it to the utterance's end reason on the wire)."""

    SILENCE = "silence"  # hangover_ms of continuous unvoiced frames
    MAX_LENGTH = "max_length"  # cut at max_utterance_s, in the deepest recent pause
    FLUSH = "flush"  # flush(): the end of the stream


@dataclass(frozen=True, slots=True)
class SpeechStart:
    """An utterance begins at ``start_sample`` (pre-roll included); its audio follows in ``SpeechAudio``."""

    start_sample: int


@dataclass(frozen=True, slots=True, eq=False)
class SpeechAudio:
    """Input samples ``[start_sample, start_sample + len(pcm))`` of the current utterance (read-only int16)."""

    pcm: np.ndarray
    start_sample: int

    @property
    def end_sample(self) -> int:
        return self.start_sample + len(self.pcm)

    def __eq__(self, other: object) -> bool:
        # the generated __eq__ would compare arrays elementwise and fail on truth-testing the result
        if not isinstance(other, SpeechAudio):
            return NotImplemented
        return self.start_sample == other.start_sample and np.array_equal(self.pcm, other.pcm)

    __hash__ = None  # type: ignore[assignment]  # equal by value but holds a mutable-typed array


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    """The utterance ends at ``end_sample`` (exclusive) and is to be transcribed."""

    end_sample: int
    reason: SpeechEndReason


@dataclass(frozen=True, slots=True)
class NoSpeech:
    """The utterance ``[start_sample, end_sample)`` already streamed held too little speech: discard it."""

    start_sample: int
    end_sample: int


VadEvent = SpeechStart | SpeechAudio | SpeechEnd | NoSpeech


class VadSegmenter:
    """Incremental segmenter; see the module docstring for the state machine and the events."""

    def __init__(self, options: VadConfig | None = None) -> None:
        self.options = options if options is not None else VadConfig()
        o = self.options
        self._frame = SAMPLE_RATE * o.frame_ms // 1000
        self._start_frames = _frames(o.start_ms, o.frame_ms)
        self._window_frames = max(_frames(o.start_window_ms, o.frame_ms), self._start_frames)
        self._hangover_frames = _frames(o.hangover_ms, o.frame_ms)
        self._pre_roll = SAMPLE_RATE * o.pre_roll_ms // 1000
        self._min_speech = SAMPLE_RATE * o.min_speech_ms // 1000
        self._max_len = round(o.max_utterance_s * SAMPLE_RATE)
        self._lookback = min(_MAX_LOOKBACK, self._max_len // 2)
        # compare mean squares, not dB: no log of zero for digital silence
        self._floor_ms = (INT16_FULL_SCALE * 10.0 ** (o.rms_floor_dbfs / 20.0)) ** 2
        # IDLE history: enough frames for the start window plus the pre-roll before its first frame
        self._history_frames = self._window_frames + -(-self._pre_roll // self._frame) + 1
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next ``feed()`` is sample 0 of a new stream."""
        # webrtcvad adapts its noise model frame by frame, so a fresh stream needs a fresh instance
        self._vad = webrtcvad.Vad(self.options.aggressiveness)
        self._pos = 0  # samples fed so far (complete frames + the partial one)
        self._framed = 0  # end sample of the last complete frame
        self._partial = np.zeros(0, dtype=np.int16)
        self._unvoiced_run = 0  # consecutive unvoiced frames up to now, in any state
        self._floor = 0  # no utterance may start before this sample (end of the previous one)
        # IDLE
        self._history: deque[tuple[int, np.ndarray, bool]] = deque(maxlen=self._history_frames)
        self._window: deque[bool] = deque(maxlen=self._window_frames)
        # SPEECH
        self._in_speech = False
        self._utt_start = 0
        self._onset = 0  # first voiced sample of the utterance (or the cut it resumed from)
        self._last_voiced_end = 0
        self._pending: list[np.ndarray] = []  # frames not yet emitted (held back near max length)
        self._emitted = 0  # samples of the utterance emitted so far end here

    @property
    def trailing_silence_ms(self) -> int:
        """Unvoiced time at the end of the utterance in progress (0 outside one, or while speech goes on): what
        endpoint speculation watches before the hangover has run out."""
        return self._unvoiced_run * self.options.frame_ms if self._in_speech else 0

    def feed(self, pcm: np.ndarray) -> list[VadEvent]:
        """Push 16 kHz mono int16 samples (any length, shape (n,) or (n, 1)); return the events they complete."""
        samples = as_mono_int16(pcm)
        events: list[VadEvent] = []
        if samples.size == 0:
            return events
        # copy: callers (sounddevice callbacks) reuse their buffers, and emitted arrays must stay valid
        buf = np.concatenate([self._partial, samples]) if self._partial.size else samples.copy()
        self._pos += samples.size
        n_full = buf.size // self._frame * self._frame
        for i in range(0, n_full, self._frame):
            self._process_frame(buf[i : i + self._frame], events)
        self._partial = buf[n_full:].copy()
        return events

    def flush(self) -> list[VadEvent]:
        """End of stream: close the utterance in progress (reason ``"flush"``) and reset the segmenter."""
        events: list[VadEvent] = []
        if self._in_speech:
            if self._partial.size:
                self._pending.append(self._partial)  # unclassified tail: still part of the utterance's audio
            self._close(self._pos, SpeechEndReason.FLUSH, events)
        self.reset()
        return events

    # -- internals -----------------------------------------------------------------------------------------

    def _is_voiced(self, frame: np.ndarray) -> bool:
        f = frame.astype(np.float64)
        if float(np.dot(f, f)) / f.size < self._floor_ms:
            return False
        voiced: bool = self._vad.is_speech(frame.astype("<i2", copy=False).tobytes(), SAMPLE_RATE)
        return voiced

    def _process_frame(self, frame: np.ndarray, events: list[VadEvent]) -> None:
        start = self._framed
        end = start + frame.size
        self._framed = end
        voiced = self._is_voiced(frame)
        self._unvoiced_run = 0 if voiced else self._unvoiced_run + 1
        if not self._in_speech:
            self._history.append((start, frame, voiced))
            self._window.append(voiced)
            # a start needs a voiced frame *now*, so the trigger frame is voiced and the hangover count is 0
            if voiced and sum(self._window) >= self._start_frames:
                self._begin(events)
            return

        if voiced:
            self._last_voiced_end = end
        self._pending.append(frame)
        length = end - self._utt_start
        if self._unvoiced_run >= self._hangover_frames:
            self._close(end, SpeechEndReason.SILENCE, events)
        elif length >= self._max_len:
            self._cut(events)
        elif length <= self._max_len - self._lookback:
            self._emit_pending(events)
        # else: within lookback of the limit, hold the audio back so the cut can still go there

    def _begin(self, events: list[VadEvent]) -> None:
        frames = list(self._history)
        window = frames[-len(self._window) :]
        onset = next(s for s, _, v in window if v)
        first = frames[0][0]
        start = max(onset - self._pre_roll, self._floor, first)
        audio = np.concatenate([f for _, f, _ in frames])[start - first :]
        self._in_speech = True
        self._utt_start = start
        self._onset = onset
        self._last_voiced_end = self._framed
        self._emitted = start
        self._history.clear()
        self._window.clear()
        events.append(SpeechStart(start))
        self._pending = [audio]
        self._emit_pending(events)

    def _emit_pending(self, events: list[VadEvent]) -> None:
        if not self._pending:
            return
        pcm = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._pending = []
        if pcm.size == 0:
            return
        events.append(SpeechAudio(_frozen(pcm), self._emitted))
        self._emitted += pcm.size

    def _close(self, end: int, reason: SpeechEndReason, events: list[VadEvent]) -> None:
        """Emit the held audio up to ``end`` and end the utterance there (never longer than max_utterance_s)."""
        # the hangover (or the flushed partial frame) can carry an utterance past the limit by less than a frame;
        # what lies beyond is silence (or < 1 frame), cheaper to drop than to cut into a one-frame utterance
        capped = min(end, self._utt_start + self._max_len)
        if capped < end:
            held = np.concatenate(self._pending)
            self._pending = [held[: capped - self._emitted]]
        self._emit_pending(events)
        self._finish(capped, reason, events)

    def _finish(self, end: int, reason: SpeechEndReason, events: list[VadEvent]) -> None:
        if reason is not SpeechEndReason.MAX_LENGTH and self._last_voiced_end - self._onset < self._min_speech:
            events.append(NoSpeech(self._utt_start, end))
        else:
            events.append(SpeechEnd(end, reason))
        self._in_speech = False
        self._floor = end

    def _cut(self, events: list[VadEvent]) -> None:
        held = np.concatenate(self._pending)
        base = self._emitted  # held covers [base, base + held.size)
        cut = base + _deepest_pause(held)
        self._pending = [held[: cut - base]]
        self._emit_pending(events)
        self._finish(cut, SpeechEndReason.MAX_LENGTH, events)
        # the remainder is the next utterance, already in speech: no hysteresis, no pre-roll (nothing lost)
        self._in_speech = True
        self._utt_start = cut
        self._onset = cut
        self._last_voiced_end = max(self._last_voiced_end, cut)
        self._emitted = cut
        events.append(SpeechStart(cut))
        self._pending = [held[cut - base :]]
        self._emit_pending(events)


def trim(pcm: np.ndarray, options: VadConfig | None = None) -> tuple[int, int] | None:
    """Push-to-talk: return ``(start, end)`` of ``pcm`` without its leading/trailing non-speech, or ``None``.

    The span runs from the onset of the first utterance that holds at least ``min_speech_ms`` of speech to the
    end of the last voiced frame of the last such utterance, widened by ``pre_roll_ms`` on both sides and clipped
    to ``[0, len(pcm)]``. Pauses inside the span are kept: the key, not the VAD, delimits the utterance. ``None``
    means no such utterance (silence, noise, a click): there is nothing to transcribe.
    """
    seg = _SpanRecorder(options)
    samples = as_mono_int16(pcm)
    seg.feed(samples)
    seg.flush()
    if not seg.spans:
        return None
    margin = seg._pre_roll
    return max(0, seg.spans[0][0] - margin), min(samples.size, seg.spans[-1][1] + margin)


class _SpanRecorder(VadSegmenter):
    """A segmenter that also records ``(onset, last voiced end)`` of each kept utterance, for ``trim()``."""

    def __init__(self, options: VadConfig | None = None) -> None:
        self.spans: list[tuple[int, int]] = []
        super().__init__(options)

    def _finish(self, end: int, reason: SpeechEndReason, events: list[VadEvent]) -> None:
        before = len(events)
        super()._finish(end, reason, events)
        if isinstance(events[before], SpeechEnd):
            self.spans.append((self._onset, min(self._last_voiced_end, end)))


def _frames(ms: int, frame_ms: int) -> int:
    return max(1, -(-ms // frame_ms))


def _frozen(pcm: np.ndarray) -> np.ndarray:
    # events are shared with consumers; a read-only view stops one consumer from editing another's audio
    pcm.flags.writeable = False
    return pcm


def _deepest_pause(held: np.ndarray) -> int:
    """Offset in ``held`` of the centre of its quietest 100 ms window (middle of a run of equally quiet ones)."""
    if held.size <= _CUT_WINDOW:
        return held.size // 2
    sq = np.concatenate([[0.0], np.cumsum(held.astype(np.float64) ** 2)])
    starts = np.arange(0, held.size - _CUT_WINDOW + 1, _CUT_HOP)
    rms = np.sqrt((sq[starts + _CUT_WINDOW] - sq[starts]) / _CUT_WINDOW)
    best = int(np.argmin(rms))
    # a pause is usually flat: every window inside it is about as quiet, and argmin would pick its first edge;
    # cutting in the middle of the quiet stretch keeps a little silence on both sides of the cut
    quiet = rms <= rms[best] * 1.1 + 1.0
    lo = best
    while lo > 0 and quiet[lo - 1]:
        lo -= 1
    hi = best
    while hi + 1 < rms.size and quiet[hi + 1]:
        hi += 1
    return (int(starts[lo]) + int(starts[hi]) + _CUT_WINDOW) // 2
