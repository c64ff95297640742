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
        # The law's least-squares fits are most of a search's time: with one predictor kind the cross-validated
        # Spearman is only reported (cv_folds 2: 2 refits a target and round, not 5), 2 bootstrap refits give the
        # answer's uncertainty (24 fits in a 16+8+4 search, 46 with 5 folds and 4 refits).
        "search": {"prior": PRIOR, "pool_size": 5000, "round_sizes": [16, 8, 4], "top_k": 32, "ensemble_size": 2,
                   "cv_folds": 2, "mixtures_per_task": 8, "poll_seconds": 1.0, "seed": seed, **(search or {})},
        "cluster": {"executor": executor},
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def checkpoint_experiment(tmp_path: Path, executor: str = "local") -> Path:
    """The synthetic experiment with saved component checkpoints and an `eval.command` naming {checkpoint}: its
    harness reports the merged proxy's tracker iteration as `quality`, proof that it saw a complete merge of
    2 MPI ranks."""
    from tests.conftest import run_torchrun

    config = synthetic_experiment(tmp_path, executor=executor)
    data = yaml.safe_load(config.read_text())
    args = ["save", "--tp", 1, "--pp", 1]
    for seed, name in enumerate(PRIOR, start=1):
        args += ["--seed", seed, "--out", Path(data["work_dir"]) / "checkpoints" / name]
    saved = run_torchrun(1, Path(__file__).resolve().parents[1] / "merge" / "model_tool.py", args)
    assert saved.returncode == 0, saved.stderr[-3000:]
    data["eval"]["command"] = ("python -c \"import json,sys; it=open(sys.argv[1]+'/latest_checkpointed_iteration.txt').read();"
                               " json.dump({'quality': float(it), 'closeness': 1.0}, open(sys.argv[2], 'w'))\" {checkpoint} {output}")
    data["merge"] = {"ranks": 2}
    config.write_text(yaml.safe_dump(data))
    return config


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
