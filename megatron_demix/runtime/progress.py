"""One progress line for every long wait: a search round, a job, a merge's share.

    progress = Progress("[merge] rank 0", total=share_bytes, unit="MB", scale=MB, every=2.0, log=print)
    progress.update(done_bytes)              # a line at most every 2 s, and one when done reaches total

A line reads `name: done/total unit, detail, rate unit/s (or /min), ETA, elapsed`, each part only where it is
known. `detail` may be a function, called only when a line is due (e.g. reading a log's last line). Rates of
counted things slower than one a second are per minute.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Progress:
    """A throttled progress line (module docstring). `on_change`: also a line whenever (done, detail) changes;
    `done_before`: what was done before this process started, left out of the rate."""

    def __init__(self, name: str, total: float | None = None, unit: str = "", scale: float = 1.0, every: float = 30.0,
                 log: Callable[[str], None] = logger.info, on_change: bool = False, done_before: float = 0):
        self.name, self.total, self.unit, self.scale, self.every = name, total, unit, scale, every
        self.log, self.on_change, self.done_before = log, on_change, done_before
        self.start = time.monotonic()
        self.due = self.start if on_change else self.start + every
        self.last, self.done = None, 0

    def add(self, amount: float) -> None:
        """`update` with `amount` more done."""
        self.done += amount
        self.update(self.done)

    def update(self, done: float | None = None, detail: str | Callable[[], str] = "") -> None:
        now = time.monotonic()
        finished = self.total is not None and done is not None and done >= self.total
        changed = self.on_change and (done, detail) != self.last
        if not (now >= self.due or finished or changed):
            return
        self.due, self.last = now + self.every, (done, detail)
        self.log(f"{self.name}: {self.line(done, detail() if callable(detail) else detail, now - self.start)}")

    def line(self, done: float | None, detail: str, elapsed: float) -> str:
        parts = []
        if done is not None:
            amount = (lambda v: f"{v / self.scale:.1f}") if self.scale != 1 else (lambda v: f"{v:g}")
            parts.append(f"{amount(done)}/{amount(self.total)} {self.unit}".rstrip() if self.total is not None
                         else f"{amount(done)} {self.unit}".rstrip())
        if detail:
            parts.append(detail)
        new = (done or 0) - self.done_before
        rate = new / max(elapsed, 1e-9)
        if new > 0:
            per_minute = self.scale == 1 and rate < 1  # counted things (mixtures) slower than one a second
            parts.append(f"{rate / self.scale * (60 if per_minute else 1):.2f} {self.unit or 'done'}/{'min' if per_minute else 's'}")
            if self.total is not None:
                eta = max(self.total - done, 0) / rate
                parts.append(f"ETA {eta / 60:.1f} min" if eta >= 120 else f"ETA {eta:.0f} s")
        parts.append(time.strftime("%H:%M:%S", time.gmtime(elapsed)))
        return ", ".join(parts)
