"""Bad input: failing evaluations are retried, then reported with their logs; bad settings are refused."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from megatron_demix.cluster.executor import LocalExecutor
from megatron_demix.commands.evaluate import evaluate_batch
from megatron_demix.config.base import ConfigError
from megatron_demix.experiment import load_experiment
from megatron_demix.search.driver import check_resumable, run_search
from megatron_demix.search.evaluate import EvaluationFailed

sys.path.insert(0, str(Path(__file__).parent))
from conftest import evaluations, synthetic_experiment  # noqa: E402

SMALL = {"round_sizes": [8, 4], "evaluate_final": False, "mixtures_per_task": 4, "max_retries": 1, "top_k": 8}


def _failing(tmp_path, mode: str, ids: list[str], search=None) -> Path:
    ids_file = tmp_path / "fail-ids.txt"
    ids_file.write_text("\n".join(ids))
    return synthetic_experiment(tmp_path, search={**SMALL, **(search or {})}, extra_args=f"--fail {mode} --fail-ids-file {ids_file}")


@pytest.mark.parametrize("mode, reason", [("exit", "exited with status 3"), ("nojson", "wrote no {output} file"),
                                          ("nan", "metric 'quality' is nan, not a finite number")])
def test_each_kind_of_failed_evaluation_is_an_error_naming_the_mixture(tmp_path, mode, reason):
    config = _failing(tmp_path, mode, ["m1"])
    mixture = {"web": 0.5, "math": 0.3, "code": 0.2}
    results = tmp_path / "results"
    with pytest.raises(EvaluationFailed, match="1 of 2 mixture") as error:
        evaluate_batch(str(config), [{"id": "m0", "mixture": mixture}, {"id": "m1", "mixture": mixture}], str(results))
    assert "m1: " in str(error.value) and reason in str(error.value)
    assert json.loads((results / "m0.json").read_text())["domains"]["general"] > 0  # the good one is kept
    assert not (results / "m1.json").exists()
    # Re-running the batch evaluates only what has no result.
    with pytest.raises(EvaluationFailed):
        evaluate_batch(str(config), [{"id": "m0", "mixture": mixture}, {"id": "m1", "mixture": mixture}], str(results))
    assert [line.split()[0] for line in evaluations(tmp_path)] == ["m0", "m1", "m1"]


def test_failures_are_retried_then_reported_and_the_search_goes_on(tmp_path, run_tool):
    # r0-0001 fails once (then succeeds on its retry); r0-0002 fails every time.
    config = _failing(tmp_path, "exit", ["r0-0001:1", "r0-0002"])
    out = run_tool(config)
    assert out.returncode == 0, out.stderr[-3000:]
    names = [line.split()[0] for line in evaluations(tmp_path)]
    assert names.count("r0-0001") == 2 and names.count("r0-0002") == 2  # one retry each (max_retries 1)
    assert len(names) == 8 + 4 + 2
    work = load_experiment(config).work_dir
    results = Path(work) / "search" / "round-0" / "results"
    assert (results / "r0-0001.json").exists() and not (results / "r0-0002.json").exists()
    record = json.loads((Path(work) / "search/round-0/attempt-1/results/0.json").read_text())
    assert record["state"] == "error" and "r0-0002" in record["error"] and "Traceback" in record["traceback"]
    assert "synthetic failure (exit) for r0-0002" in Path(record["log"]).read_text()
    assert "failed (retried on --resume)" in out.stderr and record["log"] in out.stderr
    assert json.loads((Path(work) / "search/final_mixture.json").read_text())["evaluations"] == 11


def test_too_few_results_stop_the_search_with_a_clear_message(tmp_path, run_tool):
    config = _failing(tmp_path, "nan", [f"r0-{i:04d}" for i in range(6)], search={"max_retries": 0})
    out = run_tool(config)
    assert out.returncode == 1
    assert "round-0: only 2 of 8 evaluations succeeded (search.min_results needs 4)" in out.stderr
    assert "is nan" in out.stderr and "log: " in out.stderr and "--resume" in out.stderr
    # Fixed evaluation + resume: the 2 good results are kept, the 6 failed ones evaluated again.
    (tmp_path / "fail-ids.txt").write_text("")
    before = len(evaluations(tmp_path))
    experiment = load_experiment(config)
    executor = LocalExecutor(experiment.cluster, tmp_path / "logs")
    answer = run_search(experiment, config, executor, resume=True)  # failures are not final, even with max_retries 0
    assert answer["evaluations"] == 12 and len(evaluations(tmp_path)) == before + 6 + 4


@pytest.mark.parametrize("search, message", [
    ({"bounds": {"web": [0.6, 0.9], "math": [0.5, 0.7]}}, "search.bounds: the minimum shares sum to 1.1 > 1"),
    ({"bounds": {"video": [0.0, 0.5]}}, "search.bounds: unknown candidate(s) video"),
    ({"prior": {"web": 1, "math": 1}}, "search.prior: must name exactly the candidate datasets web, math, code; missing code"),
])
def test_infeasible_prior_or_bounds_are_clear_errors(tmp_path, search, message):
    with pytest.raises(ConfigError) as error:
        check_resumable(load_experiment(synthetic_experiment(tmp_path, search=search)), resume=False)
    assert message in str(error.value)


def test_bad_settings_exit_2_before_anything_runs(tmp_path, run_tool):
    out = run_tool(synthetic_experiment(tmp_path, search={"bounds": {"video": [0.0, 0.5]}}))
    assert out.returncode == 2 and "search.bounds: unknown candidate(s) video" in out.stderr, out.stderr[-2000:]
    assert not evaluations(tmp_path) and not (tmp_path / "work").exists()
