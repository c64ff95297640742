"""A truncated state file (jobs.json, the search's settings.json, a mixture's result) stops `demix status` and
`tools/search/run.py --resume` with one line naming the file and what to do, exit status 2: no JSONDecodeError
traceback."""
from __future__ import annotations

import subprocess
import sys

from tests.search.conftest import REPO, synthetic_experiment


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if ": error: " in line]


def _truncate(path) -> None:
    path.write_text(path.read_text()[: len(path.read_text()) // 2])


def test_truncated_jobs_file_named_by_status(tmp_path):
    config = synthetic_experiment(tmp_path)
    jobs = tmp_path / "work" / "jobs.json"
    jobs.parent.mkdir(parents=True)
    jobs.write_text('{"jobs": [{"id": "12')
    result = subprocess.run([sys.executable, "-m", "megatron_demix.cli", "status", "--config", str(config)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = _error_lines(result)
    assert line.startswith(f"demix status: error: {jobs}: damaged (") and "delete the file" in line


def test_truncated_settings_and_result_named_on_resume(tmp_path, run_tool):
    config = synthetic_experiment(tmp_path, {"pool_size": 500, "round_sizes": [8, 4]})
    assert run_tool(config).returncode == 0
    search = tmp_path / "work" / "search"
    settings, saved = search / "settings.json", (search / "settings.json").read_text()
    _truncate(settings)
    result = run_tool(config, "--resume")
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = _error_lines(result)
    assert f"{settings}: damaged (" in line and "the settings the search was started with" in line

    settings.write_text(saved)
    result_file = sorted((search / "round-1" / "results").glob("*.json"))[0]
    _truncate(result_file)
    result = run_tool(config, "--resume")
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = _error_lines(result)
    assert f"{result_file}: damaged (" in line and "evaluate that mixture again" in line
