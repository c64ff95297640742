"""The search through the `slurm` executor on the real local cluster, killed mid-round and resumed."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import REPO, evaluations, synthetic_experiment  # noqa: E402

pytestmark = pytest.mark.slurm


def _submission(work: Path, round_name: str) -> dict | None:
    path = work / "search" / round_name / "attempt-0" / "submission.json"
    return json.loads(path.read_text()) if path.exists() else None


def _state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-t", "all", "-o", "%T"], capture_output=True, text=True).stdout.strip()


def _driver_log(tmp_path: Path) -> str:
    return "".join(p.read_text() for p in tmp_path.glob("driver-*.out"))[-3000:]


def test_killed_driver_resumes_without_evaluating_or_submitting_anything_twice(slurm_cluster, tmp_path, run_tool):
    search = {"round_sizes": [8, 4, 2], "mixtures_per_task": 4, "max_parallel": 2, "top_k": 8, "poll_seconds": 0.5}
    config = synthetic_experiment(tmp_path, search=search, extra_args="--sleep 1.0", executor="slurm")
    work = tmp_path / "work"
    # The driver runs as a job (slurm/search.sh) and is cancelled mid-round, as a preemption would.
    submitted = subprocess.run(["sbatch", "--parsable", f"--output={tmp_path}/driver-%j.out", "slurm/search.sh", str(config)],
                               cwd=REPO, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    driver = submitted.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 240
        while (_submission(work, "round-1") or {}).get("state") != "submitted":
            assert _state(driver) in ("PENDING", "RUNNING"), _driver_log(tmp_path)
            assert time.monotonic() < deadline, "round 1 was never submitted"
            time.sleep(0.2)
    finally:
        subprocess.run(["scancel", driver])
    while _state(driver) in ("PENDING", "RUNNING", "COMPLETING"):
        time.sleep(0.2)
    job_id = _submission(work, "round-1")["job_id"]
    queue = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
    assert queue.strip(), "the round's job should outlive its driver"  # so the resumed driver must re-attach
    done_before = len(evaluations(tmp_path))
    assert done_before < 8 + 4

    resumed = run_tool(config, "--resume", timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    names = [line.split()[0] for line in evaluations(tmp_path)]
    assert len(names) == len(set(names)) == 8 + 4 + 2 + 1  # the final mixture's proxy counts once too
    for round_name in ("round-0", "round-1", "round-2", "final"):
        attempts = sorted(p.name for p in (work / "search" / round_name).glob("attempt-*"))
        assert attempts == ["attempt-0"], (round_name, attempts)  # one sbatch per round, none repeated
    assert _submission(work, "round-1")["job_id"] == job_id
    answer = json.loads((work / "search" / "final_mixture.json").read_text())
    assert abs(sum(answer["mixture"].values()) - 1) < 1e-9 and answer["measured"]["of"] == 15
