"""Faults of evaluations and of the search driver (issue 28): a {checkpoint} merge inside a SLURM task,
partial failures, eval.timeout, a killed driver's children, a stored result for another mixture."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from megatron_demix.commands.evaluate import evaluate_batch
from megatron_demix.search.evaluate import EvaluationFailed

sys.path.insert(0, str(Path(__file__).parent))
from conftest import REPO, checkpoint_experiment, evaluations, synthetic_experiment  # noqa: E402

MIXTURE = {"web": 0.2, "math": 0.5, "code": 0.3}


def _processes_naming(text: str) -> list[str]:
    """Command lines of the live processes (not zombies) whose command line contains `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z" and int(proc.name) != os.getpid():
            found.append(f"{proc.name}: {cmdline}")
    return found


def _wait_until(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.1)
    return value


def _sleeping_experiment(tmp_path: Path, search: dict | None = None, timeout: float | None = None) -> Path:
    """The synthetic experiment, each evaluation first sleeping the seconds in `<tmp_path>/sleep-seconds` (0: none)
    in a process whose command line names that file."""
    config = synthetic_experiment(tmp_path, search=search)
    sleeper = tmp_path / "sleep-seconds"
    sleeper.write_text("0")
    data = yaml.safe_load(config.read_text())
    data["eval"]["command"] = (f"{sys.executable} -c 'import sys, time; time.sleep(float(open(sys.argv[1]).read()))' {sleeper}"
                               f" && {data['eval']['command']}")
    if timeout:
        data["eval"]["timeout"] = timeout
    config.write_text(yaml.safe_dump(data))
    return config


# ------------------------------------------------------------------ a {checkpoint} proxy on SLURM

@pytest.mark.slurm
@pytest.mark.mpi
def test_a_checkpoint_proxy_is_merged_inside_its_slurm_task(slurm_cluster, tmp_path):
    """The merge's 2 MPI ranks run inside the one-task eval allocation: no new job step, which SLURM never
    grants there ("Requested nodes are busy" for ever before the fix)."""
    from megatron_demix.cluster.executor import SlurmExecutor
    from megatron_demix.cluster.tasks import Call, TaskArray, Watcher
    from megatron_demix.experiment import load_experiment

    config = checkpoint_experiment(tmp_path, executor="slurm")
    executor = SlurmExecutor(load_experiment(config).cluster, tmp_path / "logs")
    results = tmp_path / "results"
    array = TaskArray.create(tmp_path / "attempt-0", "eval-ckpt", [Call(
        "megatron_demix.commands.evaluate:evaluate_batch",
        {"config": str(config), "results_dir": str(results), "mixtures": [{"id": "m0", "mixture": MIXTURE}]})])
    array.submit(executor, "slurm/eval_proxy.sh", stage="eval")
    try:
        record = Watcher(executor, max_delay=1.0).wait([array], timeout=180)[array.folder][0]
    except TimeoutError:
        pytest.fail(f"the evaluation task still runs after 180 s; its log: {Path(array.log(0)).read_text()[-2000:]}")
    finally:
        subprocess.run(["scancel", array.job_id])
    log = Path(array.log(0)).read_text()
    assert record["state"] == "success", log[-3000:]
    assert "Requested nodes are busy" not in log and "2 rank(s)" in log  # the merge ran on its 2 ranks
    assert json.loads((results / "m0.json").read_text())["metrics"]["quality"] == 10.0


# ------------------------------------------------------------------ partial failures

def test_too_few_results_to_fit_stop_in_one_line_and_resume_retries_them(tmp_path, run_tool):
    # 2 of round 0's 4 evaluations fail every time (exit 3): 2 points are too few to fit (the fit needs 3).
    fail_ids = tmp_path / "fail-ids.txt"
    fail_ids.write_text("r0-0001\nr0-0002\n")
    search = {"round_sizes": [4, 2], "evaluate_final": False, "mixtures_per_task": 4, "max_retries": 0, "top_k": 8}
    config = synthetic_experiment(tmp_path, search=search, extra_args=f"--fail exit --fail-ids-file {fail_ids}")
    out = run_tool(config)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("search: error:")]
    assert len(errors) == 1 and out.stderr.rstrip().endswith(errors[0])
    assert ("round-0: only 2 of 4 evaluations succeeded (the predictor needs 3 evaluated mixtures to fit, the search has 2)"
            in errors[0])
    assert "r0-0001: EvaluationFailed: eval.command for mixture r0-0001 exited with status 3 (log: " in errors[0]
    assert "--resume" in errors[0]
    # The evaluation fixed, --resume evaluates the failed mixtures again (failures are not final, even with
    # max_retries 0) and keeps the two that succeeded.
    fail_ids.write_text("")
    resumed = run_tool(config, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    names = [line.split()[0] for line in evaluations(tmp_path)]
    assert sorted(names[:4]) == [f"r0-{i:04d}" for i in range(4)]
    assert sorted(names[4:6]) == ["r0-0001", "r0-0002"] and len(names) == 4 + 2 + 2
    assert json.loads((tmp_path / "work/search/final_mixture.json").read_text())["evaluations"] == 6


# ------------------------------------------------------------------ eval.timeout

def test_eval_timeout_ends_an_evaluation_and_counts_it_as_failed(tmp_path):
    config = _sleeping_experiment(tmp_path, timeout=2)
    (tmp_path / "sleep-seconds").write_text("120")
    results = tmp_path / "results"
    start = time.monotonic()
    with pytest.raises(EvaluationFailed, match=r"1 of 1 mixture\(s\) failed") as error:
        evaluate_batch(str(config), [{"id": "m0", "mixture": MIXTURE}], str(results))
    seconds = time.monotonic() - start
    assert "m0: EvaluationFailed: eval.command for mixture m0 ran past eval.timeout (2 s) and was ended" in str(error.value)
    assert 2 <= seconds < 30, seconds
    assert not _processes_naming(str(tmp_path / "sleep-seconds")) and not (results / "m0.json").exists()
    # Within the limit, the same evaluation succeeds.
    (tmp_path / "sleep-seconds").write_text("0.5")
    assert evaluate_batch(str(config), [{"id": "m0", "mixture": MIXTURE}], str(results))["evaluated"] == ["m0"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_driver_leaves_no_evaluation_running_and_resume_runs_each_once(tmp_path, run_tool, sig):
    config = _sleeping_experiment(tmp_path, search={"round_sizes": [4, 2], "evaluate_final": False, "mixtures_per_task": 2,
                                                    "top_k": 8})
    marker = str(tmp_path / "sleep-seconds")
    (tmp_path / "sleep-seconds").write_text("300")
    driver = subprocess.Popen([sys.executable, str(REPO / "tools/search/run.py"), "--config", str(config)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until(lambda: _processes_naming(marker), 120, "an evaluation started")
        driver.send_signal(sig)
        _, stderr = driver.communicate(timeout=30)
    finally:
        driver.kill()
    # SIGTERM: the driver ends its task's process group first; SIGKILL: the task gets SIGTERM as its parent
    # dies (PDEATHSIG) and ends its own children. Either way nothing is left running.
    _wait_until(lambda: not _processes_naming(marker), 20, "every evaluation process ended")
    if sig == signal.SIGTERM:
        assert driver.returncode == 1 and "search: error: stopped by SIGTERM" in stderr and "Traceback" not in stderr, stderr
    (tmp_path / "sleep-seconds").write_text("0")
    resumed = run_tool(config, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    names = [line.split()[0] for line in evaluations(tmp_path)]
    assert len(names) == len(set(names)) == 4 + 2  # each mixture evaluated once: no orphan finished one beside it


# ------------------------------------------------------------------ a stored result for another mixture

def test_a_stored_result_is_reused_only_for_the_same_mixture_and_models(tmp_path, caplog):
    config = synthetic_experiment(tmp_path)
    results = tmp_path / "results"
    other = {"web": 0.6, "math": 0.2, "code": 0.2}
    assert evaluate_batch(str(config), [{"id": "m0", "mixture": MIXTURE}], str(results))["evaluated"] == ["m0"]
    first = json.loads((results / "m0.json").read_text())
    # Same id, same mixture: reused.
    assert evaluate_batch(str(config), [{"id": "m0", "mixture": MIXTURE}], str(results))["skipped"] == ["m0"]
    # Same id, another mixture: evaluated again, the log naming both.
    assert evaluate_batch(str(config), [{"id": "m0", "mixture": other}], str(results))["evaluated"] == ["m0"]
    second = json.loads((results / "m0.json").read_text())
    assert second["mixture"] == other and second["metrics"] != first["metrics"]
    assert f"stored for mixture {json.dumps(MIXTURE, sort_keys=True)}" in caplog.text and json.dumps(other) in caplog.text
    # Same mixture, but a component checkpoint that appeared since (another model): evaluated again.
    (tmp_path / "work/checkpoints/web").mkdir(parents=True)
    assert evaluate_batch(str(config), [{"id": "m0", "mixture": other}], str(results))["evaluated"] == ["m0"]
    assert "made from other models (web: " in caplog.text
    assert [line.split()[0] for line in evaluations(tmp_path)] == ["m0", "m0", "m0"]
