"""launch/eval_proxy.py reuses a stored <id>.json only when it is for the same mixture and models (issue 28)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

ENV = {**os.environ, "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def test_an_id_the_manifest_gives_another_mixture_is_evaluated_again(eval_experiment, tmp_path):
    shared, experiment = eval_experiment
    out = tmp_path / "evals"
    # The fixture's experiment scored on 8 examples a task: what is reused or redone is the point, not the score.
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(Path(shared).read_text()), "eval": {"limit": 8}}))

    def launch(mixture: dict) -> subprocess.CompletedProcess:
        manifest = tmp_path / "round.jsonl"
        manifest.write_text(json.dumps({"id": "m0", "mixture": mixture}) + "\n")
        done = subprocess.run([sys.executable, "launch/eval_proxy.py", "--config", str(config), "--manifest", str(manifest),
                               "--output-dir", str(out)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    first_mixture, second_mixture = {"code": 0.3, "math": 0.7}, {"code": 0.9, "math": 0.1}
    launch(first_mixture)
    first = json.loads((out / "m0.json").read_text())
    assert set(first["models"]) == {"base", "code", "math"} and "@" in first["models"]["code"]

    rerun = launch(second_mixture)
    second = json.loads((out / "m0.json").read_text())
    assert f"stored for mixture {json.dumps(first_mixture, sort_keys=True)}, but m0 is now {json.dumps(second_mixture)}" in rerun.stdout
    assert "0 already evaluated, 1 to evaluate" in rerun.stdout
    assert second["mixture"] == second_mixture and second["metrics"] != first["metrics"]

    stamp = (out / "m0.json").stat().st_mtime_ns
    again = launch(second_mixture)  # the same mixture and models: reused, not redone
    assert "1 already evaluated, 0 to evaluate" in again.stdout and (out / "m0.json").stat().st_mtime_ns == stamp
