"""Where an experiment's outputs go: every file name under its work dir, in one place (like submitit's JobPaths)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WorkPaths:
    """Names every file an experiment writes under its work dir (one place, like submitit's JobPaths)."""

    root: Path

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer" / "tokenizer.json"

    @property
    def corpora(self) -> Path:
        return self.root / "corpora"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def dataset_prefix(self, name: str) -> Path:
        """Megatron indexed dataset prefix: `<prefix>.bin` and `<prefix>.idx`."""
        return self.data / name / name

    def token_count(self, name: str) -> Path:
        return self.data / name / "token_count.json"

    @property
    def token_prior(self) -> Path:
        return self.data / "token_prior.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, model: str) -> Path:
        """Megatron save root (`iter_*/`, `latest_checkpointed_iteration.txt`) of `base` or a component."""
        return self.checkpoints / model

    @property
    def proxies(self) -> Path:
        return self.root / "proxies"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def eval_tasks(self) -> Path:
        """The built-in lm-eval tasks (YAML + held-out JSONL) that `demix prepare` writes."""
        return self.root / "eval" / "tasks"

    @property
    def search(self) -> Path:
        """The search's state directory (search/state.py names the files inside)."""
        return self.root / "search"

    @property
    def validate(self) -> Path:
        """`demix validate`'s directory: mixtures, trained models, evaluations, tables and plots."""
        return self.root / "validate"

    @property
    def jobs(self) -> Path:
        """Job ids of `demix run --submit`, read by `demix status`."""
        return self.root / "jobs.json"

    @property
    def stages(self) -> Path:
        """The settings each stage's outputs were made from (pipeline.py `claim_work_dir` checks them)."""
        return self.root / "stages.json"
