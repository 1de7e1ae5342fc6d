"""Which typing backends to try, in which order, for a session; and what each try returns.

:func:`backend_chain` is the order (the :class:`~qasr_live.outputs.typing.chain.Typist` tries them until one
delivers); :class:`Attempt` is one backend's try and :class:`OutputResult` one ``type_text`` call, which the daemon
publishes as one ``output`` event per attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qasr_live.desktop import Session, SessionKind
from qasr_live.events import OutputBackend

__all__ = ["BACKENDS", "Attempt", "OutputResult", "backend_chain", "portal_desktop"]

#: The backends that can deliver text (``OutputBackend.NONE`` is what a result says when nothing was typed).
BACKENDS: tuple[OutputBackend, ...] = (
    OutputBackend.PYNPUT,
    OutputBackend.WTYPE,
    OutputBackend.PORTAL,
    OutputBackend.CLIPBOARD,
)


def portal_desktop(session: Session) -> bool:
    """GNOME and KDE: no virtual-keyboard protocol (wtype cannot work), the RemoteDesktop portal instead."""
    names = {part.strip().lower() for part in session.desktop.split(":")}
    return bool(names & {"gnome", "kde"})  # (Ubuntu: "ubuntu:GNOME")


def backend_chain(configured: str, session: Session) -> list[OutputBackend]:
    """The backends to try, in order, for ``typing.backend`` = ``configured`` in ``session``."""
    if configured != "auto":
        if configured not in BACKENDS:
            raise ValueError(f"typing.backend: unknown backend {configured!r}")
        first = OutputBackend(configured)
        return [first] if first == OutputBackend.CLIPBOARD else [first, OutputBackend.CLIPBOARD]
    if session.kind in (SessionKind.X11, SessionKind.MACOS):
        return [OutputBackend.PYNPUT, OutputBackend.CLIPBOARD]
    if session.kind == SessionKind.WAYLAND:
        first = OutputBackend.PORTAL if portal_desktop(session) else OutputBackend.WTYPE
        return [first, OutputBackend.CLIPBOARD]
    return [OutputBackend.CLIPBOARD]


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Attempt:
    """One backend's try at delivering text."""

    backend: OutputBackend
    ok: bool
    error: str | None  # why it failed (None when ok)
    text: str  # what it was asked to deliver
    delivered: str  # what it is known to have delivered ("" when nothing; the prefix typed before a failure)
    seconds: float


@dataclass(frozen=True, slots=True)
class OutputResult:
    """What became of one :meth:`Typist.type_text` call.

    ``backend``: the backend that delivered the text (``NONE`` when there was nothing to type or typing is
    disabled; the last one tried when all failed). ``error``: ``None`` when ``ok``, else every attempt's error.
    ``attempts``: every try in order; publish one ``output`` event per attempt.
    """

    backend: OutputBackend
    ok: bool
    error: str | None
    text: str  # the sanitised text that was to be delivered
    attempts: tuple[Attempt, ...] = ()
    session: str = ""  # Session.describe()
    waited_s: float = 0.0  # time spent waiting for modifiers to be released
    notes: tuple[str, ...] = field(default_factory=tuple)
