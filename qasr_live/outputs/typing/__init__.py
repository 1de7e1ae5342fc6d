"""Typing committed text into the focused window: pynput/XTest, wtype or clipboard paste, with fallbacks.

The rooms: :mod:`~qasr_live.outputs.typing.chain` (the :class:`Typist`: fallbacks, the wait for held modifiers,
the focused window, "scratch that"), :mod:`~qasr_live.outputs.typing.backends` (the backend order and the
results), :mod:`~qasr_live.outputs.typing.keyboards` (each backend's connection and delivery),
:mod:`~qasr_live.outputs.typing.sanitize` (what may be typed at all),
:mod:`~qasr_live.outputs.typing.xtest` (the X11 keyboard) and :mod:`~qasr_live.outputs.typing.tools` (wtype and
the clipboard tools). Which session text goes to is :mod:`qasr_live.desktop`'s question.
"""

from qasr_live.outputs.typing.chain import Attempt, HotkeyState, OutputResult, Typist, backend_chain
from qasr_live.outputs.typing.sanitize import sanitize
from qasr_live.outputs.typing.xtest import x_held_modifiers

__all__ = ["Attempt", "HotkeyState", "OutputResult", "Typist", "backend_chain", "sanitize", "x_held_modifiers"]
