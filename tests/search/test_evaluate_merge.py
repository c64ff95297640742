"""eval.command naming {checkpoint}: the proxy is merged to disk first (real MPI merge), then removed."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from megatron_demix.commands.evaluate import evaluate_batch
from tests.conftest import run_torchrun

sys.path.insert(0, str(Path(__file__).parent))
from conftest import PRIOR, synthetic_experiment  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.mpi
def test_a_command_naming_checkpoint_gets_the_merged_proxy(tmp_path):
    config = synthetic_experiment(tmp_path)
    data = yaml.safe_load(config.read_text())
    checkpoints = Path(data["work_dir"]) / "checkpoints"
    args = ["save", "--tp", 1, "--pp", 1]
    for seed, name in enumerate(PRIOR, start=1):
        args += ["--seed", seed, "--out", checkpoints / name]
    saved = run_torchrun(1, REPO / "tests/merge/model_tool.py", args)
    assert saved.returncode == 0, saved.stderr[-3000:]
    # The harness proves it saw a complete merged checkpoint: it reports the tracker's iteration.
    data["eval"]["command"] = ("python -c \"import json,sys; it=open(sys.argv[1]+'/latest_checkpointed_iteration.txt').read();"
                               " json.dump({'quality': float(it), 'closeness': 1.0}, open(sys.argv[2], 'w'))\" {checkpoint} {output}")
    data["merge"] = {"ranks": 2}
    config.write_text(yaml.safe_dump(data))
    results = tmp_path / "results"
    outputs = evaluate_batch(str(config), [{"id": "m0", "mixture": {"web": 0.2, "math": 0.5, "code": 0.3}}], str(results))
    assert outputs == {"evaluated": ["m0"], "skipped": []}
    result = json.loads((results / "m0.json").read_text())
    assert result["metrics"]["quality"] == 10.0 and result["domains"] == {"general": 10.0, "target": 1.0}
    assert not (tmp_path / "work" / "m0" / "checkpoint").exists()  # the proxy does not outlive its evaluation
