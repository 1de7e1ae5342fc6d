"""qasr-live: real-time, fully local dictation on Qwen3-ASR.

The Python API (docs/api.md): ``from qasr_live import Engine``; results are ``Transcript``, ``Segment`` and
``Word``. They are imported on first use (module ``__getattr__``): every module of the package imports this one,
and ``import qasr_live`` must stay as cheap as reading ``__version__`` (``qasr-live ctl`` starts in milliseconds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Engine", "Segment", "Transcript", "Word", "__version__"]

if TYPE_CHECKING:
    from qasr_live.api import Engine
    from qasr_live.offline.transcript import Segment, Transcript, Word


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from qasr_live.api import Engine

        return Engine
    if name in ("Segment", "Transcript", "Word"):
        from qasr_live.offline import transcript

        return getattr(transcript, name)
    raise AttributeError(f"module 'qasr_live' has no attribute {name!r}")
