"""A changed setting never reuses stale work (pipeline.py `claim_work_dir`, <work_dir>/stages.json): a finished
search refuses a changed beta, also on --resume, without rewriting anything; a raised base_train_iters refuses
until `--rerun-from base` retrains the base and the components branched from it; a changed beta keeps the base and
retrains the components; a setting that changes nothing (log_interval) is accepted."""
from __future__ import annotations

import json
import subprocess
import sys

import yaml

from megatron_demix.checkpoint.layout import read_tracker
from tests.conftest import REPO, VENV_BIN
from tests.search.conftest import synthetic_experiment

DEMIX = str(VENV_BIN / "demix")


def _run(*args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([*map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _edit(config, section: str, **values) -> None:
    data = yaml.safe_load(config.read_text())
    data[section] = {**data.get(section, {}), **values}
    config.write_text(yaml.safe_dump(data))


def _files(folder, models=None) -> dict:
    """{file: mtime} under `folder`, or only under its sub-folders `models`."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file() and (models is None or p.relative_to(folder).parts[0] in models)}


def test_a_finished_search_refuses_a_changed_beta_and_accepts_a_change_that_steers_jobs_only(tmp_path):
    config = synthetic_experiment(tmp_path, {"round_sizes": [4, 2], "mixtures_per_task": 4, "top_k": 4, "pool_size": 500})
    work = tmp_path / "work"
    first = _run(sys.executable, "tools/search/run.py", "--config", config)
    assert first.returncode == 0, first.stderr[-4000:]
    answer = (work / "search" / "final_mixture.json").read_text()
    assert json.loads(answer)["beta"] == 0.5
    _edit(config, "training", beta=0.1)
    for again in ([sys.executable, "tools/search/run.py", "--config", config, "--resume"], [DEMIX, "run", "--config", config]):
        out = _run(*again)
        assert out.returncode == 2, out.stderr[-2000:]
        assert f"{work}: the search stage's outputs ({work / 'search'}) were made with other settings:" in out.stderr
        assert "training.beta: 0.5 -> 0.1" in out.stderr and "--rerun-from search to `demix run`" in out.stderr
    assert (work / "search" / "final_mixture.json").read_text() == answer
    assert yaml.safe_load((work / "experiment.yaml").read_text())["training"]["beta"] == 0.5
    _edit(config, "training", beta=0.5)
    _edit(config, "search", poll_seconds=0.5, max_retries=3)
    resumed = _run(sys.executable, "tools/search/run.py", "--config", config, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]


def test_raised_base_iterations_retrain_the_components_and_a_changed_beta_only_them(tmp_path, demo_config_dict):
    work = tmp_path / "work"
    data = {**demo_config_dict, "work_dir": str(work), "cluster": {"executor": "local"},
            "datasets": [{"name": "general", "role": "general", "builtin": "prose"}, {"name": "code", "builtin": "code_high"}],
            "training": {**demo_config_dict["training"], "base_train_iters": 4, "train_iters": 2, "eval_interval": 0,
                         "log_interval": 2}}
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(data))
    checkpoints = work / "checkpoints"
    out = _run(DEMIX, "train", "--config", config)
    assert out.returncode == 0, out.stderr[-4000:]
    trained = _files(checkpoints)

    _edit(config, "training", base_train_iters=6)
    out = _run(DEMIX, "train", "--config", config)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "the base stage's outputs" in out.stderr and "training.base_train_iters: 4 -> 6" in out.stderr
    assert "--rerun-from base to `demix train`" in out.stderr and "what is made from them (components, search, validate)" in out.stderr
    assert _files(checkpoints) == trained and read_tracker(checkpoints / "base") == 4
    assert yaml.safe_load((work / "experiment.yaml").read_text())["training"]["base_train_iters"] == 4

    out = _run(DEMIX, "train", "--config", config, "--rerun-from", "base")
    assert out.returncode == 0, out.stderr[-4000:]
    assert read_tracker(checkpoints / "base") == 6
    components = ("code",)
    base_saved = max(_files(checkpoints, ["base"]).values())
    for component in components:
        assert read_tracker(checkpoints / component) == 2
        assert min(_files(checkpoints, [component]).values()) > base_saved, f"{component} branched from the old base"
    assert json.loads((work / "stages.json").read_text())["components"]["training"]["base_train_iters"] == 6

    base_before, components_before = _files(checkpoints, ["base"]), _files(checkpoints, components)
    _edit(config, "training", beta=0.25, log_interval=1)
    out = _run(DEMIX, "train", "--config", config)
    assert out.returncode == 2 and "the components stage's outputs" in out.stderr, out.stderr[-2000:]
    assert "training.beta: 0.5 -> 0.25" in out.stderr and "log_interval" not in out.stderr
    out = _run(DEMIX, "train", "--config", config, "--rerun-from", "components")
    assert out.returncode == 0, out.stderr[-4000:]
    assert _files(checkpoints, ["base"]) == base_before, "the base is kept"
    after = _files(checkpoints, components)
    assert set(after) == set(components_before) and all(after[p] > t for p, t in components_before.items())

    _edit(config, "training", log_interval=2)  # changes nothing that was made: accepted, nothing retrained
    out = _run(DEMIX, "train", "--config", config)
    assert out.returncode == 0, out.stderr[-4000:]
    assert _files(checkpoints) == {**base_before, **after}
