"""The Python API: ``from qasr_live import Engine``.

An ``Engine`` holds one model (encoder + decoder) and transcribes files or arrays with it, whole
(``transcribe``) or segment by segment as they decode (``stream``). It is what ``qasr-live transcribe`` does,
without the command line: the same model resolution (``model_store.resolve_model``), the same config keys, the
same pipeline (``offline/pipeline.py``), the same errors (``qasr_live.errors``; every one a ``QasrError`` with
one line naming the problem and the fix). Documented, with examples a test runs, in docs/api.md.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from qasr_live.audio.files import open_audio
from qasr_live.audio.pcm import SAMPLE_RATE
from qasr_live.config import AppConfig
from qasr_live.config_file import load_config, with_overrides
from qasr_live.engine.aligner import Aligner
from qasr_live.engine.encoder import AudioEncoder
from qasr_live.engine.model_dir import ModelDir
from qasr_live.errors import ConfigError, QasrError
from qasr_live.model_store import resolve_aligner, resolve_model
from qasr_live.offline.pipeline import Transcriber
from qasr_live.offline.timestamps import align_transcript
from qasr_live.offline.transcript import Segment, Transcript

__all__ = ["DEVICES", "Engine"]

DEVICES = ("cpu", "gpu")  # gpu: every decoder layer offloaded (a llama.cpp build with a GPU backend)
Audio = str | Path | np.ndarray


class Engine:
    """A loaded Qwen3-ASR model that transcribes audio files and arrays.

    ``model``: a model directory written by ``qasr-live export``/``pull``, or the name of an installed model;
    None picks as the CLI does (config.yaml's ``model`` section, the store's default, else the embedded demo).
    ``language``: force the spoken language (e.g. "English", "Chinese"); None detects it. ``context``: hot words
    and background text. ``device``: "cpu" or "gpu". ``config``: a config.yaml path or an ``AppConfig`` for the
    ``engine`` and ``recognition`` keys (threads, segment length, ``recognition.itn``, ...); None reads the
    user's config.yaml if there is one. ``aligner``: a forced-aligner model (directory or installed name;
    default: config.yaml's ``model.aligner``), needed for ``timestamps=True``; it is loaded on first use.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        language: str | None = None,
        context: str | None = None,
        device: str = "cpu",
        config: str | Path | AppConfig | None = None,
        aligner: str | Path | None = None,
    ) -> None:
        if device not in DEVICES:
            raise ConfigError(f"device={device!r}: unknown device; use one of {', '.join(DEVICES)}")
        cfg = config if isinstance(config, AppConfig) else load_config(config)
        overrides: dict[str, Any] = {}
        if model is not None:
            # a path (anything with a separator, or an existing directory) or an installed model's name
            as_path = Path(model).expanduser()
            if isinstance(model, Path) or "/" in str(model) or as_path.is_dir():
                overrides["model.dir"] = str(as_path)
                overrides["model.name"] = None
            else:
                overrides["model.name"], overrides["model.dir"] = str(model), None
        if language is not None:
            overrides["recognition.language"] = language
        if context is not None:
            overrides["recognition.context"] = context
        if aligner is not None:
            overrides["model.aligner"] = str(aligner)
        if device == "gpu":  # every layer, and the encoder on a GPU provider when onnxruntime has one
            overrides["engine.n_gpu_layers"] = -1
        sources = {key: f"Engine({key.split('.')[-1]}=...)" for key in overrides}
        self.config: AppConfig = with_overrides(cfg, overrides, sources=sources) if overrides else cfg
        self.model: ModelDir = resolve_model(self.config)
        self.aligner: ModelDir | None = resolve_aligner(self.config)
        self._aligner: Aligner | None = None  # loaded on the first timestamps=True
        e = self.config.engine
        self._lock = threading.Lock()  # one transcription at a time: the decoder has one sequence
        self._encoder = AudioEncoder(
            self.model.frontend,
            self.model.backend,
            max(e.encoder_threads, e.decoder_threads),
            providers=e.encoder_providers,
        )
        self._transcriber: Transcriber | None = Transcriber(self.model, e, self._encoder)

    # --- transcription ----------------------------------------------------------------------------------------
    def transcribe(
        self,
        audio: Audio,
        *,
        language: str | None = None,
        context: str | None = None,
        start: float = 0.0,
        duration: float | None = None,
        timestamps: bool = False,
        sample_rate: int = SAMPLE_RATE,
    ) -> Transcript:
        """Transcribe a file (any WAV; other formats through ffmpeg) or an array of mono samples at
        ``sample_rate`` (float in [-1, 1], or int16). ``start``/``duration`` (seconds) cut the input; segment
        times stay those of the whole input. Returns the ``Transcript`` (text, language, segments, stats)."""
        run = self._run(audio, language, context, start, duration, timestamps, sample_rate)
        while True:
            try:
                next(run)
            except StopIteration as done:
                result: Transcript = done.value
                return result

    def stream(
        self,
        audio: Audio,
        *,
        language: str | None = None,
        context: str | None = None,
        start: float = 0.0,
        duration: float | None = None,
        timestamps: bool = False,
        sample_rate: int = SAMPLE_RATE,
    ) -> Iterator[Segment]:
        """Like ``transcribe``, but yields each ``Segment`` as soon as it is decoded (a long file's first
        segment comes after one segment's work, not the file's). Files are read in blocks: memory does not grow
        with their length. With ``timestamps=True`` each segment is aligned alone, before it is yielded
        (``transcribe`` aligns neighbouring segments together, as ``qasr-live transcribe`` does)."""
        run = self._run(audio, language, context, start, duration, False, sample_rate, per_segment=timestamps)
        yield from run

    def _run(
        self,
        audio: Audio,
        language: str | None,
        context: str | None,
        start: float,
        duration: float | None,
        timestamps: bool,
        sample_rate: int,
        per_segment: bool = False,
    ) -> Generator[Segment, None, Transcript]:
        if timestamps or per_segment:
            self._require_aligner()
        r = self.config.recognition
        if language is not None or context is not None:
            overrides = {"recognition.language": language} if language is not None else {}
            if context is not None:
                overrides["recognition.context"] = context
            r = with_overrides(self.config, overrides, sources={k: k.split(".")[-1] for k in overrides}).recognition
        blocks, offset = self._blocks(audio, start, duration, sample_rate)
        kept: list[np.ndarray] = []  # the samples, kept only when the aligner needs them again
        if timestamps or per_segment:
            blocks = _keeping(blocks, kept)
        with self._lock:
            transcriber = self._require()
            run = transcriber.stream(blocks, r.language, r.context, itn=r.itn, offset=offset)
            while True:
                try:
                    segment = next(run)
                except StopIteration as done:
                    result: Transcript = done.value
                    break
                if per_segment:
                    one = Transcript(segment.text, r.language, [segment])
                    segment = self._align(one, kept, offset, r.language).segments[0]
                yield segment
        if timestamps:
            result = self._align(result, kept, offset, r.language)
        return result

    def _blocks(
        self, audio: Audio, start: float, duration: float | None, sample_rate: int
    ) -> tuple[Iterator[np.ndarray], float]:
        """The audio as 16 kHz blocks, and the time of its first sample in the input."""
        if isinstance(audio, str | Path):
            return open_audio(audio, start=start, duration=duration).blocks(), start
        samples = np.asarray(audio)
        if samples.dtype == np.int16:
            samples = samples.astype(np.float32) / 32768.0
        if samples.ndim != 1:
            raise QasrError(f"audio must be mono (one dimension), got shape {samples.shape}; average the channels")
        if not isinstance(sample_rate, int) or sample_rate <= 0:
            raise QasrError(f"sample_rate={sample_rate!r}: give the array's rate in Hz, e.g. 16000")
        if start < 0 or (duration is not None and duration <= 0):
            raise QasrError(f"start={start}, duration={duration}: start must be >= 0 and duration > 0 seconds")
        first = round(start * sample_rate)
        if samples.size and first >= len(samples):
            raise QasrError(
                f"start={start:g} s is beyond the end of the audio ({len(samples) / sample_rate:.3f} s); "
                "give a start inside it"
            )
        samples = samples[first : None if duration is None else first + max(1, round(duration * sample_rate))]
        if sample_rate != SAMPLE_RATE:
            from scipy.signal import resample_poly

            g = np.gcd(sample_rate, SAMPLE_RATE)
            samples = resample_poly(samples.astype(np.float64), SAMPLE_RATE // g, sample_rate // g)
        return iter([samples.astype(np.float32)]), first / sample_rate

    def _require_aligner(self) -> Aligner:
        if self.aligner is None:
            raise ConfigError(
                "timestamps=True needs a forced-aligner model: install it with `qasr-live pull "
                "Qwen/Qwen3-ForcedAligner-0.6B` and pass Engine(aligner=NAME_OR_DIR) (or set model.aligner)"
            )
        if self._aligner is None:
            self._aligner = Aligner(self.aligner, threads=self.config.engine.decoder_threads, setting="aligner")
        return self._aligner

    def _align(self, transcript: Transcript, kept: list[np.ndarray], offset: float, language: str | None) -> Transcript:
        """``transcript`` with ``Segment.words`` filled by the forced aligner, from the samples kept."""
        samples = np.concatenate(kept) if kept else np.zeros(0, np.float32)
        return align_transcript(self._require_aligner(), samples, transcript, language, audio_start=offset)

    # --- lifetime ---------------------------------------------------------------------------------------------
    def _require(self) -> Transcriber:
        if self._transcriber is None:
            raise QasrError("this Engine was closed; create a new Engine to transcribe again")
        return self._transcriber

    def close(self) -> None:
        """Free the model (the decoder's native memory at once). Calling it again does nothing."""
        with self._lock:
            if self._transcriber is not None:
                self._transcriber.close()
                self._transcriber = None
            if self._aligner is not None:
                self._aligner.close()
                self._aligner = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._transcriber is None else "open"
        return f"Engine(model={str(self.model.path)!r}, language={self.config.recognition.language!r}, {state})"


def _keeping(blocks: Iterator[np.ndarray], kept: list[np.ndarray]) -> Iterator[np.ndarray]:
    """``blocks``, each also appended to ``kept`` (the aligner reads the samples again after decoding)."""
    for block in blocks:
        kept.append(block)
        yield block
