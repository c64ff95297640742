"""End to end: real `mpiexec -n 1/2/3` (and `srun --mpi=pmi2` in sbatch) merges of megatron-core checkpoints.

Every output is checked tensor by tensor against a weighted sum recomputed from whole input
tensors read by megatron-core (`check_tool.py`), and loaded into GPTModel at TP=1 and TP=2.
"""
from __future__ import annotations

import json
import subprocess

import pytest
import torch

from merge_helpers import HERE, PYTHON, REPO, RUN, small_env, torchrun

from tests.conftest import sbatch_and_wait

pytestmark = pytest.mark.mpi

# name: (ranks, [(checkpoint, weight)], extra flags, weights after normalisation)
CASES = {
    "n1": (1, [("A", 1), ("B", 3)], [], [0.25, 0.75]),
    "n2_verify": (2, [("A", 1), ("B", 3)], ["--verify"], [0.25, 0.75]),
    "n3_bf16_mixed": (3, [("A", 1), ("B", 2), ("C", 1)], ["--dtype", "bf16"], [0.25, 0.5, 0.25]),
    "n2_tp1_layout_first": (2, [("C", 2), ("A", 1), ("B", 1)], [], [0.5, 0.25, 0.25]),
    "n2_task_arithmetic": (2, [("A", 0.7), ("B", -0.2)],
                           ["--method", "task_arithmetic", "--base", "BASE", "--scale", "0.5", "--no-normalize"], [0.7, -0.2]),
}


@pytest.fixture(scope="module")
def runs(checkpoints, mpiexec, tmp_path_factory):
    """Run every case through the CLI under mpiexec, then check all outputs in one check_tool process."""
    out_root = tmp_path_factory.mktemp("merged")
    results, specs = {}, []
    for name, (ranks, inputs, flags, weights) in CASES.items():
        output = out_root / name
        flags = [str(checkpoints["BASE"]) if f == "BASE" else f for f in flags]
        args = [PYTHON, RUN[1], "--inputs", *[f"{checkpoints[c]}:{w}" for c, w in inputs], "--output", output, *flags]
        results[name] = (output, mpiexec(ranks, args, env=small_env(), cwd=REPO))
        specs.append(json.dumps({
            "name": name, "output": str(output), "inputs": [[str(checkpoints[c]), w] for (c, _), w in zip(inputs, weights)],
            "base": str(checkpoints["BASE"]) if "--base" in flags else None,
            "scale": 0.5 if "--scale" in flags else 1.0, "dtype": "bf16" if "bf16" in flags else "same",
        }))
    for name, (output, proc) in results.items():
        assert proc.returncode == 0, f"{name}: merge failed\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    check = subprocess.run([PYTHON, str(HERE / "check_tool.py"), *specs], capture_output=True, text=True, env=small_env(), cwd=REPO, timeout=300)
    assert check.returncode == 0, check.stderr[-5000:]
    reports = json.loads(check.stdout.strip().splitlines()[-1])
    return {name: (output, proc, reports[name]) for name, (output, proc) in results.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_every_tensor_equals_the_weighted_sum(runs, case):
    output, proc, report = runs[case]
    assert report["keys"] >= 8 and report["missing"] == []  # embedding, 6 layer-stacked, final norm
    assert report["mismatches"] == [], f"{case}: {report['mismatches'][:5]}"
    assert report["dtypes"] == (["torch.bfloat16"] if "bf16" in case else ["torch.float32"])


def test_output_is_a_megatron_save_root(runs):
    output, proc, _ = runs["n2_verify"]
    assert (output / "latest_checkpointed_iteration.txt").read_text().strip() == "10"
    files = sorted(p.name for p in (output / "iter_0000010").iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp", "common.pt", "merge.json", "metadata.json"]
    provenance = json.loads((output / "iter_0000010" / "merge.json").read_text())
    assert provenance["weights"] == [0.25, 0.75] and provenance["method"] == "linear" and provenance["ranks"] == 2
    common = torch.load(output / "iter_0000010" / "common.pt", weights_only=False)
    assert common["demix_merge"]["inputs"] == provenance["inputs"]
    assert not list(output.parent.glob(".n2_verify*")), "temporary directory left behind"


def test_progress_and_summary_from_rank_0(runs):
    _, proc, _ = runs["n3_bf16_mixed"]
    assert "MB/s" in proc.stdout and "ETA" in proc.stdout
    for rank in range(3):
        assert f"rank {rank}:" in proc.stdout and "peak RSS" in proc.stdout
    _, proc, _ = runs["n2_verify"]
    assert proc.stdout.count("verified") == 2


@pytest.mark.parametrize("tp", [1, 2])
def test_merged_checkpoint_gives_the_logits_of_the_in_memory_average(runs, checkpoints, tp, tmp_path):
    output, _, _ = runs["n1"]
    logits = tmp_path / "logits.pt"
    torchrun(tp, ["logits", "--tp", tp, "--merged", output / "iter_0000010", "--out", logits,
                  "--ckpt", f"{checkpoints['A'] / 'iter_0000010'}:0.25", "--ckpt", f"{checkpoints['B'] / 'iter_0000010'}:0.75"])
    result = torch.load(logits)
    assert result["merged"].shape[-1] == 1024 // tp
    assert torch.equal(result["merged"], result["averaged"])


def _rank_exits(proc) -> list[str]:
    return sorted(line for line in proc.stdout.splitlines() if line.startswith("exit of rank"))


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_bad_input_fails_on_every_rank_and_leaves_nothing(damaged_copy, checkpoints, mpiexec, tmp_path, damage):
    """truncate: caught by the plan on rank 0; corrupt: caught while reading, on whichever rank owns the chunk.
    Either way a damaged input: every rank exits 2 (bad input)."""
    broken = damaged_copy("A")
    data = sorted((broken / "iter_0000010").glob("*.distcp"))[0]
    raw = bytearray(data.read_bytes())
    if damage == "truncate":
        data.write_bytes(raw[: len(raw) // 2])
    else:
        data.write_bytes(bytes(len(raw)))  # same length, every chunk unreadable
    output = tmp_path / "out"
    script = (f"{PYTHON} {RUN[1]} --inputs {broken}:1 {checkpoints['B']}:1 --output {output};"
              ' echo "exit of rank $PMI_RANK: $?"')
    proc = mpiexec(2, ["sh", "-c", script], env=small_env(), cwd=REPO)
    assert _rank_exits(proc) == ["exit of rank 0: 2", "exit of rank 1: 2"], proc.stdout + proc.stderr
    assert data.name in proc.stderr and ("truncated" in proc.stderr if damage == "truncate" else "unreadable" in proc.stderr)
    assert not output.exists() and list(tmp_path.glob(".out*")) == []


def test_job_script_runs_outside_slurm_with_mpiexec(runs, checkpoints, tmp_path):
    """What the local executor does: `bash slurm/merge.sh` without SLURM_JOB_ID, DEMIX_NTASKS ranks."""
    output = tmp_path / "out"
    env = {k: v for k, v in small_env().items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(REPO / "slurm" / "merge.sh"), "--inputs", f"{checkpoints['A']}:1", f"{checkpoints['B']}:3",
                           "--output", str(output)], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**env, "DEMIX_NTASKS": "2", "DEMIX_PYTHON": PYTHON})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 rank(s)" in proc.stdout
    reference = runs["n2_verify"][0] / "iter_0000010"
    for name in ("__0_0.distcp", "__1_0.distcp"):
        assert (output / "iter_0000010" / name).read_bytes() == (reference / name).read_bytes()


@pytest.mark.slurm
@pytest.mark.parametrize("mpi_plugin", ["pmi2", "none"])
def test_srun_in_sbatch(slurm_cluster, runs, checkpoints, tmp_path, mpi_plugin):
    """srun --mpi=pmi2 -n 2 gives the same data files as mpiexec -n 2; plain srun is refused, nothing merged."""
    output, log = tmp_path / "out", tmp_path / "job.out"
    submit, states = sbatch_and_wait(
        ["-n", "2", "-t", "10", f"--output={log}", REPO / "slurm" / "merge.sh",
         "--inputs", f"{checkpoints['A']}:1", f"{checkpoints['B']}:3", "--output", output],
        cwd=REPO, env={**small_env(), "DEMIX_SRUN_MPI": mpi_plugin, "DEMIX_PYTHON": PYTHON},
    )
    text = log.read_text()
    if mpi_plugin == "pmi2":
        assert list(states.values()) == ["COMPLETED 0:0"], submit.stderr + text
        reference = runs["n2_verify"][0] / "iter_0000010"
        for name in ("__0_0.distcp", "__1_0.distcp"):
            assert (output / "iter_0000010" / name).read_bytes() == (reference / name).read_bytes()
    else:
        assert list(states.values())[0].startswith("FAILED"), (states, text)
        # Each task that reaches the check refuses; when one exits first SLURM may end the other before it
        # prints (seen at load average 12), so at least one refusal and no task that went on to merge.
        assert 1 <= text.count("srun --mpi=pmi2") <= 2 and "rank(s)" not in text, text
        assert not output.exists()
