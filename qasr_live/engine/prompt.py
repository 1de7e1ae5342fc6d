"""The official Qwen3-ASR prompt, and parsing of what the model answers.

Rendered chat template (system turn always present, empty without context)::

    <|im_start|>system\\n{context}<|im_end|>\\n<|im_start|>user\\n<|audio_start|>{audio rows}<|audio_end|><|im_end|>\\n
    <|im_start|>assistant\\n[language {Language}<asr_text>][{text so far}]

The model answers ``language English<asr_text>the words<|im_end|>`` (or only the words when the language was
forced); ``language None`` means it heard no speech. Special tokens are always resolved by string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# The Qwen3-ASR special tokens, by string: their ids differ between vocabularies and are always looked up.
CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>", "<|audio_end|>", "<|audio_pad|>")
ASR_TEXT = "<asr_text>"  # an added token that is *not* special: it survives skip_special_tokens=True
TIMESTAMP = "<timestamp>"  # ForcedAligner only


def prompt_head(context: str) -> str:
    """Everything before the audio rows."""
    return f"<|im_start|>system\n{context}<|im_end|>\n<|im_start|>user\n<|audio_start|>"


def prompt_tail(language: str | None = None, text_so_far: str = "") -> str:
    """Everything after the audio rows. `language` (forced or already detected) is written as the model's own
    header would be; `text_so_far` continues an earlier answer (segment memory, streaming prefix)."""
    header = f"language {language}{ASR_TEXT}" if language else ""
    return f"<|audio_end|><|im_end|>\n<|im_start|>assistant\n{header}{text_so_far}"


@dataclass(frozen=True, slots=True)
class Prompt:
    """A decoder prompt: token ids, the audio rows (blocks, concatenated in order) as one audio block, token ids."""

    head: list[int]
    rows: list[np.ndarray]
    tail: list[int]
    # Leading tail tokens a cache may keep when rows change (the header and the decoder memory's text: see
    # PrefixCache.feed_until `reuse`); 0 = the tail follows the rows exactly.
    stable_tail: int = 0

    @property
    def n_rows(self) -> int:
        return sum(len(block) for block in self.rows)

    @property
    def n_positions(self) -> int:
        return len(self.head) + self.n_rows + len(self.tail)


def build_prompt(
    tokenize: Callable[[str], list[int]],
    context: str,
    header_language: str | None,
    rows: Sequence[np.ndarray],
    text_ids: Sequence[int] = (),
    stable_text: int = 0,
) -> Prompt:
    """The prompt with memory: earlier audio (memory) and the current audio as one audio block, then the header
    (if the language is known) and the text so far (the memory's text, then the current one); the model continues
    that text. Used alike by the offline segments and the streaming recognizer. `stable_text`: how many of
    `text_ids` (the memory's) may keep their KV entries when rows change (Prompt.stable_tail)."""
    header = tokenize(prompt_tail(header_language))
    return Prompt(tokenize(prompt_head(context)), list(rows), header + list(text_ids), len(header) + stable_text)


@dataclass(frozen=True, slots=True)
class Answer:
    language: str | None  # None: not stated (forced or cut short); "" : the model said "language None"
    text: str

    @property
    def no_speech(self) -> bool:
        return self.language == "" and not self.text


def parse_answer(raw: str, forced_language: str | None = None) -> Answer:
    """Split the model's answer into language and text, as the official `parse_asr_output` does."""
    s = raw.strip()
    if forced_language:
        return Answer(forced_language, s)
    if ASR_TEXT not in s:
        return Answer(None, s)
    meta, text = s.split(ASR_TEXT, 1)
    meta = meta.strip()
    language = meta[len("language") :].strip() if meta.lower().startswith("language") else meta
    if language.lower() == "none":
        return Answer("", "")
    return Answer(language or None, text.strip())


def split_answer(
    ids: list[int], asr_text_id: int, detokenize: Callable[[list[int]], str]
) -> tuple[str | None, list[int]]:
    """The language stated by an answer generated without a written header, and the ids of its text. Language
    None: none stated (every id is text); "": the model said `language None` (no speech, no text ids)."""
    if asr_text_id not in ids:
        return None, ids
    split = ids.index(asr_text_id)
    answer = parse_answer(detokenize(ids[: split + 1]))
    return answer.language, ([] if answer.language == "" else ids[split + 1 :])
