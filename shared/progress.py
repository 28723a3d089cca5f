"""A minimal progress line on stderr for long CLI steps (no dependency)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int, stream=None) -> None:  # type: ignore[no-untyped-def]
        self.label = label
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = 0.0

    def update(self, done: int, note: str = "") -> None:
        now = time.perf_counter()
        # On a terminal redraw in place; in logs print at most every 5 s.
        if not self._tty and now - self._last < 5.0 and done < self.total:
            return
        self._last = now
        pct = 100.0 * done / self.total
        width = 24
        filled = int(width * done / self.total)
        line = (f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                f"{pct:5.1f}% {now - self.start:6.1f}s {note}")
        self.stream.write(("\r" + line) if self._tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
