"""Incremental encoding of audio that only grows (a streaming utterance): each final 1 s chunk goes through the
encoder frontend once, and the backend re-runs only the open 8 s window.

The encoder's frontend works on 1 s chunks (100 mel frames) and its backend attends within 8 s windows (104 rows),
so finished audio need not be encoded again. A chunk is *final* once every sample its centred STFT frames see has
arrived (16000 * (c + 1) + 40 samples); its raw log10 mel is computed once and cached. Whisper's normalisation
clamps at the clip's global maximum - 8, so a chunk's frontend input is a function of that maximum too: the
frontend rows of a final chunk are cached with the clamp they were made with and re-run only when a growing
maximum changes its clamped values (usually never: only frames 80 dB below the peak are clamped). The backend
re-runs the open (last, incomplete) window on every update; a window whose 8 chunks are all final is computed
once and frozen (again unless its clamps change). The rows equal `encoder.encode(log_mel(audio))` of the audio so
far (the *exact* mode, `streaming.reencode_open_window: true`).

`reencode_open_window: false` is the cheaper approximation: a final chunk's frontend runs once, clamped with the
maximum known then, and its backend rows are computed once, when it first is final, by a backend run over its
window's rows available then (earlier chunks, itself, and the provisional tail); they are never revised. Only
the provisional tail (frames that are not final yet) is new at each update, so the decoder re-prefills only the
rows after the last final chunk instead of the whole open window. The encoder does the same work as the exact
mode; the decoder saves up to 104 rows of prefill per tick and at the endpoint. Rows of a chunk see less of
their window than in the exact mode (no right context beyond what had arrived).

`AudioBuffer` holds the samples such a clip is encoded from: appended from one thread, read from another.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from qasr_live.audio.pcm import SAMPLE_RATE, as_float_mono
from qasr_live.engine.encoder import CHUNK_FRAMES, ROWS_PER_CHUNK, WINDOW_ROWS, Encoder
from qasr_live.engine.features import HOP, N_FFT, feature_output_length, log_mel_raw, normalize_log_mel

CHUNK_SAMPLES = CHUNK_FRAMES * HOP  # 16000: one frontend chunk
CHUNKS_PER_WINDOW = WINDOW_ROWS // ROWS_PER_CHUNK  # 8
_LOOKAHEAD = N_FFT // 2 - HOP  # 40: samples after a chunk's end that its last (centred) frame sees

# The frontend clamps of a window's chunks (None: not computed yet), which its frozen backend rows were made with.
_Clamps = tuple[float | None, ...]


class AudioBuffer:
    """The utterance's samples as float32 in a growing array. Samples before `len` never change, so a view of
    them stays valid while more are appended (from another thread, under the lock)."""

    def __init__(self) -> None:
        self._data = np.zeros(4 * SAMPLE_RATE, dtype=np.float32)
        self._n = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._n

    def append(self, pcm: np.ndarray) -> None:
        samples = as_float_mono(pcm)
        with self._lock:
            end = self._n + len(samples)
            if end > len(self._data):
                grown = np.zeros(max(end, 2 * len(self._data)), dtype=np.float32)
                grown[: self._n] = self._data[: self._n]
                self._data = grown
            self._data[self._n : end] = samples
            self._n = end

    def view(self) -> np.ndarray:
        with self._lock:
            return self._data[: self._n]


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(slots=True, eq=False)
class _Chunk:
    """A final 1 s chunk: raw log10 mel (computed once), its extremes, and its encodings."""

    raw: np.ndarray  # (128, 100) float64
    peak: float
    low: float
    clamp: float | None = None  # max(floor, low) its frontend rows were made with: equal clamps, equal input
    front: np.ndarray | None = None  # (13, d_model)
    out: np.ndarray | None = None  # approximate mode: its frozen backend rows


class ClipEncoder:
    """Incremental encoding of one clip (an utterance, or its part after a rollover) whose samples only grow.

    `update(audio, encoder)` returns the clip's rows as a list of read-only blocks (frozen blocks are the same
    objects from update to update). Exact mode: their concatenation equals `encoder.encode(log_mel(audio))`.
    An update is transactional: if the encoder fails, the state is as before and the update can be retried.
    """

    def __init__(self, exact: bool, start: int = 0, text_start: int = 0) -> None:
        self.exact = exact
        self.start = start  # first sample of the clip within the utterance
        self.text_start = text_start  # committed ids of the utterance before this clip became current
        self.blocks: list[np.ndarray] = []
        self.n_samples = 0
        self._chunks: list[_Chunk] = []
        self._windows: dict[int, tuple[_Clamps, np.ndarray]] = {}  # exact mode: frozen window -> (clamps, rows)
        self.frontend_chunks = 0  # work of the last update
        self.backend_rows = 0

    @property
    def rows(self) -> np.ndarray:
        return np.concatenate(self.blocks) if self.blocks else np.zeros((0, 0), np.float32)

    @staticmethod
    def final_chunks(n_samples: int) -> int:
        """Chunks none of whose frames can change when more samples arrive."""
        return max(0, (n_samples - _LOOKAHEAD) // CHUNK_SAMPLES)

    def update(self, audio: np.ndarray, encoder: Encoder) -> list[np.ndarray]:
        n = len(audio)
        if n == self.n_samples and self.blocks:  # nothing new (a final decode right after a tick): same rows
            self.frontend_chunks = self.backend_rows = 0
            return self.blocks
        n_frames = n // HOP
        final = self.final_chunks(n)
        chunks = self._chunks[:final]  # fewer only when a rollover truncates the clip
        windows = {w: v for w, v in self._windows.items() if (w + 1) * CHUNKS_PER_WINDOW <= final}
        if final > len(chunks):
            first = len(chunks)
            raw = log_mel_raw(audio, first * CHUNK_FRAMES, final * CHUNK_FRAMES)
            for c in range(final - first):
                part = raw[:, c * CHUNK_FRAMES : (c + 1) * CHUNK_FRAMES]
                chunks.append(_Chunk(part, float(part.max()), float(part.min())))
        tail_raw = log_mel_raw(audio, final * CHUNK_FRAMES, n_frames)
        if n_frames == 0:
            self._commit_state(chunks, windows, [], n, 0, 0)
            return []
        peak = max([c.peak for c in chunks] + ([float(tail_raw.max())] if tail_raw.size else []))
        floor = peak - 8.0

        # Frontend: final chunks whose clamped input changed (or never computed), then the provisional tail.
        if self.exact:
            stale = [c for c in range(final) if chunks[c].clamp != max(floor, chunks[c].low)]
        else:
            stale = [c for c in range(final) if chunks[c].front is None]
        tail_frames = tail_raw.shape[1]
        n_tail_chunks = -(-tail_frames // CHUNK_FRAMES)
        tail_mel = np.zeros((n_tail_chunks * CHUNK_FRAMES, tail_raw.shape[0]), np.float32)
        tail_mel[:tail_frames] = normalize_log_mel(tail_raw, peak).T
        batch = [normalize_log_mel(chunks[c].raw, peak) for c in stale]
        if n_tail_chunks:  # none when the audio ends within a final chunk's lookahead
            batch += list(tail_mel.reshape(n_tail_chunks, CHUNK_FRAMES, -1).transpose(0, 2, 1))
        new_front: dict[int, np.ndarray] = {}
        tail_front: np.ndarray | None = None
        if batch:
            front = encoder.frontend(np.stack(batch))
            new_front = {c: front[i] for i, c in enumerate(stale)}
            if n_tail_chunks:
                n_tail_rows = feature_output_length(n_frames) - final * ROWS_PER_CHUNK
                tail_front = front[len(stale) :].reshape(-1, front.shape[-1])[:n_tail_rows]
        clamps = {c: max(floor, chunks[c].low) for c in stale}

        def front_rows(c: int) -> np.ndarray:
            if c in new_front:
                return new_front[c]
            rows = chunks[c].front
            assert rows is not None, "a final chunk that is not stale has its frontend rows"
            return rows

        backend_rows = 0
        blocks: list[np.ndarray] = []
        chunk_out: dict[int, np.ndarray] = {}
        if self.exact:
            n_windows = -(-feature_output_length(n_frames) // WINDOW_ROWS)
            done: dict[int, np.ndarray] = {}  # window -> its rows
            todo: list[tuple[int, bool, _Clamps, np.ndarray]] = []
            for w in range(n_windows):
                cs = range(w * CHUNKS_PER_WINDOW, min(final, (w + 1) * CHUNKS_PER_WINDOW))
                complete = (w + 1) * CHUNKS_PER_WINDOW <= final
                key = tuple(clamps.get(c, chunks[c].clamp) for c in cs)
                if complete and w in windows and windows[w][0] == key:
                    done[w] = windows[w][1]
                    continue
                parts = [front_rows(c) for c in cs]
                if not complete and tail_front is not None:
                    parts.append(tail_front)
                todo.append((w, complete, key, np.concatenate(parts)))
            if todo:  # one backend run: complete windows are 104 rows each, only the last may be shorter
                stacked = np.concatenate([rows for *_, rows in todo])
                out = encoder.backend(stacked)
                backend_rows = len(stacked)
                offset = 0
                for w, complete, key, rows in todo:
                    block = _readonly(np.array(out[offset : offset + len(rows)], dtype=np.float32))
                    offset += len(rows)
                    done[w] = block
                    if complete:
                        windows[w] = (key, block)
                    else:
                        windows.pop(w, None)
            blocks = [done[w] for w in range(n_windows)]
        else:
            pending = [c for c in range(final) if chunks[c].out is None]
            tail_out = None
            if pending or tail_front is not None:  # one backend run from the window of the first new row
                w0 = (pending[0] if pending else final) // CHUNKS_PER_WINDOW
                parts = [front_rows(c) for c in range(w0 * CHUNKS_PER_WINDOW, final)]
                if tail_front is not None:
                    parts.append(tail_front)
                stacked = np.concatenate(parts)
                out = encoder.backend(stacked)
                backend_rows = len(stacked)
                base = w0 * CHUNKS_PER_WINDOW
                for c in pending:
                    i = (c - base) * ROWS_PER_CHUNK
                    chunk_out[c] = _readonly(np.array(out[i : i + ROWS_PER_CHUNK], dtype=np.float32))
                if tail_front is not None:
                    i = (final - base) * ROWS_PER_CHUNK
                    tail_out = _readonly(np.array(out[i:], dtype=np.float32))
            for c in range(final):
                chunk_rows = chunk_out[c] if c in chunk_out else chunks[c].out
                assert chunk_rows is not None, "a final chunk that is not pending has its backend rows"
                blocks.append(chunk_rows)
            if tail_out is not None:
                blocks.append(tail_out)

        # Commit the new state only now: an encoder failure above leaves the encoder as it was.
        for c in stale:
            chunks[c].front, chunks[c].clamp = new_front[c], clamps[c]
        for c, rows in chunk_out.items():
            chunks[c].out = rows
        self._commit_state(chunks, windows, blocks, n, len(batch), backend_rows)
        return blocks

    def _commit_state(
        self,
        chunks: list[_Chunk],
        windows: dict[int, tuple[_Clamps, np.ndarray]],
        blocks: list[np.ndarray],
        n: int,
        frontend_chunks: int,
        backend_rows: int,
    ) -> None:
        self._chunks, self._windows, self.blocks, self.n_samples = chunks, windows, blocks, n
        self.frontend_chunks, self.backend_rows = frontend_chunks, backend_rows
