"""The export's steps as the user sees them: a tqdm bar per step on stderr while it runs (a terminal only), then
one log line through the `progress` callback that ends with the step's time and the size of what it wrote."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


class Step:
    """One running step: advance its bar, rename it, and name the files it writes (their size ends its line)."""

    def __init__(self, bar: Any, label: str) -> None:  # a tqdm bar (tqdm has no type information)
        self._bar, self.label = bar, label
        self.outputs: list[Path] = []
        self.size_note: int | None = None  # a size to report instead of the outputs' (a step that only reads)

    def advance(self, n: int) -> None:
        self._bar.update(n)

    def describe(self, text: str) -> None:
        self._bar.set_description_str(text, refresh=True)

    def output(self, *paths: Path) -> None:
        self.outputs.extend(paths)


class Steps:
    """Numbered steps `[n/total] what`; `bars` None shows the bars when stderr is a terminal (tqdm's rule)."""

    def __init__(self, total: int, progress: Callable[[str], None], bars: bool | None = None) -> None:
        self.total, self.n, self.progress = total, 0, progress
        self.bars = bars

    @contextlib.contextmanager
    def __call__(self, what: str, total: int | None = None, unit: str = "B") -> Iterator[Step]:
        from tqdm import tqdm

        self.n += 1
        label = f"[{self.n}/{self.total}] {what}"
        # leave=False: the bar is live feedback; the permanent record is the progress line below
        sized = total is not None and unit == "B"
        bar = tqdm(
            total=total,
            desc=label,
            unit=unit,
            unit_scale=unit == "B",
            # tqdm leaves the unit off the counts; with bytes they read better with it ("1.20GB/2.41GB")
            bar_format="{l_bar}{bar}| {n_fmt}B/{total_fmt}B [{elapsed}<{remaining}, {rate_fmt}]" if sized else None,
            file=sys.stderr,
            leave=False,
            disable=None if self.bars is None else not self.bars,
            dynamic_ncols=True,
        )
        step = Step(bar, label)
        t0 = time.perf_counter()
        try:
            yield step
        finally:
            bar.close()
        size = (
            step.size_note if step.size_note is not None else sum(p.stat().st_size for p in step.outputs if p.exists())
        )
        self.progress(f"{label} ({time.perf_counter() - t0:.1f} s, {human_size(size)})")
