"""`pip install -e .` keeps an environment's own torch and megatron-core (a cluster container's).

setup.py states ranges; the exact versions live in constraints.txt. Asked, without the constraints
file, what installing the package into this venv would do (pip's `--dry-run --report`), pip must
install megatron-demix alone: the torch, megatron-core and every other requirement already here
satisfy the ranges, so none is replaced.
"""
from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from tests.conftest import REPO


def _dry_run(tmp_path, *requirement) -> dict:
    report = tmp_path / "report.json"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--report", str(report), "--quiet",
         "--no-build-isolation", "--disable-pip-version-check", *requirement],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(report.read_text())


def test_editable_install_keeps_the_installed_torch_and_megatron_core(tmp_path):
    report = _dry_run(tmp_path, "-e", ".[test,dali,tensorboard]")
    install = {item["metadata"]["name"]: item["metadata"]["version"] for item in report["install"]}
    assert install == {"megatron-demix": "0.1.0"}, install
    assert version("torch").startswith("2.") and version("megatron-core") >= "0.16.1"


def test_the_report_does_list_what_would_change(tmp_path):
    # The control: a requirement the environment does not satisfy shows up in the same report.
    wanted = "megatron-core==0.16.1" if version("megatron-core") != "0.16.1" else "megatron-core==0.19.2"
    report = _dry_run(tmp_path, "--ignore-requires-python", "--no-deps", wanted)
    assert [item["metadata"]["name"] for item in report["install"]] == ["megatron-core"]


def test_an_installed_package_searches_with_built_in_evaluation_outside_the_checkout(eval_experiment, tmp_path):
    """`pip install .` (not editable) into a fresh venv, then a small search evaluated by the built-in lm-eval
    path, run from a directory that is not the checkout: the library finds no script by path (issue 26)."""
    import os
    import shutil
    import sysconfig

    import yaml

    config, experiment = eval_experiment
    source, venv, outside = tmp_path / "src", tmp_path / "venv", tmp_path / "elsewhere"
    shutil.copytree(REPO / "megatron_demix", source / "megatron_demix", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.py", source)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    # The venv sees this environment's requirements (torch, lm-eval, ...) but not its editable megatron_demix:
    # a path in a .pth file is added alone, its own .pth files (the editable finder) are not read.
    (site / "requirements.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: with --prefix alone pip uninstalls this environment's own (editable) megatron-demix first.
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--no-index", "--ignore-installed", "--disable-pip-version-check", "--prefix", str(venv),
                              str(source)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    python = venv / "bin" / "python"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DEMIX_PYTHON")}
    env.update(HF_DATASETS_OFFLINE="1", PYTHONWARNINGS="ignore")
    where = subprocess.run([str(python), "-c", "import megatron_demix.cluster.executor as e; print(e.__file__);"
                            " print(sorted(p.name for p in e.SCRIPTS.iterdir()))"],
                           cwd=outside, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert where[0].startswith(str(site)) and "eval_proxy.sh" in where[1], where

    # The trained components, tokenizer and built-in tasks of the fixture, in a work dir of this test's own.
    work = tmp_path / "work"
    work.mkdir()
    for entry in Path(experiment.work_dir).iterdir():
        if entry.name not in ("search", "logs") and not entry.name.startswith("."):
            (work / entry.name).symlink_to(entry)
    data = yaml.safe_load(Path(config).read_text())
    # 8 examples a task: what is checked is where the installed package finds its scripts, not the scores.
    data.update(work_dir=str(work), cluster={"executor": "local"}, eval={"limit": 8},
                search={"prior": {"code": 0.5, "math": 0.5}, "pool_size": 200, "round_sizes": [4], "top_k": 8,
                        "ensemble_size": 2, "mixtures_per_task": 4, "evaluate_final": False, "poll_seconds": 0.5})
    (outside / "experiment.yaml").write_text(yaml.safe_dump(data))
    search = subprocess.run([str(python), "-m", "megatron_demix.commands.search", "--config", "experiment.yaml"],
                            cwd=outside, env=env, capture_output=True, text=True, timeout=900)
    assert search.returncode == 0, search.stderr[-4000:]
    results = sorted((work / "search/round-0/results").glob("*.json"))
    assert [p.stem for p in results] == [f"r0-{i:04d}" for i in range(4)]
    record = json.loads(results[0].read_text())
    assert record["lm_eval"]["results"] and set(record["domains"]) >= {"code", "math"}
    answer = json.loads((work / "search/final_mixture.json").read_text())
    assert set(answer["mixture"]) == {"code", "math"} and abs(sum(answer["mixture"].values()) - 1) < 1e-9
    assert not list((work / "search/round-0").rglob("batch-*.jsonl")) and not (work / "search/round-0/work").exists()
