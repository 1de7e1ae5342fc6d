"""Qwen3-ForcedAligner on the same runtime as the recognizer: ONNX encoder, llama.cpp decoder, numpy head.

The aligner reads, in one causal pass (no generation), the prompt the official `Qwen3ForcedAligner.align`
builds::

    <|audio_start|>{audio rows}<|audio_end|>word1<timestamp><timestamp>word2<timestamp><timestamp>...

and at every `<timestamp>` position its classifier (`classify_num` slots of 80 ms) names the slot of the
word's start, then its end. llama.cpp runs the decoder in embeddings mode and returns the final-norm states of
the `<timestamp>` positions only; the classifier (classifier.f32.npy, exported beside the GGUF) is applied here.
Slot times are repaired to be non-decreasing (`align_text.fix_timestamps`) and the words come back with start
and end in seconds from the start of the audio given.

One call aligns at most `max_seconds` of audio (the official wrapper cuts at 180 s, the model knows 400 s; here
300 s) within the context's positions; callers with longer audio align it in pieces (offline/timestamps.py).
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass

import numpy as np

from qasr_live.audio.pcm import SAMPLE_RATE
from qasr_live.engine.align_text import fix_timestamps, split_words
from qasr_live.engine.decoder import Decoder
from qasr_live.engine.encoder import AudioEncoder, Encoder
from qasr_live.engine.features import feature_output_length, log_mel
from qasr_live.engine.model_dir import KIND_ALIGNER, ModelDir, require_kind
from qasr_live.engine.prompt import TIMESTAMP
from qasr_live.errors import AlignmentError, ModelError

_LOGGER = logging.getLogger(__name__)
MAX_SECONDS = 300.0  # the "up to 5 min of audio per call"
ALIGNER_N_CTX = 8192  # 300 s of audio is 3900 rows; the rest holds ~1400 words (3 positions each)
HOP = 160  # mel frames are 10 ms


@dataclass(frozen=True, slots=True)
class AlignedWord:
    """One aligned word (a character for CJK); seconds from the start of the aligned audio."""

    text: str
    start: float
    end: float


class Aligner:
    """One aligner model: its encoder (in this process) and its decoder. Not thread-safe: one thread uses it."""

    def __init__(
        self,
        model: ModelDir,
        *,
        threads: int = 2,
        n_ctx: int = ALIGNER_N_CTX,
        n_gpu_layers: int = 0,
        encoder: Encoder | None = None,
        setting: str = "model.aligner",
    ) -> None:
        require_kind(model, KIND_ALIGNER, setting)
        spec = model.manifest.get("aligner")
        if not isinstance(spec, dict) or not isinstance(spec.get("classify_num"), int) or model.classifier is None:
            raise ModelError(
                f"{model.path}/manifest.json is corrupt: the aligner's classify_num or classifier is missing; "
                "re-export the model with `qasr-live export`."
            )
        self.model = model
        self.segment_ms = float(spec.get("segment_ms", 80.0))
        self.classifier = np.load(model.classifier).astype(np.float32, copy=False)
        if self.classifier.shape != (spec["classify_num"], model.dims["decoder_hidden"]):
            raise ModelError(
                f"{model.classifier} has shape {self.classifier.shape}, not classify_num x decoder_hidden; "
                "re-export the model with `qasr-live export`."
            )
        self.max_seconds = min(MAX_SECONDS, len(self.classifier) * self.segment_ms / 1000.0)
        self.encoder: Encoder = encoder or AudioEncoder(model.frontend, model.backend, threads=threads)
        # n_batch 256: in embeddings mode llama.cpp keeps a full-vocabulary output row per position of a batch
        # (152064 floats: 156 MB at 256, twice that at 512), and larger batches gain little on a CPU.
        self.decoder = Decoder(
            model.decoder, n_ctx=n_ctx, n_batch=256, threads=threads, n_gpu_layers=n_gpu_layers, embeddings=True
        )
        try:
            self._start = self.decoder.token_id("<|audio_start|>")
            self._end = self.decoder.token_id("<|audio_end|>")
            self._timestamp = self.decoder.token_id(TIMESTAMP)
        except BaseException:
            self.decoder.close()
            raise

    def close(self) -> None:
        self.decoder.close()

    def __enter__(self) -> Aligner:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def word_ids(self, words: list[str]) -> list[list[int]]:
        """Each word's token ids, tokenized alone (the official processor tokenizes the text between the
        `<timestamp>` tokens piece by piece), NFC-normalized as the tokenizer's normalizer does."""
        return [self.decoder.tokenize(unicodedata.normalize("NFC", w), special=False) for w in words]

    def positions(self, n_samples: int, word_ids: list[list[int]]) -> int:
        """Decoder positions one call needs for that much audio and those words."""
        rows = feature_output_length(n_samples // HOP)
        return 2 + rows + sum(len(ids) + 2 for ids in word_ids)

    def align(self, audio: np.ndarray, text: str, language: str | None = None) -> list[AlignedWord]:
        """Time every word of `text` in `audio` (16 kHz mono float32)."""
        words, classes = self.slots(audio, text, language)
        times = fix_timestamps([float(c) * self.segment_ms for c in classes])
        return [
            AlignedWord(word, round(times[2 * i] / 1000.0, 3), round(times[2 * i + 1] / 1000.0, 3))
            for i, word in enumerate(words)
        ]

    def slots(self, audio: np.ndarray, text: str, language: str | None = None) -> tuple[list[str], list[int]]:
        """The words of `text` and the classifier's slot for each of their timestamps, before any repair."""
        words = split_words(text, language)
        if not words:
            raise AlignmentError(
                f"nothing to align in {text[:40]!r}: the text has no letters or digits; give the words spoken."
            )
        seconds = len(audio) / SAMPLE_RATE
        if seconds > self.max_seconds:
            raise AlignmentError(
                f"{seconds:.1f} s of audio in one alignment; the aligner takes at most {self.max_seconds:g} s: "
                "align it in pieces (transcribe --timestamps does)."
            )
        slots = int(seconds * 1000 // self.segment_ms)
        if len(words) > slots:
            raise AlignmentError(
                f"the text has {len(words)} words but the audio lasts {seconds:.2f} s ({slots} slots of "
                f"{self.segment_ms:.0f} ms, one word each at most): the text is not what this audio says."
            )
        ids = self.word_ids(words)
        needed = self.positions(len(audio), ids)
        if needed > self.decoder.n_ctx:
            raise AlignmentError(
                f"{len(words)} words over {seconds:.1f} s need {needed} positions, more than the aligner's "
                f"{self.decoder.n_ctx}: align shorter pieces."
            )
        rows = self.encoder.encode(log_mel(np.asarray(audio, dtype=np.float32)))
        tokens: list[int] = [self._end]
        wanted: list[int] = []
        for word in ids:
            tokens += word
            wanted += [len(tokens), len(tokens) + 1]
            tokens += [self._timestamp, self._timestamp]
        d = self.decoder
        d.rewind(0)
        d.feed_states([], tokens=[self._start])
        d.feed_states([], rows=rows)
        states = d.feed_states(wanted, tokens=tokens)
        return words, [int(c) for c in np.argmax(states @ self.classifier.T, axis=-1)]
