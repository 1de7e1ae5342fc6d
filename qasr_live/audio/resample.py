"""Streaming sample-rate conversion: the microphone's native rate (48, 44.1 kHz ...) → 16 kHz, block by block.

:class:`StreamResampler` applies the same polyphase filter as ``scipy.signal.resample_poly`` but keeps its state
across blocks: block-by-block output equals resampling the whole recording at once (to float rounding), with no
clicks or gaps at block boundaries, ~0.6 ms of delay, and exactly ``ceil(n × 16000 / rate)`` samples per stream
once it is flushed. Pure numpy: no device, no thread.

The filter is scipy's ``firwin`` written with numpy's own Kaiser window and sinc (equal to float rounding,
tests/test_capture.py): importing ``scipy.signal`` costs the daemon 75 MB of resident memory, and a microphone
almost never runs at 16 kHz.
"""

from __future__ import annotations

import math

import numpy as np

from qasr_live.audio.pcm import SAMPLE_RATE

__all__ = ["StreamResampler"]


def _kaiser_lowpass(numtaps: int, cutoff: float, beta: float) -> np.ndarray:
    """``scipy.signal.firwin(numtaps, cutoff, window=("kaiser", beta))``: a windowed sinc, cutoff relative to
    Nyquist, scaled to unit gain at DC."""
    m = np.arange(numtaps) - (numtaps - 1) / 2
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(numtaps, beta)
    scaled: np.ndarray = h / h.sum()
    return scaled


class StreamResampler:
    """``scipy.signal.resample_poly`` from ``in_rate`` to ``out_rate``, one block at a time.

    Same filter (Kaiser-windowed FIR, beta 5, ``half_len = 10 × max(up, down)``, zero padding before the
    first sample), so the concatenation of ``process()`` outputs followed by ``flush()`` equals
    ``resample_poly(whole, up, down)`` to float64 rounding, whatever the block sizes. Output sample *k* needs
    input up to about ``k × in_rate / out_rate + delay``: ``process()`` returns every output whose inputs have
    arrived, so after *n* input samples exactly :meth:`available` (*n*) outputs have been returned, and
    ``flush()`` (end of the stream: the missing inputs are taken as zeros) brings the total to
    ``ceil(n × out_rate / in_rate)``. ``delay`` is the lookahead in input samples (0.6 ms for 48 or 44.1 kHz).
    """

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE):
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} → {out_rate}")
        g = math.gcd(int(in_rate), int(out_rate))
        self.in_rate, self.out_rate = int(in_rate), int(out_rate)
        self.up, self.down = self.out_rate // g, self.in_rate // g
        self.n_in = 0
        self.n_out = 0
        if self.up == self.down == 1:
            self.half_len = 0
            self.taps = 1
            return
        max_rate = max(self.up, self.down)
        self.half_len = 10 * max_rate
        h = _kaiser_lowpass(2 * self.half_len + 1, 1.0 / max_rate, beta=5.0) * self.up
        self.taps = -(-len(h) // self.up)  # taps per polyphase branch
        phases = np.zeros((self.up, self.taps))
        for ph in range(self.up):
            branch = h[ph :: self.up]
            phases[ph, : len(branch)] = branch
        self._phases = phases
        self._buf = np.zeros(self.taps - 1)  # history; _buf[0] is input sample number _buf_start
        self._buf_start = -(self.taps - 1)  # inputs before sample 0 are zeros, as resample_poly pads

    @property
    def delay(self) -> float:
        """Lookahead in input samples: how much later than ideal an output can be produced."""
        return self.half_len / self.up

    def available(self, n_in: int) -> int:
        """How many outputs ``process()`` has returned in total once ``n_in`` input samples were given."""
        if self.up == self.down == 1:
            return n_in
        num = n_in * self.up - 1 - self.half_len  # output k needs input (k·down + half_len) // up ≤ n_in - 1
        return 0 if num < 0 else num // self.down + 1

    def total(self, n_in: int) -> int:
        """Outputs in total after ``flush()``: what ``resample_poly`` returns for ``n_in`` samples."""
        return -(-n_in * self.up // self.down)

    def process(self, x: np.ndarray) -> np.ndarray:
        """Feed 1-D float samples; return the float64 outputs that are now complete."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        self.n_in += len(x)
        if self.up == self.down == 1:
            self.n_out += len(x)
            return x.copy()
        self._buf = np.concatenate((self._buf, x))
        return self._emit(self.available(self.n_in))

    def flush(self) -> np.ndarray:
        """The remaining outputs, as if the input went on with zeros; after it, feed no more."""
        if self.up == self.down == 1:
            return np.zeros(0)
        end = self.total(self.n_in)
        if end <= self.n_out:
            return np.zeros(0)
        need = ((end - 1) * self.down + self.half_len) // self.up + 1  # inputs (incl. zeros) up to this one
        have = self._buf_start + len(self._buf)
        if need > have:
            self._buf = np.concatenate((self._buf, np.zeros(need - have)))
        return self._emit(end)

    def _emit(self, end: int) -> np.ndarray:
        if end <= self.n_out:
            return np.zeros(0)
        k = np.arange(self.n_out, end, dtype=np.int64)
        m = k * self.down + self.half_len
        newest = m // self.up - self._buf_start
        idx = newest[:, None] - np.arange(self.taps)[None, :]
        y: np.ndarray = np.einsum("kt,kt->k", self._phases[m % self.up], self._buf[idx])
        self.n_out = end
        # keep only the history the next output needs
        keep_from = (end * self.down + self.half_len) // self.up - (self.taps - 1)
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = keep_from
        return y
