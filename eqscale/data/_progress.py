"""A one-line progress bar with rate and ETA (no dependency).

On a terminal the line is redrawn in place; in a log file a line is written every few seconds.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts units of work done out of ``total`` and reports the rate and the time left.

    Args:
        total: units expected in all.
        initial: units already done before this run (a resumed run); excluded from the rate.
        unit: name of a unit, for the line.
        stream: where to write; ``None`` disables output.
        interval: seconds between lines when ``stream`` is not a terminal.

    Example:
        >>> import io
        >>> progress = Progress(10, stream=io.StringIO())
        >>> progress.update(10)
        >>> progress.done
        10
    """

    def __init__(
        self,
        total: int,
        initial: int = 0,
        unit: str = "structures",
        stream: TextIO | None = sys.stderr,
        interval: float = 5.0,
    ) -> None:
        self.total, self.done, self.unit, self.stream = total, initial, unit, stream
        self._initial = initial
        self._start = time.perf_counter()
        self._last = -float("inf")
        self._tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self._interval = 0.2 if self._tty else interval

    @property
    def rate(self) -> float:
        """Units per second in this run."""
        elapsed = time.perf_counter() - self._start
        return (self.done - self._initial) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """The current progress line."""
        rate = self.rate
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = _clock(left) if left == left else "?"
        percent = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.done}/{self.total} {self.unit} {percent:5.1f}%  {rate:.1f}/s  "
            f"elapsed {_clock(time.perf_counter() - self._start)}  ETA {eta}"
        )

    def update(self, count: int) -> None:
        """Adds ``count`` units and redraws when due."""
        self.done += count
        now = time.perf_counter()
        if self.stream is not None and now - self._last >= self._interval:
            self._last = now
            self.stream.write(("\r" + self.line() + "\x1b[K") if self._tty else self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Writes the final line."""
        if self.stream is not None:
            self.stream.write(("\r" + self.line() + "\x1b[K\n") if self._tty else self.line() + "\n")
            self.stream.flush()
