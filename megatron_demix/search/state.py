"""The search's state directory, `<work_dir>/search/`: every file named in one place.

    search/settings.json                 what the pool and the rounds depend on (checked on --resume)
    search/plan.json                     every round's size and each phase's candidates (SearchPlan)
    search/pool.npy                      the candidate pool [m, k]; pool-<p>.npy: phase p's, after candidates were added
    search/round-<r>/proposals.json      the round's mixtures: id, pool index, shares, prediction
    search/round-<r>/attempt-<a>/        one array job: manifest.jsonl, submission.json, results/<task>.json
    search/round-<r>/results/<id>.json   one per evaluated mixture (domains, metrics)
    search/round-<r>/model.pkl, cv.json, scores.npy   the predictor that proposed the round (r > 0)
    search/final/...                     the final mixture's own evaluation, same layout
    search/answer-<i>/...                an earlier final mixture's evaluation, kept as data when the search went on
    search/final_mixture.json            the answer; search/report/ the summary and plots
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megatron_demix.config.base import ConfigError, to_dict
from megatron_demix.runtime.files import atomic_write_json, read_json

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

    def pool_of(self, phase: int) -> Path:
        """Each phase samples its own simplex: phase 0's pool keeps its first name."""
        return self.pool if phase == 0 else self.root / f"pool-{phase}.npy"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    def answers(self) -> list[RoundPaths]:
        """The evaluations of earlier final mixtures, oldest first."""
        found = [p for p in self.root.glob("answer-*") if p.is_dir()]
        return [RoundPaths(p) for p in sorted(found, key=lambda p: int(p.name.split("-")[1]))]

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


@dataclass
class SearchPlan:
    """What the search has been asked for so far: every round's size (the configured ones, then those added by
    `--rounds-more` or by a candidate's addition) and its phases, one per candidate list. A phase starts at the
    round after which candidates were added: the evaluations before it are data with the added ones at share 0
    (a merged proxy depends only on the components and the weights, so they are exact)."""

    rounds: list[int]
    phases: list[dict] = field(default_factory=list)
    """[{"candidates": [...], "first_round": r, "added": [...]}]; the first phase adds nothing."""

    @classmethod
    def read(cls, paths: SearchPaths, sizes: list[int], names: list[str]) -> "SearchPlan":
        """plan.json, or (a search started before plans were recorded, or none yet) the configured rounds over the
        candidates its settings.json names, else `names`."""
        if paths.plan.exists():
            return cls(**read_json(paths.plan, "the search's rounds and phases",
                                   "restore it from a copy, or start the search over (delete the search directory)"))
        started = read_json(paths.settings, "the settings the search was started with", "restore it from a copy") \
            if paths.settings.exists() else {}
        return cls(list(sizes), [{"candidates": list(started.get("prior") or names), "first_round": 0, "added": []}])

    def save(self, paths: SearchPaths) -> None:
        atomic_write_json(paths.plan, asdict(self))

    @property
    def candidates(self) -> list[str]:
        return self.phases[-1]["candidates"]

    def phase_of(self, round_index: int) -> int:
        return max(p for p, phase in enumerate(self.phases) if phase["first_round"] <= round_index)

    def add_candidates(self, names: list[str], started: int, sizes: list[int]) -> list[str]:
        """Candidates in `names` not in the last phase start a new one at the first round not yet proposed
        (`started`), whose rounds are then `sizes` (rounds planned but not begun are dropped); returns them. Before
        any round began, there is nothing to keep: the first phase takes the new list."""
        added = [n for n in names if n not in self.candidates]
        if added and started:
            self.rounds = self.rounds[:started] + list(sizes)
            self.phases.append({"candidates": list(names), "first_round": started, "added": added})
        elif added:  # nothing proposed yet: the search starts over the new list, as configured
            self.phases = [{"candidates": list(names), "first_round": 0, "added": []}]
        return added


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
    settings = json.loads(json.dumps(settings))
    changed = sorted(_differences(before, settings))
    earlier, now = list(before.get("prior", {})), list(settings["prior"])
    removed = [n for n in earlier if n not in now]
    if removed:
        raise ConfigError(f"{paths.settings}: the search's candidate(s) {', '.join(removed)} are no longer in the"
                          " experiment's datasets; earlier evaluations gave them shares, so the search cannot go on"
                          " without them: restore them (candidates can be added to a search, not removed), or start a"
                          " new search in another work_dir")
    added = [n for n in now if n not in earlier]
    if added:  # the prior is recomputed over every candidate; the added ones may get a prior and bounds of their own
        changed = [c for c in changed if c.split(".")[0] != "prior"
                   and not any(c in (f"search.prior.{n}", f"search.bounds.{n}") for n in added)]
    if changed:
        raise ConfigError(f"{paths.settings}: the search was started with other settings ({', '.join(changed)} differ); "
                          f"restore them to resume, or start a new search in another work_dir (resumable changes: "
                          f"{', '.join(f'search.{k}' for k in sorted(RESUMABLE_KEYS))})")


def _differences(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in set(a) | set(b) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]
