"""The Qwen3-ASR audio encoder on ONNX Runtime: frontend per 1 s mel chunk, backend per 8 s window.

The model was trained with attention restricted to block-diagonal windows of 104 rows (8 s). Windows are
independent, so the backend runs them as a batch (the last, shorter one padded and its padding masked out):
exactly the block-diagonal mask, at O(T * 104) instead of O(T^2) cost. Completed windows never change, which is
what lets the streaming recognizer encode incrementally.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from qasr_live.engine.features import feature_output_length
from qasr_live.engine.gpu import CPU_PROVIDER, encoder_providers
from qasr_live.errors import ModelError

_LOGGER = logging.getLogger(__name__)
CHUNK_FRAMES = 100
ROWS_PER_CHUNK = 13
WINDOW_ROWS = 104  # 13 rows/s x n_window_infer 800 frames / 100 frames per chunk
# Chunks per frontend run. The int8 frontend quantizes its activations dynamically, with one scale over the whole
# batch: a chunk's rows depended on which chunks shared its run (streaming and offline batch differently). One
# chunk per run makes them a function of the chunk alone, and bounds the convolution buffers, which grow with the
# batch: the 0.6B encoder process peaked at 305 MB against 368 MB with 4 chunks per run (10 s clip).
FRONTEND_BATCH = 1
DISABLE_PREPACKING = True  # see AudioEncoder; bench/memory.py measures both
_MASKED = np.float32(-1e9)


class Encoder(Protocol):
    """What the recognizer and the offline pipeline need of an encoder: AudioEncoder in this process, or
    EncoderWorker (the same methods, run in a child process)."""

    def frontend(self, chunks: np.ndarray) -> npt.NDArray[np.float32]: ...

    def backend(self, rows: np.ndarray) -> npt.NDArray[np.float32]: ...

    def encode(self, mel: np.ndarray) -> npt.NDArray[np.float32]: ...


def window_batch(
    rows: np.ndarray, window: int = WINDOW_ROWS
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Split (T, d) rows into (W, window, d) plus the additive (W, 1, window, window) mask that hides the
    zero padding of the last window. With W windows side by side this *is* the block-diagonal mask."""
    n, d = rows.shape
    n_windows = max(1, -(-n // window))
    width = min(window, n) if n_windows == 1 else window
    padded = np.zeros((n_windows * width, d), dtype=np.float32)
    padded[:n] = rows
    mask = np.zeros((n_windows, 1, width, width), dtype=np.float32)
    tail = n - (n_windows - 1) * width
    mask[-1, :, :, tail:] = _MASKED
    return padded.reshape(n_windows, width, d), mask


class AudioEncoder:
    """Two ONNX Runtime sessions. Not thread-safe; one instance per process (see worker.py)."""

    def __init__(
        self,
        frontend: str | Path,
        backend: str | Path,
        threads: int = 1,
        arena: bool = False,
        providers: Sequence[str] = ("auto",),
    ) -> None:
        """`providers`: `engine.encoder_providers` names (engine/gpu.py), in order; the CPU is always last."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        # ONNX Runtime's CPU arena keeps the largest buffers any input length ever needed: measured on the 0.6B
        # encoder, peak RSS 1262 MB with it and 860 MB without, for 21 % more encoder time (bench/memory.py). The
        # daemon runs without it; offline transcription (30 s segments at once) with it.
        options.enable_cpu_mem_arena = arena
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads burn a core while the daemon waits for speech; wake-up latency is negligible here.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3
        # Prepacking copies every int8 weight matrix into the kernel's layout and keeps both until the session is
        # built: the 0.6B encoder process peaked 37-137 MB higher with it, for encoder time within noise and the
        # same output bits (bench/memory.py; docs/performance.md "Memory budget").
        options.add_session_config_entry("session.disable_prepacking", "1" if DISABLE_PREPACKING else "0")
        wanted = encoder_providers(list(providers), ort.get_available_providers())
        try:
            self._frontend = ort.InferenceSession(str(frontend), options, providers=wanted)
            self._backend = ort.InferenceSession(str(backend), options, providers=wanted)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
            on = (
                ""
                if wanted == [CPU_PROVIDER]
                else f" on {wanted[0]} (a GPU failure: try engine.encoder_providers: [cpu])"
            )
            raise ModelError(
                f"cannot load the ONNX encoder ({Path(frontend).name}, {Path(backend).name}){on}: {e}. "
                "Re-export the model with `qasr-live export`."
            ) from e
        #: the providers onnxruntime really runs the encoder with (it drops one whose library fails to load)
        self.providers: list[str] = list(self._backend.get_providers())
        gpu_wanted = [p for p in wanted if p != CPU_PROVIDER]
        if gpu_wanted and gpu_wanted[0] not in self.providers:
            if "auto" not in providers:  # asked for by name: never a silent CPU run
                raise ModelError(
                    f"onnxruntime could not start {gpu_wanted[0]} for the encoder (runs with: "
                    f"{', '.join(self.providers)}): its GPU libraries or driver are missing or too old "
                    "(CUDA: the CUDA and cuDNN versions onnxruntime-gpu was built for); fix them, or set "
                    "engine.encoder_providers: [cpu]."
                )
            _LOGGER.warning("the encoder runs on %s: onnxruntime could not start %s", self.providers[0], gpu_wanted[0])
        elif not gpu_wanted and "auto" in providers:
            _LOGGER.info("the encoder runs on the CPU: the installed onnxruntime has no GPU execution provider")
        else:
            _LOGGER.info("the encoder runs on %s", ", ".join(self.providers))
        self.d_model = int(self._frontend.get_outputs()[0].shape[-1])
        self.output_dim = int(self._backend.get_outputs()[0].shape[-1])  # static: the projector's width

    def frontend(self, chunks: np.ndarray) -> npt.NDArray[np.float32]:
        """(B, 128, 100) mel chunks -> (B, 13, d_model) rows, FRONTEND_BATCH chunks per run."""
        parts = [
            self._frontend.run(
                None, {"chunk_mel": np.ascontiguousarray(chunks[i : i + FRONTEND_BATCH], dtype=np.float32)}
            )[0]
            for i in range(0, max(1, len(chunks)), FRONTEND_BATCH)
        ]
        out: npt.NDArray[np.float32] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return out

    def backend(self, rows: np.ndarray) -> npt.NDArray[np.float32]:
        """(T, d_model) frontend rows -> (T, output_dim), attending within 104-row windows from row 0."""
        if len(rows) == 0:
            return np.zeros((0, self.output_dim), dtype=np.float32)
        batch, mask = window_batch(rows)
        out: npt.NDArray[np.float32] = self._backend.run(None, {"hidden_states": batch, "attention_mask": mask})[0]
        return out.reshape(-1, out.shape[-1])[: len(rows)]

    def frontend_rows(self, mel: np.ndarray) -> npt.NDArray[np.float32]:
        """(128, L) mel -> (feature_output_length(L), d_model): chunks of 100 frames, the last zero-padded."""
        n_frames = mel.shape[1]
        n_chunks = -(-n_frames // CHUNK_FRAMES)
        padded = np.zeros((mel.shape[0], n_chunks * CHUNK_FRAMES), dtype=np.float32)
        padded[:, :n_frames] = mel
        chunks = padded.reshape(mel.shape[0], n_chunks, CHUNK_FRAMES).transpose(1, 0, 2)
        rows = self.frontend(chunks).reshape(-1, self.d_model)
        return rows[: feature_output_length(n_frames)]

    def encode(self, mel: np.ndarray) -> npt.NDArray[np.float32]:
        """(128, L) log-mel -> (N, output_dim) audio rows for the decoder."""
        return self.backend(self.frontend_rows(mel))
