"""End to end: `demix demo` on the real local SLURM cluster, then again (nothing is redone)."""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.conftest import REPO, VENV_BIN

pytestmark = pytest.mark.slurm


def test_demo_pipeline_on_slurm_and_rerun(slurm_cluster, demo_config_dict, tmp_path):
    config = tmp_path / "demo.yaml"
    work = tmp_path / "work"
    config.write_text(yaml.safe_dump({
        **demo_config_dict, "work_dir": str(work),
        "prepare": {"builtin_megabytes": 0.3, "workers": 2},
        "training": {**demo_config_dict["training"], "base_train_iters": 12, "train_iters": 6, "eval_interval": 6},
        "cluster": {"executor": "slurm"},
    }))
    command = [str(VENV_BIN / "demix"), "demo", "--config", str(config)]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads((work / "report" / "demo.json").read_text())
    assert report["executor"] == "SlurmExecutor"
    models = {"base", "code", "math", "proxy:prior", "proxy:mostly-code", "proxy:mostly-math"}
    assert set(report["losses"]) == models
    assert all(set(losses) == {"general", "code", "math"} for losses in report["losses"].values())
    # The proxies lean the way their mixtures do: more code weight, lower code loss.
    losses = report["losses"]
    assert losses["proxy:mostly-code"]["code"] < losses["proxy:mostly-math"]["code"]
    assert losses["proxy:mostly-math"]["math"] < losses["proxy:mostly-code"]["math"]
    assert (work / "report" / "losses.png").stat().st_size > 10_000
    assert "proxy:mostly-code" in out.stdout

    merged = {p: p.stat().st_mtime_ns for p in (work / "proxies").rglob("*.distcp")}
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    assert {p: p.stat().st_mtime_ns for p in (work / "proxies").rglob("*.distcp")} == merged
