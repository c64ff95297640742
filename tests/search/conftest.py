"""Synthetic searches: an experiment whose `eval.command` is tests/search/synthetic_eval.py (no data, no checkpoints)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "search" / "synthetic_eval.py"
PRIOR = {"web": 0.5, "math": 0.3, "code": 0.2}
OPTIMUM = {"web": 0.2, "math": 0.5, "code": 0.3}


def synthetic_experiment(tmp_path: Path, search: dict | None = None, noise: float = 0.01, seed: int = 0,
                         extra_args: str = "", executor: str = "local") -> Path:
    """Write an experiment file whose evaluations run the synthetic harness; returns its path."""
    optimum = ",".join(f"{k}={v}" for k, v in OPTIMUM.items())
    command = (f"{sys.executable} {SCRIPT} {{mixture}} {{output}} --optimum {optimum} --noise {noise} --seed {seed}"
               f" --counter {tmp_path / 'evaluations.txt'} {extra_args}")
    data = {
        "name": "synthetic",
        "work_dir": str(tmp_path / "work"),
        "datasets": [{"name": "general", "role": "general", "builtin": "prose"}]
                    + [{"name": n, "builtin": "prose"} for n in PRIOR],
        "eval": {"command": command, "tasks": {"general": ["quality"], "target": ["closeness"]}},
        "search": {"prior": PRIOR, "pool_size": 5000, "round_sizes": [16, 8, 4], "top_k": 32, "ensemble_size": 4,
                   "mixtures_per_task": 8, "poll_seconds": 1.0, "seed": seed, **(search or {})},
        "cluster": {"executor": executor},
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def evaluations(tmp_path: Path) -> list[str]:
    counter = tmp_path / "evaluations.txt"
    return counter.read_text().splitlines() if counter.exists() else []


@pytest.fixture
def run_tool():
    """Run tools/search/run.py in a subprocess; returns the CompletedProcess."""
    import subprocess

    def run(config: Path, *args: str, timeout: float = 300, **kwargs):
        return subprocess.run([sys.executable, str(REPO / "tools/search/run.py"), "--config", str(config), *args],
                              cwd=REPO, capture_output=True, text=True, timeout=timeout, **kwargs)

    return run
