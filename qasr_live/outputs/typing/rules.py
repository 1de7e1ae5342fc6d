"""Voice commands and text rules: what the model wrote → what is typed.

:class:`TextRules` turns the committed text of an utterance, commit by commit, into the text to type:

* **voice commands** (``typing.voice_commands``), said as words of their own: "new line" types a line break,
  "new paragraph" two, "scratch that" deletes what was typed of the utterance so far (or, said at its start,
  the previous utterance). The phrases of every language in :data:`COMMANDS` are known; with
  ``recognition.language`` set, only that language's. Punctuation the model put on the command words ("New
  line." ) goes with them.
* **punctuation words** (``typing.punctuation_words``): "comma", "period", "question mark"... become the mark,
  attached to the word before; ``auto`` does it only in a commit the model did not punctuate itself.
* **replacements** (``typing.replacements``): ``{"from": "to"}``, a literal whole-word match, case-insensitive,
  the case of the match carried over (``teh`` → ``the``, ``Teh`` → ``The``, ``TEH`` → ``THE``); a key written
  ``/pattern/`` is a regular expression (case-insensitive; ``\\1`` in the value is its group).

A command can be cut in two by the streaming commits ("new" now, " line" a moment later), so the trailing words
that could begin a command are **held back** until the next commit or the end of the utterance
(:meth:`TextRules.end`). Trailing white space is held back too (nothing typed can be taken back). The model's own
text never types a line break or a tab (:func:`~qasr_live.outputs.typing.sanitize.sanitize`); only commands do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from qasr_live.errors import ConfigError
from qasr_live.outputs.typing.sanitize import sanitize

__all__ = ["COMMANDS", "PUNCTUATION_WORDS", "Release", "TextRules", "compile_replacements"]

NEWLINE, PARAGRAPH, SCRATCH = "\n", "\n\n", "scratch"

#: Spoken commands per language: phrase (lower case, words separated by one space) → action.
COMMANDS: dict[str, dict[str, str]] = {
    "English": {"new line": NEWLINE, "newline": NEWLINE, "new paragraph": PARAGRAPH, "scratch that": SCRATCH},
    "German": {"neue zeile": NEWLINE, "neuer absatz": PARAGRAPH, "streich das": SCRATCH},
    "French": {"nouvelle ligne": NEWLINE, "nouveau paragraphe": PARAGRAPH, "efface ça": SCRATCH},
    "Spanish": {"nueva línea": NEWLINE, "nuevo párrafo": PARAGRAPH, "borra eso": SCRATCH},
}

#: Spoken punctuation per language: phrase → mark (attached to the word before it).
PUNCTUATION_WORDS: dict[str, dict[str, str]] = {
    "English": {
        "comma": ",",
        "period": ".",
        "full stop": ".",
        "question mark": "?",
        "exclamation mark": "!",
        "exclamation point": "!",
        "colon": ":",
        "semicolon": ";",
    },
    "German": {"komma": ",", "punkt": ".", "fragezeichen": "?", "ausrufezeichen": "!", "doppelpunkt": ":"},
    "French": {"virgule": ",", "point": ".", "point d'interrogation": "?", "point d'exclamation": "!"},
    "Spanish": {"coma": ",", "punto": ".", "signo de interrogación": "?", "signo de exclamación": "!"},
}

_PUNCT = ".,;:!?…。，、！？；："
_WORD = re.compile(r"\S+")
_EDGE_PUNCT = re.compile(rf"^[\"'“”‘’(\[]*|[{re.escape(_PUNCT)}\"'“”‘’)\]]*$")


@dataclass(frozen=True, slots=True)
class Release:
    """What one commit (or the end of the utterance) lets out: ``delete`` first deletes what was typed of the
    utterance so far (the previous utterance when nothing of this one was typed), then ``text`` is typed.
    ``scratch``: "scratch that" was said (what it discarded may never have been typed: then ``delete`` is
    false)."""

    text: str
    scratch: bool = False
    delete: bool = False


def compile_replacements(replacements: Mapping[str, str]) -> list[tuple[re.Pattern[str], str, bool]]:
    """``typing.replacements`` as (pattern, replacement, literal) rules; a bad regex is a ``ConfigError``."""
    rules = []
    for key, value in replacements.items():
        if len(key) >= 2 and key.startswith("/") and key.endswith("/"):
            try:
                rules.append((re.compile(key[1:-1], re.IGNORECASE), value, False))
            except re.error as e:
                raise ConfigError(f"typing.replacements: {key!r} is not a valid regular expression: {e}") from None
        elif key.strip():
            pattern = r"(?<!\w)" + re.escape(key.strip()) + r"(?!\w)"
            rules.append((re.compile(pattern, re.IGNORECASE), value, True))
    return rules


def _with_case(found: str, replacement: str) -> str:
    """``replacement`` in the case of ``found``: ALL CAPS, Capitalised or as written."""
    letters = [c for c in found if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return replacement.upper()
    if letters and letters[0].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def _key(word: str) -> str:
    """A word as a command phrase is written: lower case, without the punctuation around it."""
    return _EDGE_PUNCT.sub("", word).casefold()


class TextRules:
    """The rules of the ``typing`` section for one daemon; one instance follows every utterance in order."""

    def __init__(
        self,
        *,
        voice_commands: bool = True,
        punctuation_words: str = "auto",
        replacements: Mapping[str, str] | None = None,
        language: str | None = None,
    ) -> None:
        languages = [language] if language in COMMANDS else list(COMMANDS) if language is None else []
        self.commands: dict[tuple[str, ...], str] = {}
        if voice_commands:
            for lang in languages:
                self.commands.update({tuple(p.split()): a for p, a in COMMANDS[lang].items()})
        self.punctuation: dict[tuple[str, ...], str] = {}
        self.punctuation_mode = punctuation_words
        if punctuation_words != "off":
            for lang in languages:
                self.punctuation.update({tuple(p.split()): m for p, m in PUNCTUATION_WORDS[lang].items()})
        self._replacements = compile_replacements(replacements or {})
        phrases = list(self.commands) + list(self.punctuation)
        self._longest = max((len(p) for p in phrases), default=0)
        self._prefixes = {p[:n] for p in phrases for n in range(1, len(p))}
        self._utterance: str | None = None
        self._held = ""  # raw text held back: trailing white space and words that may begin a command
        self._typed_any = False  # something of this utterance was released

    @property
    def active(self) -> bool:
        return bool(self.commands or self.punctuation or self._replacements)

    def feed(self, utterance_id: str, raw: str) -> Release:
        """The next commit of ``utterance_id`` (a new id starts a new utterance, dropping anything held)."""
        if utterance_id != self._utterance:
            self._utterance, self._held, self._typed_any = utterance_id, "", False
        text = self._held + sanitize(raw)
        cut = self._hold_point(text)
        self._held = text[cut:]
        return self._release(text[:cut])

    def end(self, utterance_id: str) -> Release:
        """The utterance is over: what was held back, as it is."""
        if utterance_id != self._utterance:
            return Release("")
        text, self._held = self._held.rstrip(), ""
        return self._release(text)

    # -- internals ------------------------------------------------------------------------------------

    def _hold_point(self, text: str) -> int:
        """Where the held-back tail starts: trailing white space, and trailing words that begin a phrase."""
        end = len(text.rstrip())
        words = list(_WORD.finditer(text[:end]))
        for n in range(min(len(words), self._longest - 1), 0, -1):
            tail = tuple(_key(w.group()) for w in words[-n:])
            if tail in self._prefixes and not any(c in _PUNCT for c in words[-1].group()[-1:]):
                start = words[-n].start()
                while start > 0 and text[start - 1].isspace():
                    start -= 1  # the space before a held word goes with it
                return start
        return end

    def _release(self, text: str) -> Release:
        if not text:
            return Release("")
        scratch = delete = False
        out = ""
        punctuated = any(c in _PUNCT for c in text)
        use_punct = self.punctuation_mode == "on" or (self.punctuation_mode == "auto" and not punctuated)
        words = list(_WORD.finditer(text))
        i = 0
        last = 0  # end of the text consumed so far
        while i < len(words):
            action, n = self._match(words, i, use_punct)
            if action is None:
                i += 1
                continue
            before = self._replace(text[last : words[i].start()])
            last = words[i + n - 1].end()
            i += n
            if action == SCRATCH:
                # what this commit said before the command is dropped; what was typed of the utterance is
                # deleted, or the previous utterance when the command opens this one
                if self._typed_any or not (out + before).strip():
                    delete = True
                out, self._typed_any, scratch = "", False, True
                while last < len(text) and text[last] == " ":
                    last += 1
                continue
            # a line break, or a punctuation mark attached to the word before
            out = (out + before).rstrip(" ") + action
            if action in (NEWLINE, PARAGRAPH):
                while last < len(text) and text[last] == " ":
                    last += 1  # the next word starts the new line
        out += self._replace(text[last:])
        if not self._typed_any:
            out = out.lstrip(" ")
        if out:
            self._typed_any = True
        return Release(out, scratch, delete)

    def _match(self, words: list[re.Match[str]], i: int, use_punct: bool) -> tuple[str | None, int]:
        for n in range(min(self._longest, len(words) - i), 0, -1):
            phrase = tuple(_key(w.group()) for w in words[i : i + n])
            if phrase in self.commands:
                return self.commands[phrase], n
            if use_punct and phrase in self.punctuation:
                return self.punctuation[phrase], n
        return None, 0

    def _replace(self, text: str) -> str:
        for pattern, value, literal in self._replacements:
            if literal:
                text = pattern.sub(lambda m, v=value: _with_case(m.group(), v), text)  # type: ignore[misc]
            else:
                text = pattern.sub(value, text)
        return text
