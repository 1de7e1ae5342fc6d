"""The Qwen3-ASR language model on llama.cpp, through llama-cpp-python's ctypes layer (`llama_cpp.llama_cpp`).

That layer is generated for the libllama the package builds and ships, so struct layouts always match the
library (hand-written structs against another build is how the original project segfaulted). Daemon code never
touches ctypes: this class owns the model, the context and the batches, and maps failures to DecoderError.

The sequence is built incrementally: token batches and embedding batches (audio rows) are appended at explicit
positions, one position per row (GGUF arch `qwen3`), and `rewind(n)` drops everything from position n on, so
a caller can keep the KV cache of an unchanged prefix and re-evaluate only what changed.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from qasr_live.engine.gpu import OffloadPlan, OffloadReport, llama_build, out_of_memory_error, plan_offload
from qasr_live.errors import DecoderError

_LOGGER = logging.getLogger(__name__)
_NATIVE_LOGGER = logging.getLogger("qasr_live.llama_cpp")
# llama.cpp keeps one process-wide log hook; the ctypes callback object must outlive every use of it.
_log_callback: object = None
# While a model loads, its log lines (debug ones included: llama.cpp names each layer's device only there) also go
# to this reader, which learns where the layers went. One load at a time per process (the recognizer's thread).
_log_reader: Callable[[str], None] | None = None

KV_CACHE_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}  # ggml_type values
# An interruptible feed (a partial decode the endpoint may cut short) asks whether to stop between batches of this
# many positions: on 2 cores a 0.6B model prefills 64 positions in about 0.4 s, which bounds the final's wait.
INTERRUPTIBLE_BATCH = 64


def install_log_hook(llama: ModuleType) -> None:
    """Route llama.cpp's log lines (model loading, the quantizer's per-tensor lines) to the `qasr_live.llama_cpp`
    logger instead of stderr; the CLI shows its errors only, all of it with -v. `llama`: `llama_cpp.llama_cpp`."""
    global _log_callback
    if _log_callback is not None:
        return
    levels = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}  # ggml_log_level

    def log(level: int, text: bytes | None, _user_data: int | None) -> None:
        if text and _log_reader is not None:
            _log_reader(text.decode("utf-8", "replace"))
        if text and _NATIVE_LOGGER.isEnabledFor(levels.get(level, logging.DEBUG)):
            _NATIVE_LOGGER.log(levels.get(level, logging.DEBUG), text.decode("utf-8", "replace").rstrip())

    hook = llama.llama_log_callback(log)  # a ctypes function pointer (void (*)(int, const char *, void *))
    _log_callback = hook
    llama.llama_log_set(hook, ctypes.c_void_p())


class Decoder:
    """One GGUF model with one context and one sequence."""

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int = 4096,
        n_batch: int = 512,
        threads: int = 2,
        n_gpu_layers: int = 0,
        gpu: str = "require",
        gpu_device: int | None = None,
        kv_cache_type: str = "f16",
        flash_attention: bool = False,
        temperature: float = 0.0,
        seed: int = 0,
        repack: bool = True,
        embeddings: bool = False,
        spare_sequence: bool = False,
    ) -> None:
        import llama_cpp.llama_cpp as llama

        self._llama = llama
        install_log_hook(llama)
        llama.llama_backend_init()
        self.path = Path(path)
        # What the build can run on decides the layers, before anything is loaded: asking for GPU layers on a
        # CPU build is an error (or, with gpu: auto, one warning), never a silent CPU run.
        self.plan: OffloadPlan = plan_offload(llama_build(llama), gpu, n_gpu_layers, gpu_device)
        mparams = llama.llama_model_default_params()
        mparams.n_gpu_layers = self.plan.n_gpu_layers
        if self.plan.main_gpu is not None:  # one device: llama.cpp's single-GPU mode on it
            mparams.split_mode = llama.LLAMA_SPLIT_MODE_NONE
            mparams.main_gpu = self.plan.main_gpu
        # llama.cpp repacks quantized CPU weights into a second, interleaved copy for its faster kernels (the
        # mapped file stays resident too); repack=False keeps one copy (bench/memory.py measures both).
        mparams.use_extra_bufts = repack
        self.offload = OffloadReport()
        global _log_reader
        _log_reader = self.offload.feed
        try:
            self._model = llama.llama_model_load_from_file(str(path).encode(), mparams)
            if not self._model:
                if self.plan.on_gpu:
                    raise out_of_memory_error(self.path, self.plan, _block_count(self.path), _RESERVE_BYTES)
                raise DecoderError(
                    f"llama.cpp cannot load {path}: the GGUF is corrupt or not a qwen3 model "
                    "(run with --verbose for llama.cpp's reason); re-export with `qasr-live export`."
                )
            self._ctx = self._init_context(
                n_ctx, n_batch, threads, kv_cache_type, flash_attention, embeddings, spare_sequence
            )
        finally:
            _log_reader = None
        self._vocab = llama.llama_model_get_vocab(self._model)
        self.n_embd: int = llama.llama_model_n_embd(self._model)
        self.n_vocab: int = llama.llama_vocab_n_tokens(self._vocab)
        self.n_ctx: int = llama.llama_n_ctx(self._ctx)
        self.n_batch = n_batch
        self._memory = llama.llama_get_memory(self._ctx)
        self._embd_batch = llama.llama_batch_init(n_batch, self.n_embd, 1)
        self._token_batch = llama.llama_batch_init(n_batch, 0, 1)
        for batch in (self._embd_batch, self._token_batch):
            for i in range(n_batch):
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
        self._sampler: Any = None
        self.set_sampling(temperature, seed)
        self.n_past = 0
        if self.plan.on_gpu and self.offload.layers and not self.offload.gpu_layers:
            self.close()
            raise DecoderError(
                f"llama.cpp put none of the {sum(self.offload.layers.values())} layers of {self.path.name} on "
                f"{', '.join(d.name for d in self.plan.devices)}: run with --verbose for its reason, or set "
                "engine.n_gpu_layers: 0."
            )
        (_LOGGER.info if self.plan.on_gpu else _LOGGER.debug)("decoder %s: %s", self.path.name, self.offload.summary())

    def _init_context(
        self,
        n_ctx: int,
        n_batch: int,
        threads: int,
        kv_cache_type: str,
        flash_attention: bool,
        embeddings: bool,
        spare_sequence: bool,
    ) -> Any:
        llama = self._llama
        cparams = llama.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        # The spare sequence (id 1) parks KV entries while positions before them are fed again (`park`): one
        # unified cache whose cells can belong to both sequences, so parking copies nothing.
        cparams.n_seq_max = 2 if spare_sequence else 1
        cparams.kv_unified = spare_sequence
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.type_k = cparams.type_v = KV_CACHE_TYPES[kv_cache_type]
        cparams.no_perf = True
        if embeddings:  # per-position final-norm states (the forced aligner's classifier reads them)
            cparams.embeddings = True
            cparams.pooling_type = llama.LLAMA_POOLING_TYPE_UNSPECIFIED  # the GGUF says none (no warning)
        # On the CPU, llama.cpp's flash attention computes in f16: measured 6e-4 relative logit error against
        # the official model, versus 1e-7 without it. Worth it on a GPU, where it saves memory and time.
        # A quantized V cache exists only inside the flash-attention kernel.
        cparams.flash_attn_type = (
            llama.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if flash_attention or kv_cache_type == "q8_0"
            else llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        ctx = llama.llama_init_from_model(self._model, cparams)
        if not ctx and kv_cache_type == "q8_0" and self._head_size() % 32:
            llama.llama_model_free(self._model)
            raise DecoderError(
                f"engine.kv_cache_type q8_0 needs an attention head size divisible by 32 (its block size), but "
                f"{self.path} has {self._head_size()}; set engine.kv_cache_type: f16 in config.yaml."
            )
        if not ctx:
            llama.llama_model_free(self._model)
            where = f" with {self.plan.n_gpu_layers} layers on the GPU" if self.plan.on_gpu else ""
            raise DecoderError(
                f"llama.cpp cannot create a context of {n_ctx} tokens for {self.path}{where} (out of memory?); "
                "lower `engine.n_ctx`" + (" or `engine.n_gpu_layers`" if self.plan.on_gpu else "") + " in config.yaml."
            )
        return ctx

    def _head_size(self) -> int:
        """The attention head size (GGUF ``<arch>.attention.key_length``, else width / heads)."""
        llama = self._llama
        buf = ctypes.create_string_buffer(64)
        arch = (
            buf.value.decode()
            if llama.llama_model_meta_val_str(self._model, b"general.architecture", buf, 64) > 0
            else ""
        )
        if arch and llama.llama_model_meta_val_str(self._model, f"{arch}.attention.key_length".encode(), buf, 64) > 0:
            return int(buf.value.decode())
        return int(llama.llama_model_n_embd(self._model) // max(1, llama.llama_model_n_head(self._model)))

    def _check_open(self) -> None:
        if self._ctx is None:  # a freed llama context would segfault, not raise
            raise DecoderError("the decoder was closed")

    # --- vocabulary -------------------------------------------------------------------------------------------
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Token ids of `text`; with special=True, special-token strings like <|im_end|> become their ids."""
        self._check_open()
        raw = text.encode("utf-8")
        capacity = len(raw) + 8
        buf = (self._llama.llama_token * capacity)()
        n = self._llama.llama_tokenize(self._vocab, raw, len(raw), buf, capacity, False, special)
        if n < 0:
            raise DecoderError(f"tokenizing {text[:40]!r} needs {-n} tokens, more than the buffer")
        return list(buf[:n])

    def token_id(self, text: str) -> int:
        """The id of a special token, resolved by its string (never assume the real model's ids)."""
        ids = self.tokenize(text)
        if len(ids) != 1:
            raise DecoderError(
                f"{self.path}: the vocabulary has no single token {text!r} (got {ids}); this GGUF "
                "is not a Qwen3-ASR decoder. Re-export it with `qasr-live export`."
            )
        return ids[0]

    def piece(self, token: int) -> bytes:
        """The bytes of one token as text: control tokens (<|im_start|>, ...) render as nothing, as the official
        decoding with skip_special_tokens does; added text tokens such as <asr_text> render as themselves."""
        self._check_open()
        buf = ctypes.create_string_buffer(64)
        n = self._llama.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._llama.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    # --- sequence ---------------------------------------------------------------------------------------------
    def rewind(self, n_keep: int) -> None:
        """Forget every position >= n_keep (their KV entries are removed)."""
        if n_keep < self.n_past:
            self._llama.llama_memory_seq_rm(self._memory, 0, n_keep, -1)
            self.n_past = n_keep

    def drop(self, start: int, count: int) -> bool:
        """Remove positions [start, start + count) and move every later one down by `count` (llama.cpp re-rotates
        their keys to the new positions). Cheap, but not exact: the entries moved keep what they attended to in
        the removed ones, which a fresh prefill would not have. False (nothing changed) when this model's cache
        cannot shift positions."""
        if count <= 0 or start + count > self.n_past or not self.can_shift:
            return False
        self._llama.llama_memory_seq_rm(self._memory, 0, start, start + count)
        self._llama.llama_memory_seq_add(self._memory, 0, start + count, -1, -count)
        self.n_past -= count
        return True

    @property
    def can_shift(self) -> bool:
        """Whether this model's KV cache can move entries to other positions (drop, unpark)."""
        self._check_open()
        return bool(self._llama.llama_memory_can_shift(self._memory))

    def park(self, start: int, end: int) -> None:
        """Keep the KV entries of positions [start, end) aside (in the spare sequence) so that a rewind before
        them does not free them; `unpark` puts them back after what is fed meanwhile."""
        self._llama.llama_memory_seq_cp(self._memory, 0, 1, start, end)

    def unpark(self, start: int, end: int) -> None:
        """Put the parked entries of positions [start, end) back at the end of the sequence, moved to follow
        n_past (their keys re-rotated to the new positions). Not exact: they keep what they attended to before."""
        llama, memory = self._llama, self._memory
        delta = self.n_past - start
        if delta:
            llama.llama_memory_seq_add(memory, 1, start, end, delta)
        llama.llama_memory_seq_cp(memory, 1, 0, start + delta, end + delta)
        llama.llama_memory_seq_rm(memory, 1, -1, -1)
        self.n_past += end - start

    def drop_parked(self) -> None:
        self._llama.llama_memory_seq_rm(self._memory, 1, -1, -1)

    def feed_tokens(
        self,
        tokens: list[int],
        want_logits: bool = True,
        all_logits: bool = False,
        until: Callable[[], bool] | None = None,
    ) -> bool:
        """Append tokens; logits for the last one (want_logits), or for every one (all_logits: one batch, so at
        most n_batch tokens; `sample(i)` then reads the prediction after the i-th). `until`: as for
        feed_embeddings."""
        if all_logits and len(tokens) > self.n_batch:
            raise DecoderError(f"logits for {len(tokens)} tokens need one batch, but n_batch is {self.n_batch}")
        return self._feed(
            self._token_batch, len(tokens), want_logits, tokens=tokens, all_logits=all_logits, until=until
        )

    def feed_embeddings(
        self, rows: np.ndarray, want_logits: bool = False, until: Callable[[], bool] | None = None
    ) -> bool:
        """Append audio rows. `until`: asked between batches of at most `INTERRUPTIBLE_BATCH` rows; when it says
        True the feed stops there (the rows fed so far stay) and this returns False."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_embd:
            raise DecoderError(f"audio rows of shape {rows.shape} do not fit the decoder width {self.n_embd}")
        return self._feed(self._embd_batch, len(rows), want_logits, rows=rows, until=until)

    def _feed(
        self,
        batch: Any,  # a llama_batch (ctypes structure; its stub types pos/seq_id wrongly as arrays of arrays)
        n: int,
        want_logits: bool,
        tokens: list[int] | None = None,
        rows: np.ndarray | None = None,
        all_logits: bool = False,
        until: Callable[[], bool] | None = None,
    ) -> bool:
        self._check_open()
        if self.n_past + n > self.n_ctx:
            raise DecoderError(
                f"the prompt needs {self.n_past + n} positions but the context holds {self.n_ctx}; "
                "raise `engine.n_ctx` or lower `engine.segment_seconds` in config.yaml."
            )
        step = self.n_batch if until is None else min(self.n_batch, INTERRUPTIBLE_BATCH)
        for start in range(0, n, step):
            if until is not None and until():
                return False
            m = min(step, n - start)
            self._fill_batch(batch, start, m, tokens, rows, all_logits)
            last = start + m == n
            batch.logits[m - 1] = 1 if (want_logits and last) else 0
            rc = self._llama.llama_decode(self._ctx, batch)
            if rc != 0:
                raise DecoderError(f"llama_decode failed with code {rc} at position {self.n_past}")
            self.n_past += m
        return True

    def _fill_batch(
        self, batch: Any, start: int, m: int, tokens: list[int] | None, rows: np.ndarray | None, logits: bool
    ) -> None:
        """Put items ``start`` to ``start + m`` of the feed (tokens, else audio rows) into ``batch``, at the
        positions after ``n_past``, every row's output flag ``logits``."""
        if tokens is not None:
            for i in range(m):
                batch.token[i] = tokens[start + i]
        else:
            assert rows is not None, "tokens or rows"
            ctypes.memmove(batch.embd, rows[start : start + m].ctypes.data, m * self.n_embd * 4)
        for i in range(m):
            batch.pos[i] = self.n_past + i
            batch.logits[i] = 1 if logits else 0
        batch.n_tokens = m

    def feed_states(
        self, wanted: list[int], *, tokens: list[int] | None = None, rows: np.ndarray | None = None
    ) -> np.ndarray:
        """Append tokens (or audio rows) and return the final-norm states of the `wanted` indices of this feed,
        shape (len(wanted), n_embd). Needs a decoder opened with embeddings=True."""
        self._check_open()
        n = len(tokens) if tokens is not None else len(rows) if rows is not None else 0
        if rows is not None:
            rows = np.ascontiguousarray(rows, dtype=np.float32)
            if rows.ndim != 2 or rows.shape[1] != self.n_embd:
                raise DecoderError(f"audio rows of shape {rows.shape} do not fit the decoder width {self.n_embd}")
        if self.n_past + n > self.n_ctx:
            raise DecoderError(
                f"the alignment needs {self.n_past + n} positions but the context holds {self.n_ctx}; "
                "align shorter stretches of audio."
            )
        flagged = set(wanted)
        # Embeddings mode outputs every row of a batch (llama.cpp overrides the flags), which costs the output
        # head's product on each: a feed that wants no states (the audio rows) runs with it off.
        self._llama.llama_set_embeddings(self._ctx, bool(flagged))
        out = np.zeros((len(wanted), self.n_embd), dtype=np.float32)
        where = {index: k for k, index in enumerate(wanted)}
        batch = self._token_batch if tokens is not None else self._embd_batch
        for start in range(0, n, self.n_batch):
            m = min(self.n_batch, n - start)
            self._fill_batch(batch, start, m, tokens, rows, bool(flagged))  # with states wanted, every row
            rc = self._llama.llama_decode(self._ctx, batch)
            if rc != 0:
                raise DecoderError(f"llama_decode failed with code {rc} at position {self.n_past}")
            for i in range(m):
                if start + i in flagged:
                    ptr = self._llama.llama_get_embeddings_ith(self._ctx, i)
                    if not ptr:
                        raise DecoderError("llama.cpp returned no states: the decoder was not opened for them")
                    out[where[start + i]] = np.ctypeslib.as_array(ptr, shape=(self.n_embd,))
            self.n_past += m
        return out

    def sample(self, index: int = -1) -> int:
        """The next token after the last fed position, or after the index-th token of the last batch fed with
        all_logits (greedy unless a temperature was set)."""
        self._check_open()
        token = self._llama.llama_sampler_sample(self._sampler, self._ctx, index)
        return int(token)

    def set_sampling(self, temperature: float, seed: int = 0) -> None:
        """Greedy (temperature <= 0) or seeded sampling at `temperature` from now on: the temperature fallback
        re-decodes a looping segment hotter, then comes back to the configured sampling."""
        llama = self._llama
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        if temperature > 0:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_temp(temperature))
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_dist(seed))
        else:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_greedy())
        if self._sampler is not None:
            llama.llama_sampler_free(self._sampler)
        self._sampler, self.greedy = chain, temperature <= 0

    def only_sample(self, allowed: set[int]) -> None:
        """Benchmarks: sample only among `allowed` (every other token gets a -1e9 logit bias). The logits are
        still computed over the whole vocabulary, so the cost stays that of real decoding."""
        self._check_open()
        llama = self._llama
        banned = [t for t in range(self.n_vocab) if t not in allowed]
        biases = (llama.llama_logit_bias * len(banned))()
        for entry, token in zip(biases, banned, strict=True):
            entry.token, entry.bias = token, -1e9
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_logit_bias(self.n_vocab, len(banned), biases))
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_greedy())
        llama.llama_sampler_free(self._sampler)
        self._sampler, self.greedy = chain, True

    def close(self) -> None:
        llama = self._llama
        if getattr(self, "_ctx", None):
            llama.llama_sampler_free(self._sampler)
            llama.llama_batch_free(self._embd_batch)
            llama.llama_batch_free(self._token_batch)
            llama.llama_free(self._ctx)
            llama.llama_model_free(self._model)
            self._ctx = None

    def __enter__(self) -> Decoder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


_RESERVE_BYTES = 512 * 1024 * 1024  # KV cache and compute buffers beside the weights: a rough allowance


def _block_count(path: Path) -> int | None:
    """The GGUF's layer count (for the out-of-memory advice), or None when its metadata cannot say."""
    try:
        import gguf

        reader = gguf.GGUFReader(path)
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        return int(reader.fields[f"{arch}.block_count"].parts[-1][0])
    except (OSError, ValueError, KeyError, IndexError) as e:  # the advice only; the load error is raised anyway
        _LOGGER.debug("no block count in %s: %s", path, e)
        return None
