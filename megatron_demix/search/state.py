"""The search's state directory, `<work_dir>/search/`: every file named in one place.

    search/settings.json                 what the pool and the rounds depend on (checked on --resume)
    search/pool.npy                      the candidate pool [m, k]
    search/round-<r>/proposals.json      the round's mixtures: id, pool index, shares, prediction
    search/round-<r>/attempt-<a>/        one array job: manifest.jsonl, submission.json, results/<task>.json
    search/round-<r>/results/<id>.json   one per evaluated mixture (domains, metrics)
    search/round-<r>/model.pkl, cv.json, scores.npy   the predictor that proposed the round (r > 0)
    search/final/...                     the final mixture's own evaluation, same layout
    search/final_mixture.json            the answer; search/report/ the summary and plots
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from megatron_demix.config.base import ConfigError, to_dict
from megatron_demix.runtime.files import read_json

RESUMABLE_KEYS = {"max_parallel", "max_retries", "min_results", "mixtures_per_task", "poll_seconds"}
"""Search settings a resumed search may change: they steer jobs, not which mixtures are proposed."""


@dataclass(frozen=True)
class RoundPaths:
    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def proposals(self) -> Path:
        return self.folder / "proposals.json"

    @property
    def results(self) -> Path:
        return self.folder / "results"

    def result(self, mixture_id: str) -> Path:
        return self.results / f"{mixture_id}.json"

    def attempt(self, index: int) -> Path:
        return self.folder / f"attempt-{index}"

    def attempts(self) -> list[Path]:
        found = [p for p in self.folder.glob("attempt-*") if (p / "manifest.jsonl").exists()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    @property
    def model(self) -> Path:
        return self.folder / "model.pkl"

    @property
    def cv(self) -> Path:
        return self.folder / "cv.json"

    @property
    def scores(self) -> Path:
        """Composite predicted score of every pool mixture under this round's predictor."""
        return self.folder / "scores.npy"

    def read_proposals(self) -> list[dict] | None:
        return read_json(self.proposals, "the round's proposed mixtures", "delete it and resume (--resume) to propose them again") if self.proposals.exists() else None

    def read_results(self) -> dict[str, dict]:
        if not self.results.is_dir():
            return {}
        return {p.stem: read_json(p, "an evaluated mixture's scores", "delete it and resume (--resume) to evaluate that mixture again")
                for p in sorted(self.results.glob("*.json"))}


@dataclass(frozen=True)
class SearchPaths:
    root: Path

    @classmethod
    def of(cls, experiment) -> "SearchPaths":
        return cls(experiment.paths.search)

    @property
    def settings(self) -> Path:
        return self.root / "settings.json"

    @property
    def pool(self) -> Path:
        return self.root / "pool.npy"

    def round(self, index: int) -> RoundPaths:
        return RoundPaths(self.root / f"round-{index}")

    @property
    def final(self) -> RoundPaths:
        return RoundPaths(self.root / "final")

    @property
    def final_mixture(self) -> Path:
        return self.root / "final_mixture.json"

    @property
    def report(self) -> Path:
        return self.root / "report"


def settings_of(experiment, prior: dict[str, float]) -> dict:
    """What the search's proposals depend on: a resumed search must have the same."""
    search = {k: v for k, v in to_dict(experiment.search).items() if k not in RESUMABLE_KEYS}
    return {"search": search, "prior": prior, "eval": {"command": experiment.eval.command, "tasks": experiment.eval.tasks,
                                                       "lower_is_better": experiment.eval.lower_is_better}}


def check_settings(paths: SearchPaths, settings: dict, resume: bool) -> None:
    """A new search needs an empty state directory; a resumed one the settings it was started with."""
    if not paths.settings.exists():
        return
    if not resume:
        raise ConfigError(f"{paths.root} already holds a search: pass --resume to continue it, or delete the "
                          "directory (or choose another work_dir) to start over")
    before = read_json(paths.settings, "the settings the search was started with",
                       "restore it from a copy, or start the search over (delete the search directory or use another work_dir)")
    changed = sorted(_differences(before, json.loads(json.dumps(settings))))
    if changed:
        raise ConfigError(f"{paths.settings}: the search was started with other settings ({', '.join(changed)} differ); "
                          f"restore them to resume, or start a new search in another work_dir (resumable changes: "
                          f"{', '.join(f'search.{k}' for k in sorted(RESUMABLE_KEYS))})")


def _differences(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in set(a) | set(b) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]
