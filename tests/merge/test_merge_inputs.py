"""The merge in one process (no MPI): argument and input checks, copies of non-float state, legacy, mixtures.

Every bad input must raise a MergeError naming the input and the key or file, and leave neither
the output nor a temporary directory behind.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml

from megatron_demix.checkpoint.layout import iteration_dir, write_tracker
from megatron_demix.config.base import ConfigError, build
from megatron_demix.merge.config import MergeConfig
from megatron_demix.merge.io import MergeError, require_finite
from megatron_demix.merge.engine import check_weights, merge
from megatron_demix.merge.methods import get_method
from megatron_demix.merge.mpi import LaunchError, SerialComm, check_launch
from megatron_demix.merge.plan import balance
from merge_helpers import REPO, RUN, small_env

from tests.filesystems import tmpfs

QUIET = dict(comm=SerialComm(), log=lambda line: None)
LINEAR, TASK = get_method("linear"), get_method("task_arithmetic")


def leaves_nothing(output: Path) -> bool:
    return not output.exists() and not list(output.parent.glob(f".{output.name}.*"))


def edit_metadata(checkpoint: Path, change) -> None:
    file = checkpoint / "iter_0000010" / ".metadata"
    metadata = pickle.loads(file.read_bytes())
    change(metadata)
    file.write_bytes(pickle.dumps(metadata))


# --- weights, methods, balance -----------------------------------------------------------------

@pytest.mark.parametrize("weights, method, normalize, message", [
    ([1.0], LINEAR, True, "got 1 weight(s) for 2 input(s)"),
    ([1.0, float("nan")], LINEAR, True, "weight nan is not a finite number"),
    ([1.0, -0.5], LINEAR, True, "negative; only --method task_arithmetic"),
    ([0.0, 0.0], LINEAR, True, "all weights are 0"),
    ([1.0, -1.0], TASK, True, "sum to 0 and cannot be normalised; pass --no-normalize"),
])
def test_bad_weights(weights, method, normalize, message):
    with pytest.raises(MergeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_weights(weights, ["input 1 (a)", "input 2 (b)"], method, normalize)


def test_weights_normalised_unless_told():
    assert check_weights([1, 3], ["a", "b"], LINEAR, True) == [0.25, 0.75]
    assert check_weights([1, -0.5], ["a", "b"], TASK, False) == [1.0, -0.5]


def test_unknown_method_lists_the_choices():
    with pytest.raises(ValueError, match="did you mean 'linear'.*linear, task_arithmetic"):
        get_method("linearr")


def test_balance_by_bytes():
    costs = [100, 1, 50, 50, 7, 3, 90, 10]
    assignment = balance(costs, 3)
    assert sorted(i for share in assignment for i in share) == list(range(len(costs)))
    loads = [sum(costs[i] for i in share) for share in assignment]
    assert max(loads) <= math.ceil(sum(costs) / 3 * 4 / 3)


def test_plain_srun_is_refused():
    srun_env = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "4"}
    with pytest.raises(LaunchError, match="srun --mpi=pmi2"):
        check_launch(1, srun_env)
    check_launch(4, srun_env)
    check_launch(1, {"SLURM_NTASKS": "4"})  # the batch script itself (no step): one process is fine


# --- bad checkpoints and arguments -------------------------------------------------------------

def _break_missing_file(ckpt):
    (ckpt / "iter_0000010" / "__1_0.distcp").unlink()
    return r"input 1 .*data file .*__1_0.distcp is missing \(it holds key "


def _break_truncated_file(ckpt):
    data = ckpt / "iter_0000010" / "__1_0.distcp"
    data.write_bytes(data.read_bytes()[:-10])
    return r"input 1 .*__1_0.distcp is truncated .*key "


def _break_missing_key(ckpt):
    edit_metadata(ckpt, lambda m: m.state_dict_metadata.pop("decoder.final_layernorm.weight"))
    return r"input 2 .*: lacks 1 key\(s\) of input 1 .*: decoder.final_layernorm.weight"


def _break_shape(ckpt):
    def change(m):
        key = "decoder.final_layernorm.weight"
        m.state_dict_metadata[key] = dataclasses.replace(m.state_dict_metadata[key], size=torch.Size([65]))
    edit_metadata(ckpt, change)
    return r"input 2 .*: key decoder.final_layernorm.weight has shape \(65,\), input 1 .* has \(64,\)"


def _break_dtype(ckpt):
    def change(m):
        md = m.state_dict_metadata["decoder.final_layernorm.weight"]
        m.state_dict_metadata["decoder.final_layernorm.weight"] = dataclasses.replace(
            md, properties=dataclasses.replace(md.properties, dtype=torch.bfloat16))
    edit_metadata(ckpt, change)
    return r"input 2 .*: key decoder.final_layernorm.weight is torch.bfloat16, input 1 .* has torch.float32"


def _break_not_a_checkpoint(ckpt):
    (ckpt / "latest_checkpointed_iteration.txt").unlink()
    (ckpt / "iter_0000010" / "metadata.json").unlink()
    return r"input 2 .*: not a Megatron checkpoint"


@pytest.mark.parametrize("damage", [_break_missing_file, _break_truncated_file, _break_missing_key, _break_shape,
                                    _break_dtype, _break_not_a_checkpoint])
def test_bad_checkpoint_is_named_and_leaves_nothing(checkpoints, damaged_copy, tmp_path, damage):
    broken = damaged_copy("B")
    message = damage(broken)
    # file errors name the broken input wherever it is; key/shape/dtype errors name the one that differs from the first
    inputs = [broken, checkpoints["A"]] if damage in (_break_missing_file, _break_truncated_file) else [checkpoints["A"], broken]
    output = tmp_path / "out"
    with pytest.raises(MergeError, match=message):
        merge(inputs, [1, 1], output, **QUIET)
    assert leaves_nothing(output)


@pytest.mark.parametrize("kwargs, message", [
    (dict(weights=[1, -1]), "input 2 .*weight -1.0 is negative"),
    (dict(weights=[0, 0]), "all weights are 0"),
    (dict(weights=[1]), r"got 1 weight\(s\) for 2 input\(s\)"),
    (dict(weights=[1, float("nan")]), "weight nan is not a finite number"),
    (dict(settings=MergeConfig(method="task_arithmetic")), "needs --base DIR"),
    (dict(base="BASE"), "--base is only used by --method task_arithmetic"),
])
def test_bad_arguments_leave_nothing(checkpoints, tmp_path, kwargs, message):
    kwargs = {"weights": [1, 1], **kwargs}
    if kwargs.get("base") == "BASE":
        kwargs["base"] = checkpoints["BASE"]
    output = tmp_path / "out"
    with pytest.raises(MergeError, match=message):
        merge([checkpoints["A"], checkpoints["B"]], output=output, **kwargs, **QUIET)
    assert leaves_nothing(output)
    # merge() takes its settings as a MergeConfig: a dtype no registry knows stops there, naming the choices.
    with pytest.raises(ConfigError, match="'int8' is not one of 'same', 'fp32', 'bf16', 'fp16'"):
        build(MergeConfig, {"dtype": "int8"}, "merge")


def test_existing_output_needs_overwrite_and_a_stale_temporary_is_cleared(checkpoints, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    with pytest.raises(MergeError, match=f"--output {output} already exists; remove it or pass --overwrite"):
        merge([checkpoints["A"]], [1], output, **QUIET)
    stale = tmp_path / ".out.99999.tmp-demix"  # what a killed merge leaves
    (stale / "iter_0000010").mkdir(parents=True)
    summary = merge([checkpoints["A"]], [1], output, overwrite=True, **QUIET)
    assert summary.bytes_written > 0 and (output / "iter_0000010" / ".metadata").exists() and not stale.exists()


def test_merge_of_one_input_reproduces_it_byte_for_byte_per_chunk(checkpoints, tmp_path):
    from megatron_demix.checkpoint.torch_dist import ChunkReader, read_metadata

    output = tmp_path / "out"
    merge([checkpoints["A"]], [2.0], output, verify=True, **QUIET)  # normalised: weight 1
    source, merged = checkpoints["A"] / "iter_0000010", output / "iter_0000010"
    ref_md, out_md = read_metadata(source), read_metadata(merged)
    assert set(out_md.state_dict_metadata) == set(ref_md.state_dict_metadata)
    with ChunkReader(source, ref_md.storage_data) as a, ChunkReader(merged, out_md.storage_data) as b:
        for index in out_md.storage_data:
            if index.offset is None:
                assert a.raw(index) == b.raw(index)
            else:
                assert torch.equal(a.tensor(index), b.tensor(index))


# --- non-floating tensors and objects: synthetic checkpoints written by torch DCP itself ------

def _dcp_checkpoint(root: Path, weight: torch.Tensor, steps: torch.Tensor, blob: bytes, rng_key: str = "rng_state/shard_0.0_1.1") -> Path:
    """A torch_dist checkpoint written by torch DCP itself, shaped like the trainer's: a weight, an
    integer tensor, an `_extra_state` object, optimizer state and an RNG object keyed by its layout."""
    directory = iteration_dir(root, 3)
    directory.mkdir(parents=True)
    state = {"w": weight, "steps": steps, "w._extra_state": io.BytesIO(blob), "optimizer.state.exp_avg.w": weight * 0,
             rng_key: io.BytesIO(b"rng")}
    dcp.save(state, checkpoint_id=str(directory), no_dist=True)
    (directory / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist", "sharded_backend_version": 1}))
    torch.save({"iteration": 3, "optimizer": {"param_groups": []}}, directory / "common.pt")
    write_tracker(root, 3)
    return root


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_integers_are_copied_objects_come_from_the_first_input(tmp_path):
    a = _dcp_checkpoint(tmp_path / "a", torch.ones(4, 3), torch.arange(5), b"first")
    # saved at another TP/PP: the RNG object has another key, which must not stop the merge
    b = _dcp_checkpoint(tmp_path / "b", torch.full((4, 3), 3.0), torch.arange(5), b"second", "rng_state/shard_0.1_2.2")
    output = tmp_path / "out"
    merge([a, b], [1, 1], output, MergeConfig(dtype="bf16"), **QUIET)
    reader = dcp.FileSystemReader(str(output / "iter_0000003"))
    assert sorted(reader.read_metadata().state_dict_metadata) == ["rng_state/shard_0.0_1.1", "steps", "w", "w._extra_state"]
    state = {"w": torch.empty(4, 3, dtype=torch.bfloat16), "steps": torch.empty(5, dtype=torch.int64), "w._extra_state": io.BytesIO()}
    dcp.load(state, storage_reader=reader, no_dist=True)  # the stock DCP reader accepts the output
    assert torch.equal(state["w"], torch.full((4, 3), 2.0, dtype=torch.bfloat16))
    assert torch.equal(state["steps"], torch.arange(5)) and state["w._extra_state"].getvalue() == b"first"
    common = torch.load(output / "iter_0000003" / "common.pt", weights_only=False)
    assert "optimizer" not in common and common["demix_merge"]["weights"] == [0.5, 0.5]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_integers_that_differ_are_an_error(tmp_path):
    a = _dcp_checkpoint(tmp_path / "a", torch.ones(2), torch.arange(5), b"x")
    b = _dcp_checkpoint(tmp_path / "b", torch.ones(2), torch.arange(5) + 1, b"x")
    with pytest.raises(MergeError, match=r"input 2 .*: key steps \(torch.int64.*differs from input 1"):
        merge([a, b], [1, 1], tmp_path / "out", **QUIET)
    assert leaves_nothing(tmp_path / "out")


# --- legacy mp_rank_* checkpoints ----------------------------------------------------------------

def _legacy_checkpoint(root: Path, seed: int, ranks=("mp_rank_00", "mp_rank_01")) -> Path:
    generator = torch.Generator().manual_seed(seed)
    for rank in ranks:
        model = {"embedding.word_embeddings.weight": torch.randn(8, 4, generator=generator),
                 "decoder.layers.0.mlp.linear_fc1.weight": torch.randn(6, 4, generator=generator).bfloat16(),
                 "decoder.layers.0.mlp.linear_fc1._extra_state": io.BytesIO(f"{rank}".encode()),
                 "position_ids": torch.arange(4)}
        target = iteration_dir(root, 5) / rank / "model_optim_rng.pt"
        target.parent.mkdir(parents=True)
        torch.save({"checkpoint_version": 3.0, "iteration": 5, "model": model, "optimizer": {"state": {}},
                    "opt_param_scheduler": {}, "rng_state": [{"seed": seed}]}, target)
    write_tracker(root, 5)
    return root


def test_legacy_rank_files_merged_one_by_one(tmp_path):
    a, b = _legacy_checkpoint(tmp_path / "a", 1), _legacy_checkpoint(tmp_path / "b", 2)
    output = tmp_path / "out"
    merge([a, b], [1, 3], output, verify=True, **QUIET)
    for rank in ("mp_rank_00", "mp_rank_01"):
        load = lambda root: torch.load(iteration_dir(root, 5) / rank / "model_optim_rng.pt", weights_only=False)
        got, sa, sb = load(output), load(a), load(b)
        assert "optimizer" not in got and got["rng_state"] == sa["rng_state"] and got["demix_merge"]["weights"] == [0.25, 0.75]
        for key in ("embedding.word_embeddings.weight", "decoder.layers.0.mlp.linear_fc1.weight"):
            expected = (sa["model"][key].float() * 0.25 + sb["model"][key].float() * 0.75).to(sa["model"][key].dtype)
            assert torch.equal(got["model"][key], expected), key
        assert torch.equal(got["model"]["position_ids"], torch.arange(4))
        assert got["model"]["decoder.layers.0.mlp.linear_fc1._extra_state"].getvalue() == rank.encode()


def test_legacy_inputs_with_other_parallelism_are_refused(tmp_path):
    a = _legacy_checkpoint(tmp_path / "a", 1)
    b = _legacy_checkpoint(tmp_path / "b", 2, ranks=("mp_rank_00",))
    with pytest.raises(MergeError, match="input 2 .*has rank files mp_rank_00/model_optim_rng.pt, input 1 .* has mp_rank_00"):
        merge([a, b], [1, 1], tmp_path / "out", **QUIET)


def test_legacy_and_torch_dist_do_not_mix(checkpoints, tmp_path):
    with pytest.raises(MergeError, match="input 2 .* is a legacy checkpoint but input 1 .* is torch_dist"):
        merge([checkpoints["A"], _legacy_checkpoint(tmp_path / "l", 1)], [1, 1], tmp_path / "out", **QUIET)


# --- mixtures from an experiment ------------------------------------------------------------------

def test_mixture_file_names_every_component(demo_config_dict, checkpoints, tmp_path):
    from megatron_demix.experiment import experiment_from_dict

    datasets = [{"name": "general", "role": "general", "builtin": "prose"}, {"name": "code", "builtin": "code"},
                {"name": "math", "builtin": "math"}]
    config = {**demo_config_dict, "work_dir": str(tmp_path / "work"), "datasets": datasets}
    experiment = experiment_from_dict(config)
    for name, source in (("code", "A"), ("math", "B"), ("base", "BASE")):
        experiment.paths.checkpoint(name).parent.mkdir(parents=True, exist_ok=True)
        experiment.paths.checkpoint(name).symlink_to(checkpoints[source])
    with pytest.raises(MergeError, match="2 components code, math; missing: math; unknown: prose"):
        experiment.proxy({"code": 1, "prose": 1})

    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "mixture.json").write_text(json.dumps({"weights": {"code": 1, "math": 3}, "trial": 7}))
    output = tmp_path / "proxy"
    proc = subprocess.run([*RUN, "--config", tmp_path / "experiment.yaml", "--mixture", tmp_path / "mixture.json",
                           "--output", output], capture_output=True, text=True, env=small_env(), cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    provenance = json.loads((output / "iter_0000010" / "merge.json").read_text())
    assert provenance["weights"] == [0.25, 0.75] and provenance["inputs"][0].endswith("A/iter_0000010")


# --- non-finite values and output file systems that refuse writes (issue 9) ---------------------

@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_refused_naming_input_and_tensor(tmp_path, bad):
    a = _dcp_checkpoint(tmp_path / "a", torch.ones(4, 3), torch.arange(5), b"x")
    diverged = torch.ones(4, 3)
    diverged[2, 1] = bad
    b = _dcp_checkpoint(tmp_path / "b", diverged, torch.arange(5), b"x")
    with pytest.raises(MergeError, match=rf"input 2 \({b}\): tensor w \(region at \(0, 0\)\) holds 1 non-finite value\(s\)"):
        merge([a, b], [1, 1], tmp_path / "out", **QUIET)
    assert leaves_nothing(tmp_path / "out")
    # as the base of task arithmetic too
    with pytest.raises(MergeError, match=rf"base \({b}\): tensor w .*non-finite"):
        merge([a], [1], tmp_path / "out", MergeConfig(method="task_arithmetic"), base=b, **QUIET)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_merge_that_overflows_the_output_dtype_is_refused(tmp_path):
    a = _dcp_checkpoint(tmp_path / "a", torch.full((4, 3), 1e5), torch.arange(5), b"x")
    with pytest.raises(MergeError, match=r"the merge into torch.float16: tensor w .*non-finite"):
        merge([a], [1], tmp_path / "out", MergeConfig(dtype="fp16"), **QUIET)
    assert leaves_nothing(tmp_path / "out")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_finite_check_takes_the_exact_test_when_the_sum_is_not_finite(dtype):
    """`require_finite` trusts a finite sum; one that overflows (finite values) or cancels (inf - inf) is checked value by value."""
    big = torch.finfo(dtype).max
    assert require_finite(torch.tensor([big, big, big], dtype=dtype), "x", "w").dtype == dtype  # sum overflows: still accepted
    for values, bad in (([big, float("inf"), float("-inf")], 2), ([1.0, float("nan"), 2.0], 1), ([float("-inf")] * 3, 3)):
        with pytest.raises(MergeError, match=rf"x: tensor w holds {bad} non-finite"):
            require_finite(torch.tensor(values, dtype=dtype), "x", "w")


def test_legacy_input_with_nan_is_refused(tmp_path):
    a, b = _legacy_checkpoint(tmp_path / "a", 1), _legacy_checkpoint(tmp_path / "b", 2)
    target = iteration_dir(b, 5) / "mp_rank_01" / "model_optim_rng.pt"
    state = torch.load(target, weights_only=False)
    state["model"]["embedding.word_embeddings.weight"][0, 0] = float("nan")
    torch.save(state, target)
    with pytest.raises(MergeError, match=r"input 2 .*: tensor mp_rank_01/model_optim_rng.pt:model.embedding.word_embeddings.weight holds 1 non-finite"):
        merge([a, b], [1, 1], tmp_path / "out", **QUIET)
    assert leaves_nothing(tmp_path / "out")


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_nan_with_verify_is_one_line_naming_the_input_not_storage(tmp_path):
    """The command line: one error line, exit 2 (bad input), and not --verify's 'storage is unreliable'."""
    a = _dcp_checkpoint(tmp_path / "a", torch.ones(4, 3), torch.arange(5), b"x")
    b = _dcp_checkpoint(tmp_path / "b", torch.full((4, 3), float("nan")), torch.arange(5), b"x")
    result = subprocess.run([*RUN, "--inputs", f"{a}:1", f"{b}:1", "--output", tmp_path / "out", "--verify"],
                            capture_output=True, text=True, env=small_env(), timeout=120)
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]  # a NaN input is bad input
    assert f"input 2 ({b}): tensor w" in errors[0] and "12 non-finite" in errors[0] and "unreliable" not in result.stderr
    assert leaves_nothing(tmp_path / "out")


@pytest.mark.parametrize("size, read_only, message", [
    ("200k", False, "cannot write (no space left on device); the file system is full"),
    ("1m", True, "cannot write (Read-only file system); the location is not writable"),
])
def test_full_or_read_only_output_is_one_line(checkpoints, tmp_path, size, read_only, message):
    with tmpfs(tmp_path / "fs", size, read_only) as fs:
        result = subprocess.run([*RUN, "--inputs", f"{checkpoints['C']}:1", "--output", fs / "out"],
                                capture_output=True, text=True, env=small_env(), timeout=120)
        left = sorted(p.name for p in fs.iterdir())
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    assert result.returncode == 1 and len(errors) == 1 and message in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr and left == []


def test_tracker_naming_a_directory_without_metadata(checkpoints, damaged_copy, tmp_path):
    broken = damaged_copy("B")
    shutil.copytree(broken / "iter_0000010", broken / "iter_0000011")
    (broken / "iter_0000011" / ".metadata").unlink()
    write_tracker(broken, 11)
    with pytest.raises(MergeError, match=r"input 2 .*iter_0000011: has metadata.json but no .metadata.*iter_0000010 is complete: write 10 into"):
        merge([checkpoints["A"], broken], [1, 1], tmp_path / "out", **QUIET)
    assert leaves_nothing(tmp_path / "out")
