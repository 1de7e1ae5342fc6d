"""Text made safe to type: dictation must never press Enter or Tab, nor smuggle in invisible controls.

:func:`sanitize` turns line breaks and tabs into spaces (line breaks the user asked for are kept with
``newlines=True``: typed as Return), because pressing Enter or Tab sends chat messages, runs
shell commands and moves the focus. Every other control character (C0, DEL, C1 incl. ESC), the bidirectional
overrides/embeddings/isolates and marks (the "Trojan Source" characters), lone surrogates, U+FEFF, interlinear
annotation controls, Unicode tag characters and U+FFFD (debris of undecodable bytes, never something said) are
removed. Joiners (ZWJ, ZWNJ) and variation selectors stay: emoji and several scripts need them. Everything
printable, in any script, is kept as is.
"""

from __future__ import annotations

import unicodedata

__all__ = ["sanitize"]

_SPACE_CONTROLS = frozenset("\t\n\v\f\r\x1c\x1d\x1e\x1f\x85\u2028\u2029")
_REMOVED_FORMAT = frozenset(
    "\u061c\u200e\u200f"  # Arabic letter mark, LRM, RLM
    "\u202a\u202b\u202c\u202d\u202e"  # embeddings and overrides
    "\u2066\u2067\u2068\u2069"  # isolates
    "\u206a\u206b\u206c\u206d\u206e\u206f"  # deprecated format characters
    "\ufeff\ufff9\ufffa\ufffb"  # BOM / zero-width no-break space, interlinear annotation
    "\ufffd"  # the replacement character: debris of undecodable bytes, never something said
)


def sanitize(text: str, *, newlines: bool = False) -> str:
    """``text`` safe to type: line breaks/tabs → one space each, other control and bidi characters removed.

    ``newlines=True`` keeps line breaks as ``"\\n"`` (one per ``\\r\\n``): for text the user asked to break
    (``typing.separator``, the "new line" voice command), never for what the model wrote. See the module
    docstring for the exact rules; everything printable (any script, emoji) is kept as is.
    """
    if newlines:
        text = text.replace("\r\n", "\n")
    out = []
    for ch in text:
        if newlines and ch == "\n":
            out.append(ch)
            continue
        if ch in _SPACE_CONTROLS:
            out.append(" ")
            continue
        if ch in _REMOVED_FORMAT or "\U000e0000" <= ch <= "\U000e007f":
            continue
        if unicodedata.category(ch) in ("Cc", "Cs"):
            continue
        out.append(ch)
    return "".join(out)
