"""Training logs: JSON lines (one record per log/eval step), a progress line, TensorBoard if installed.

    <log_dir>/train.jsonl   {"kind": "train", "iteration": 10, "loss": 5.1, "lr": ..., "grad_norm": ...,
                             "tokens_per_s": ..., "elapsed_s": ..., "eta_s": ...}
                            {"kind": "valid", "iteration": 10, "domain": "code", "loss": 5.3}
    <log_dir>/tensorboard/  the same scalars (only when the `tensorboard` package is importable)

Only global rank 0 writes; the trainer reduces values to rank 0 before calling `log`.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class MetricsLog:
    def __init__(self, log_dir: Path | None, *, total_iters: int, tokens_per_iter: int, name: str, enabled: bool):
        self.enabled = enabled
        self.total_iters = total_iters
        self.tokens_per_iter = tokens_per_iter
        self.name = name
        self._file = None
        self._tensorboard = None
        self._last = None  # (time, iteration) of the previous train record: rate since then
        self._start = time.monotonic()
        if enabled and log_dir is not None:
            log_dir = Path(log_dir)
            log_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(log_dir / "train.jsonl", "a", buffering=1)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tensorboard = SummaryWriter(str(log_dir / "tensorboard"))
            except ImportError:
                pass  # optional: `pip install -e .[tensorboard]`

    def start(self, iteration: int) -> None:
        self._last = (time.monotonic(), iteration)

    def _write(self, record: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            prefix = record["kind"] if record["kind"] == "train" else f"valid/{record['domain']}"
            for key, value in record.items():
                if isinstance(value, float) and key not in ("elapsed_s", "eta_s"):
                    self._tensorboard.add_scalar(f"{prefix}/{key}", value, record["iteration"])

    def train(self, iteration: int, *, loss: float, lr: float, grad_norm: float | None) -> dict:
        """Record iteration `iteration` (1-based, just finished); rate is measured since the last record."""
        now = time.monotonic()
        then, before = self._last or (self._start, 0)
        self._last = (now, iteration)
        rate = (iteration - before) * self.tokens_per_iter / max(now - then, 1e-9)
        eta = (self.total_iters - iteration) * self.tokens_per_iter / max(rate, 1e-9)
        record = {
            "kind": "train", "model": self.name, "iteration": iteration, "loss": loss, "lr": lr,
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "tokens_per_s": rate, "elapsed_s": now - self._start, "eta_s": eta,
        }
        if self.enabled:
            self._write(record)
            print(
                f"[{self.name}] iter {iteration}/{self.total_iters} loss {loss:.4f} lr {lr:.2e}"
                f" grad_norm {record['grad_norm'] or 0:.3f} {rate:,.0f} tok/s"
                f" elapsed {_format_seconds(now - self._start)} eta {_format_seconds(eta)}",
                flush=True,
            )
        return record

    def valid(self, iteration: int, losses: dict[str, float]) -> None:
        if not self.enabled:
            return
        for domain, loss in losses.items():
            self._write({"kind": "valid", "model": self.name, "iteration": iteration, "domain": domain, "loss": loss})
        shown = " ".join(f"{d} {v:.4f}" for d, v in losses.items())
        print(f"[{self.name}] iter {iteration} validation loss: {shown}", flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            print(f"[{self.name}] {text}", file=sys.stdout, flush=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
