"""The `eval:` section: how proxies are scored with the lm-eval harness."""
from __future__ import annotations

from dataclasses import dataclass, field

from megatron_demix.config.base import fail


@dataclass(frozen=True, kw_only=True, slots=True)
class EvalConfig:
    """Benchmarks per capability domain (the paper: general, math, code)."""

    tasks: dict[str, list[str]] = field(default_factory=dict)
    """Domain name -> lm-eval task names; empty means the built-in demo tasks."""
    batch_size: int = 8
    limit: int | None = None
    """At most this many examples per task (lm-eval's --limit)."""

    def __post_init__(self):
        if self.batch_size < 1:
            fail("batch_size", f"{self.batch_size} must be >= 1")
