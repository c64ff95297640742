"""Checkpoint averaging along one run (`--run-dir`), on a save root the real trainer wrote (TP=2, iter 2, 4, 6, 8).

Each merge is checked tensor by tensor against the schedule's formula computed here and whole
tensors read by megatron-core (`check_tool.py`); the output is loaded at TP=1 to continue
training; `torchrun --nproc-per-node 2` writes the same bytes as `mpiexec -n 2`.
"""
from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch

from merge_helpers import HERE, PYTHON, REPO, RUN, small_env
from tests.conftest import VENV_BIN
from tests.training.train_helpers import check, torchrun, train_records, write_tiny_experiment

pytestmark = pytest.mark.mpi

ITERATIONS = [2, 4, 6, 8]
# name: (flags, selected iterations, weights by the formula, written out independently of run_average.py)
CASES = {
    "uniform": ([], ITERATIONS, [1 / 4] * 4),
    "minus_sqrt": (["--schedule", "minus-sqrt", "--start-iteration", "4", "--end-iteration", "8"], [4, 6, 8],
                   [math.sqrt(1 / 3), math.sqrt(2 / 3) - math.sqrt(1 / 3), 1 - math.sqrt(2 / 3)]),
    "linear_interval": (["--schedule", "linear", "--min-iteration-interval", "4", "--output-iteration", "100",
                         "--extra-state-source", "2"], [4, 8], [1 - 1 / 2, 1 / 2]),
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """(experiment YAML, save root) of a base trained at TP=2 for 8 iterations, saving every 2 (all kept)."""
    config = write_tiny_experiment(tmp_path_factory.mktemp("run"), save_interval=2)
    check(torchrun(2, "--config", config, "--component", "base", "--tensor-model-parallel-size", 2))
    save = config.parent / "checkpoints" / "base"
    assert sorted(p.name for p in save.glob("iter_*")) == [f"iter_{i:07d}" for i in ITERATIONS]
    return config, save


@pytest.fixture(scope="module")
def averaged(trained_run, mpiexec, tmp_path_factory):
    """Every case through the CLI under `mpiexec -n 2`, checked in one check_tool process."""
    _, save = trained_run
    out_root = tmp_path_factory.mktemp("averaged")
    outputs, specs = {}, []
    for name, (flags, iterations, weights) in CASES.items():
        output = out_root / name
        proc = mpiexec(2, [PYTHON, RUN[1], "--run-dir", save, "--output", output, *flags], env=small_env(), cwd=REPO)
        assert proc.returncode == 0, f"{name}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        outputs[name] = (output, proc)
        specs.append(json.dumps({"name": name, "output": str(output), "inputs": [[str(save / f"iter_{i:07d}"), w] for i, w in
                                                                                  zip(iterations, weights)]}))
    result = subprocess.run([PYTHON, str(HERE / "check_tool.py"), *specs], capture_output=True, text=True, env=small_env(),
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    reports = json.loads(result.stdout.strip().splitlines()[-1])
    return {name: (*outputs[name], reports[name]) for name in CASES}


@pytest.mark.parametrize("case", list(CASES))
def test_each_schedule_equals_its_formula(averaged, case):
    output, proc, report = averaged[case]
    assert report["keys"] >= 8 and [k for k in report["missing"] if not k.startswith("optimizer.")] == []
    assert report["mismatches"] == [], report["mismatches"][:5]
    provenance = json.loads(next(output.glob("iter_*/merge.json")).read_text())
    assert provenance["iterations"] == CASES[case][1] and provenance["weights"] == pytest.approx(CASES[case][2], abs=1e-15)


def test_output_iteration_extra_state_and_provenance_in_the_common_state(averaged, trained_run):
    from megatron_demix.checkpoint.torch_dist import ChunkReader, read_common_state, read_metadata

    _, save = trained_run
    output = averaged["linear_interval"][0]
    assert (output / "latest_checkpointed_iteration.txt").read_text().strip() == "100"
    merged = output / "iter_0000100"
    common = torch.load(merged / "common.pt", weights_only=False)
    source = read_common_state(save / "iter_0000008")  # input 2 of [4, 8]; common.pt only before megatron-core 0.19
    assert common["iteration"] == 100 and common["consumed_train_samples"] == source["consumed_train_samples"]
    assert common["demix_merge"]["schedule"] == "linear" and common["demix_merge"]["iterations"] == [4, 8]
    assert common["demix_merge"]["tool_version"] and common["demix_merge"]["created"]
    # the copied objects (RNG state) are input 2's bytes
    out_md, src_md = read_metadata(merged), read_metadata(save / "iter_0000008")
    objects = [index for index in out_md.storage_data if index.fqn.startswith("rng_state")]
    assert objects
    with ChunkReader(merged, out_md.storage_data) as out, ChunkReader(save / "iter_0000008", src_md.storage_data) as src:
        assert all(out.raw(index) == src.raw(index) for index in objects)
    # default: named after the newest selected checkpoint
    assert (averaged["uniform"][0] / "latest_checkpointed_iteration.txt").read_text().strip() == "8"


def test_training_continues_from_the_average_at_another_tp(averaged, trained_run):
    """The TP=2 run's average initialises a TP=1 component, whose first loss is far below the random start's."""
    config, save = trained_run
    check(torchrun(1, "--config", config, "--component", "code", "--pretrained-checkpoint", averaged["uniform"][0],
                   "--train-iters", 2, "--log-dir", config.parent / "logs" / "continued"))
    continued = train_records(config.parent / "logs" / "continued")
    from_random = train_records(config.parent / "logs" / "train" / "base")
    assert len(continued) == 2 and all(math.isfinite(r["loss"]) for r in continued)
    # ln(512) = 6.24 at random initialisation; the runs are deterministic (one thread, fixed seeds)
    assert continued[0]["loss"] < from_random[0]["loss"] - 0.2, (continued[0], from_random[0])


def test_torchrun_writes_the_bytes_of_mpiexec(averaged, trained_run, tmp_path):
    _, save = trained_run
    output = tmp_path / "out"
    flags, _, _ = CASES["minus_sqrt"]
    proc = subprocess.run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", RUN[1], "--run-dir", str(save),
                           "--output", str(output), *flags], capture_output=True, text=True, env=small_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 rank(s)" in proc.stdout
    reference = averaged["minus_sqrt"][0] / "iter_0000008"
    for name in ("__0_0.distcp", "__1_0.distcp"):
        assert (output / "iter_0000008" / name).read_bytes() == (reference / name).read_bytes(), name
    from megatron_demix.checkpoint.torch_dist import read_metadata

    got, expected = read_metadata(output / "iter_0000008"), read_metadata(reference)  # .metadata also names its directory
    assert got.storage_data == expected.storage_data and got.state_dict_metadata == expected.state_dict_metadata


def test_selection_errors_name_the_flag(tmp_path):
    from megatron_demix.merge.io import MergeInputError
    from megatron_demix.merge.run_average import schedule_weights, select_iterations

    for i in (10, 20, 30, 45):
        (tmp_path / f"iter_{i:07d}").mkdir()
    assert select_iterations(tmp_path, start=15, min_interval=20) == [20, 45]
    assert select_iterations(tmp_path, end=30) == [10, 20, 30]
    with pytest.raises(MergeInputError, match="--end-iteration 40: .* has no iter_0000040 .*10, 20, 30, 45"):
        select_iterations(tmp_path, end=40)
    with pytest.raises(MergeInputError, match="--start-iteration 31 is after --end-iteration 30"):
        select_iterations(tmp_path, start=31, end=30)
    with pytest.raises(MergeInputError, match="'minus_sqrt' is unknown .*did you mean 'minus-sqrt'"):
        schedule_weights("minus_sqrt", 3)
