"""The report's vocabulary and its two renderings: :class:`Check` lines (``ok`` / ``warn`` / ``FAIL``, what was
found, the fix), the exit status they imply, and the text screen / ``--json`` document made of them."""

from __future__ import annotations

import enum
import json
import textwrap
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from qasr_live import __version__
from qasr_live.errors import EXIT_CHECK_FAILED

__all__ = ["Check", "Lines", "Status", "exit_status", "first_line", "render_json", "render_text"]


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report. ``data``: the facts behind ``detail``, for ``--json``."""

    section: str
    name: str
    status: Status
    detail: str
    fix: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


class Lines(list[Check]):
    """The lines of one section, added with ok/warn/fail."""

    def __init__(self, section: str) -> None:
        super().__init__()
        self.section = section

    def ok(self, name: str, detail: str, **data: Any) -> None:
        self.append(Check(self.section, name, Status.OK, detail, "", data))

    def warn(self, name: str, detail: str, fix: str, **data: Any) -> None:
        self.append(Check(self.section, name, Status.WARN, detail, fix, data))

    def fail(self, name: str, detail: str, fix: str, **data: Any) -> None:
        self.append(Check(self.section, name, Status.FAIL, detail, fix, data))


def exit_status(checks: list[Check]) -> int:
    """0 when dictation can work (warnings allowed), else EXIT_CHECK_FAILED."""
    return EXIT_CHECK_FAILED if any(c.status == Status.FAIL for c in checks) else 0


def _summary(checks: list[Check]) -> dict[str, Any]:
    counts = {str(s): sum(c.status == s for c in checks) for s in Status}
    return {"dictation_can_work": exit_status(checks) == 0, "exit_status": exit_status(checks), "counts": counts}


def render_json(checks: list[Check]) -> str:
    rows = [{**asdict(c), "status": str(c.status), "data": dict(c.data)} for c in checks]
    return json.dumps({"version": __version__, **_summary(checks), "checks": rows}, indent=2, default=str)


def render_text(checks: list[Check], width: int = 100) -> str:
    name_width = max((len(c.name) for c in checks), default=8)
    indent = " " * (2 + 4 + 2 + name_width + 2)
    lines: list[str] = []
    section = None
    for c in checks:
        if c.section != section:
            section = c.section
            lines.append(section)
        head = f"  {c.status:<4}  {c.name:<{name_width}}  "
        lines.extend(_wrap(c.detail, width, head, indent) or [head])
        if c.fix:
            lines.extend(_wrap(c.fix, width, indent + "fix: ", indent))
    s = _summary(checks)["counts"]
    verdict = "dictation can work" if exit_status(checks) == 0 else "fix the FAIL lines: dictation cannot work yet"
    lines.append(f"{s['FAIL']} FAIL, {s['warn']} warn, {s['ok']} ok: {verdict}")
    return "\n".join(lines)


def _wrap(text: str, width: int, first: str, rest: str) -> list[str]:
    # not at hyphens: names such as llama-cpp-python and `qasr-live ctl` stay whole
    return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False)


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
