"""eval.command naming {checkpoint}: the proxy is merged to disk first (real MPI merge), then removed."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from megatron_demix.commands.evaluate import evaluate_batch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import checkpoint_experiment  # noqa: E402


@pytest.mark.mpi
def test_a_command_naming_checkpoint_gets_the_merged_proxy(tmp_path):
    config = checkpoint_experiment(tmp_path)
    results = tmp_path / "results"
    outputs = evaluate_batch(str(config), [{"id": "m0", "mixture": {"web": 0.2, "math": 0.5, "code": 0.3}}], str(results))
    assert outputs == {"evaluated": ["m0"], "skipped": []}
    result = json.loads((results / "m0.json").read_text())
    assert result["metrics"]["quality"] == 10.0 and result["domains"] == {"general": 10.0, "target": 1.0}
    assert not (tmp_path / "work" / "m0" / "checkpoint").exists()  # the proxy does not outlive its evaluation


@pytest.mark.mpi
def test_a_batch_of_mixtures_is_merged_from_one_read(tmp_path, capfd):
    """Issue 29: one `--mixtures` merge (one mpiexec) writes the task's proxies; each mixture's command gets its own."""
    config = checkpoint_experiment(tmp_path)
    results = tmp_path / "results"
    batch = [{"id": "m0", "mixture": {"web": 0.2, "math": 0.5, "code": 0.3}},
             {"id": "m1", "mixture": {"web": 0.6, "math": 0.0, "code": 0.4}}]
    assert evaluate_batch(str(config), batch, str(results)) == {"evaluated": ["m0", "m1"], "skipped": []}
    out = capfd.readouterr().out
    assert out.count("[merge] 2 proxies from one read") == 1 and out.count("[merge] wrote") == 1, out[-3000:]
    for item in batch:
        assert json.loads((results / f"{item['id']}.json").read_text())["metrics"]["quality"] == 10.0
        assert not (tmp_path / "work" / item["id"] / "checkpoint").exists()
    assert not list((tmp_path / "work").glob(".merge*"))  # the batch's folder and mixture list removed
