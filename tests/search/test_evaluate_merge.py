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
