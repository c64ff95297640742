"""`demix run` end to end: in the foreground (local executor, lm-eval on the built-in tasks), the
whole chain submitted to the real local SLURM cluster at once, a kill during the search, the
paper-scale dry run, and `demix validate` of configs/fidelity-tiered-ci.yaml on the same trained models."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from megatron_demix.cluster.executor import slurm_job_states
from tests.conftest import REPO, VENV_BIN
from tests.search.conftest import SCRIPT as SYNTHETIC_EVAL

DEMIX = str(VENV_BIN / "demix")
CI_FIDELITY = REPO / "configs" / "fidelity-tiered-ci.yaml"
# The training of configs/fidelity-tiered-ci.yaml (same candidates, corpora and tokenizer as the reduced demo), so
# that its `demix validate` runs on the base and components trained once here (the stage check refuses otherwise).
TINY_TRAINING = {**{k: yaml.safe_load(CI_FIDELITY.read_text())["training"][k]
                    for k in ("base_train_iters", "train_iters", "lr_warmup_iters")},
                 "eval_interval": 6, "log_interval": 6}


def _experiment(tmp_path, demo_config_dict, trained=None, **sections) -> tuple:
    """The demo experiment, reduced: small corpora, a few iterations, a 4+2+1 search; with `trained`, its
    prepared data and trained models are copied in first (so the pipeline's training stages find them complete)."""
    work = tmp_path / "work"
    if trained is not None:
        shutil.copytree(trained, work, ignore=shutil.ignore_patterns("experiment.yaml", "logs"))
    data = {**demo_config_dict, "work_dir": str(work),
            "training": {**demo_config_dict["training"], **TINY_TRAINING},
            "search": {"round_sizes": [4, 2, 1], "pool_size": 2000, "top_k": 16, "ensemble_size": 2, "poll_seconds": 1.0,
                       "mixtures_per_task": 4, "cv_folds": 2},  # 2 folds, not leave-one-out at 6 and 7 points
            **sections}
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(data))
    return config, work


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_config_dict):
    """A work dir with prepared data, a base and the 6 components, trained once by `demix train` (local executor)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    config, work = _experiment(tmp, demo_config_dict, cluster={"executor": "local"})
    out = _demix("train", "--config", config)
    assert out.returncode == 0, out.stderr[-4000:]
    return work


def _synthetic_eval(tmp_path, sleep: float = 0.0) -> dict:
    """An `eval:` section scoring each mixture with tests/search/synthetic_eval.py (no checkpoints needed)."""
    command = (f"{sys.executable} {SYNTHETIC_EVAL} {{mixture}} {{output}} --optimum code_high=0.5,math_high=0.3,code_medium=0.2 --noise 0.01"
               f" --counter {tmp_path / 'evaluations.txt'} --sleep {sleep}")
    return {"command": command, "tasks": {"general": ["quality"], "target": ["closeness"]}}


def _demix(*args, timeout=900, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([DEMIX, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout, **kwargs)


def _evaluations(tmp_path) -> list[str]:
    counter = tmp_path / "evaluations.txt"
    return counter.read_text().splitlines() if counter.exists() else []


def test_dry_run_of_the_paper_config_lists_every_job_and_the_compute():
    out = _demix("run", "--config", REPO / "configs" / "paper.yaml", "--dry-run")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    train = next(i for i, line in enumerate(lines) if line.startswith("train ") and "[after train-base]" in line)
    assert "--array=0-6" in lines[train + 1] and "--nodes=8" in lines[train + 1] and "--gpus-per-node=8" in lines[train + 1]
    assert any(line.startswith("search") and "[after train]" in line for line in lines)
    gpu_hours = next(line for line in lines if line.startswith("training compute"))
    assert 1_000 < float(gpu_hours.split("= ")[1].split(" GPU-hours")[0].replace(",", "")) < 10_000
    assert not os.path.exists("/scratch/demix/paper/experiment.yaml"), "a dry run writes nothing"


def test_local_pipeline_ends_with_a_mixture_and_a_rerun_redoes_nothing(tmp_path, demo_config_dict, trained):
    """The demo's pipeline, reduced: prepare, base, 6 components, a 4+2+1 search scored by lm-eval on the built-in tasks."""
    config, work = _experiment(tmp_path, demo_config_dict, trained, cluster={"executor": "local"},
                               eval={"limit": 8, "batch_size": 8})
    out = _demix("run", "--config", config)
    assert out.returncode == 0, out.stderr[-4000:]
    answer = json.loads((work / "search" / "final_mixture.json").read_text())
    assert set(answer["mixture"]) == {d["name"] for d in demo_config_dict["datasets"][1:]} and abs(sum(answer["mixture"].values()) - 1) < 1e-9
    assert answer["evaluations"] == 7 and answer["measured"] is not None
    assert "final mixture (vs the token prior)" in out.stdout and "stage seconds: prepare" in out.stdout
    report = work / "search" / "report"
    assert (report / "summary.md").exists() and any(report.glob("*.png"))

    results = {p: p.stat().st_mtime_ns for p in (work / "search").rglob("results/*.json")}
    checkpoints = {p: p.stat().st_mtime_ns for p in (work / "checkpoints").rglob("*.distcp")}
    start = time.monotonic()
    again = _demix("run", "--config", config)
    assert again.returncode == 0, again.stderr[-4000:]
    assert {p: p.stat().st_mtime_ns for p in (work / "search").rglob("results/*.json")} == results
    assert {p: p.stat().st_mtime_ns for p in (work / "checkpoints").rglob("*.distcp")} == checkpoints
    assert time.monotonic() - start < 60, "a finished pipeline re-runs in seconds (only the prepare check runs)"


def test_killed_during_the_search_the_rerun_continues_it(tmp_path, demo_config_dict, trained):
    config, work = _experiment(tmp_path, demo_config_dict, trained, cluster={"executor": "local"},
                               eval=_synthetic_eval(tmp_path, 1.0))
    first = subprocess.Popen([DEMIX, "run", "--config", str(config)], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while len(_evaluations(tmp_path)) < 2 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done_before = len(_evaluations(tmp_path))
    assert 2 <= done_before < 8, "killed during the search"
    again = _demix("run", "--config", config)
    assert again.returncode == 0, again.stderr[-4000:]
    names = [line.split()[0] for line in _evaluations(tmp_path)]
    # 4 + 2 + 1 and the final mixture's own proxy; at most the one evaluation the kill interrupted runs twice.
    assert 8 <= len(names) <= 9 and len(set(names)) == 8
    assert json.loads((work / "search" / "final_mixture.json").read_text())["evaluations"] == 7


@pytest.mark.slurm
def test_submitted_chain_runs_to_the_final_mixture_on_slurm(slurm_cluster, tmp_path, demo_config_dict, trained):
    # Every stage is submitted; the training tasks find their models complete, validate and end.
    config, work = _experiment(tmp_path, demo_config_dict, trained, cluster={"executor": "slurm"},
                               eval=_synthetic_eval(tmp_path))
    out = _demix("run", "--config", config, "--submit", timeout=120)
    assert out.returncode == 0, out.stderr[-4000:]
    jobs = json.loads((work / "jobs.json").read_text())["jobs"]
    assert [j["name"] for j in jobs] == ["prepare", "train-base", "train", "search"]
    assert [j["after"] for j in jobs] == [[], [jobs[0]["id"]], [jobs[1]["id"]], [jobs[2]["id"]]]
    search_job = jobs[-1]["id"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        states = slurm_job_states(search_job)
        if states and all(s.split()[0] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING") for s in states.values()):
            break
        time.sleep(0.5)
    assert list(slurm_job_states(search_job).values()) == ["COMPLETED 0:0"], (work / "logs").iterdir()
    answer = json.loads((work / "search" / "final_mixture.json").read_text())
    assert abs(sum(answer["mixture"].values()) - 1) < 1e-9
    status = _demix("status", "--config", config, timeout=60)
    assert status.returncode == 0 and "stage: done" in status.stdout and "final mixture" in status.stdout


def test_validate_of_the_ci_fidelity_config_reports_what_scipy_computes_and_a_rerun_redoes_nothing(tmp_path, trained):
    """configs/fidelity-tiered-ci.yaml through `demix validate` (local executor: real trainings from the shared base,
    real merges, real lm-eval) on the trained models; every number of its report recomputed with scipy from its raw
    files (tests/validate/fidelity_check.py), the references trained on their mixtures' blends, then run again."""
    import csv

    from megatron_demix.cluster.executor import make_executor
    from megatron_demix.experiment import load_experiment
    from megatron_demix.validate.run import run_validate
    from tests.validate.fidelity_check import check_report

    work = tmp_path / "work"
    shutil.copytree(trained, work, ignore=shutil.ignore_patterns("experiment.yaml", "logs"))
    data = yaml.safe_load(CI_FIDELITY.read_text())
    data["training"]["eval_interval"] = data["training"]["train_iters"]  # an interval: changes no model, logs the blend
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(data))
    out = _demix("validate", "--config", config, "--work-dir", work, timeout=1500)
    assert out.returncode == 0, out.stderr[-4000:]
    scores = check_report(work)
    root = work / "validate"
    for i in scores["reference"]:  # each reference trained on its mixture's blend, to a component's budget, from the base
        save = root / "models" / f"reference-{i}"
        assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == str(TINY_TRAINING["train_iters"])
        valid = [json.loads(line) for line in (work / "logs" / "train" / f"reference-{i}" / "train.jsonl").read_text().splitlines()
                 if '"valid"' in line]
        assert {"general"} < {r["domain"] for r in valid} <= {d["name"] for d in data["datasets"]}
    with open(root / "scores.csv") as f:  # the per-mixture table agrees with the raw evaluations
        raw = [r for r in csv.DictReader(f) if r["method"] in ("demix", "reference")]
    assert len(raw) == 2 * len(scores["reference"])
    for r in raw:
        for domain, score in scores[r["method"]][r["mixture"]].items():
            assert float(r[domain]) == pytest.approx(score), (r["method"], r["mixture"], domain)
    assert "| method | training tokens | rho | top-25% rho | Kendall tau | capability recovery | regret |" in (root / "fidelity.md").read_text()

    # Run again: nothing is trained or evaluated twice.
    done = {p: p.stat().st_mtime_ns for p in [*root.rglob("results/*.json"), *root.rglob("*.distcp")]}
    experiment = load_experiment(work / "experiment.yaml")
    run_validate(experiment, work / "experiment.yaml", make_executor(experiment.cluster, experiment.paths.logs), 1)
    assert {p: p.stat().st_mtime_ns for p in [*root.rglob("results/*.json"), *root.rglob("*.distcp")]} == done


def test_a_candidate_added_to_a_finished_experiment_trains_only_its_component_and_keeps_every_evaluation(
        tmp_path, demo_config_dict, trained):
    """Issue 29: math_low left out of a finished 5-candidate experiment, then added to its file: `demix run` prepares
    and trains math_low alone (from the same base), and the search goes on over 6 candidates with the earlier
    evaluations as data (math_low at share 0), never evaluating them again; then `demix run --rounds-more 1` gives
    it one more round and a new answer."""
    datasets = demo_config_dict["datasets"]
    search = {"round_sizes": [4, 2, 1], "pool_size": 2000, "top_k": 16, "ensemble_size": 2, "poll_seconds": 1.0,
              "mixtures_per_task": 4, "predictor": "quadratic", "climb_starts": 0}  # the cheapest fits: not under test
    config, work = _experiment(tmp_path, demo_config_dict, trained, cluster={"executor": "local"},
                               eval=_synthetic_eval(tmp_path), datasets=datasets[:-1], search=search)
    shutil.rmtree(work / "checkpoints" / "math_low")
    shutil.rmtree(work / "data" / "math_low")
    first = _demix("run", "--config", config)
    assert first.returncode == 0, first.stderr[-4000:]
    assert len(_evaluations(tmp_path)) == 4 + 2 + 1 + 1
    made = {p: p.stat().st_mtime_ns for folder in ("checkpoints", "data") for p in (work / folder).rglob("*") if p.is_file()
            and p.name != "token_prior.json"}
    results = {p: p.stat().st_mtime_ns for p in (work / "search").glob("round-*/results/*.json")}

    data = yaml.safe_load(config.read_text())
    data["datasets"] = datasets
    config.write_text(yaml.safe_dump(data))
    again = _demix("run", "--config", config)
    assert again.returncode == 0, again.stderr[-4000:]
    assert {p: p.stat().st_mtime_ns for p in made} == made, "the other datasets and models are untouched"
    new = sorted(str(p.relative_to(work)).split("/")[:2] for folder in ("checkpoints", "data")
                 for p in (work / folder).rglob("*") if p.is_file() and p not in made and p.name != "token_prior.json")
    # Besides math_low's data and model, only its blend's sample index (Megatron's index cache) is new.
    assert {tuple(n) for n in new} - {("data", "index-cache")} == {("checkpoints", "math_low"), ("data", "math_low")}
    assert [p.name for p in (work / "logs").glob("train-*")] and all("math_low" in p.name for p in (work / "logs").glob("train-*"))
    assert {p: p.stat().st_mtime_ns for p in results} == results
    names = [line.split()[0] for line in _evaluations(tmp_path)]
    assert len(names) == 8 + 2 + 1 + 1 and len(set(names[8:])) == 4, "a random round of 2, one of 1, the new answer"
    answer = json.loads((work / "search" / "final_mixture.json").read_text())
    assert set(answer["mixture"]) == {d["name"] for d in datasets[1:]} and answer["measured"] is not None
    assert answer["evaluations"] == 4 + 2 + 1 + 1 + 2 + 1 and [p["added"] for p in answer["phases"]] == [[], ["math_low"]]
    assert "math_low added before round 3" in (work / "search" / "report" / "summary.md").read_text()
    more = _demix("run", "--config", config, "--rounds-more", "1")
    assert more.returncode == 0, more.stderr[-4000:]
    assert len(_evaluations(tmp_path)) == 12 + 1 + 1, "one more round of the last configured size (1), the new answer"
    answer = json.loads((work / "search" / "final_mixture.json").read_text())
    assert answer["rounds"] == [4, 2, 1, 2, 1, 1] and answer["evaluations"] == 11 + 1 + 1
