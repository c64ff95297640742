"""GPU hosts get Megatron-LM's throughput defaults (issue 32), shown on a CPU host: the config objects a
GPU host would hand megatron-core (host kind forced), no host synchronisation between log intervals in
real training, the DataLoader's batches, resume across host kinds, the loud warning without TE.

    .venv/bin/python -m pytest -q tests/training/test_throughput.py
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import warnings

import numpy
import pytest
import torch
from train_helpers import REPO, check, torchrun, train_records, with_training

from megatron_demix.config.base import build, replace
from megatron_demix.model.config import ModelConfig, expand_preset
from megatron_demix.runtime import device
from megatron_demix.training.config import TrainingConfig

TOOL = REPO / "tests" / "training" / "throughput_tool.py"
FUSIONS = ("bias_activation_fusion", "bias_dropout_fusion", "masked_softmax_fusion", "persist_layer_norm",
           "gradient_accumulation_fusion", "apply_rope_fusion")


def _model(**changes) -> ModelConfig:
    return build(ModelConfig, {**expand_preset({"preset": "tiny"}), **changes}, "model")


def _megatron_configs(training: TrainingConfig, *, gpu: bool):
    """The TransformerConfig and DistributedDataParallelConfig this host kind builds for `training`."""
    from megatron_demix.model.gpt import transformer_config
    from megatron_demix.training.optimizer import ddp_config

    settings = device.throughput_settings(training, gpu=gpu)
    dtype = device.default_params_dtype("bf16" if gpu else "fp32")
    return transformer_config(_model(), 1, 1, dtype, settings, gpu=gpu), ddp_config(training, gpu=gpu)


def test_gpu_host_hands_megatron_core_megatron_lms_throughput_defaults():
    config, ddp = _megatron_configs(TrainingConfig(), gpu=True)
    # This host has neither Transformer Engine nor Apex: the two fusions that need them stay off
    # (megatron-core refuses apply_rope_fusion without TE); the rest are on, as in pretrain_gpt.
    assert {f: getattr(config, f) for f in FUSIONS} == {
        "bias_activation_fusion": True, "bias_dropout_fusion": True, "masked_softmax_fusion": True,
        "persist_layer_norm": True, "gradient_accumulation_fusion": False, "apply_rope_fusion": False}
    assert config.deallocate_pipeline_outputs and not config.use_cpu_initialization and config.bf16
    assert (ddp.use_distributed_optimizer, ddp.overlap_grad_reduce, ddp.overlap_param_gather, ddp.align_param_gather) == (True,) * 4
    with_te = device.throughput_settings(TrainingConfig(), gpu=True, transformer_engine=True)
    assert with_te.rope_fusion and with_te.gradient_accumulation_fusion
    assert (with_te.num_workers, with_te.pin_memory, with_te.ckpt_fully_parallel_save) == (2, True, True)


def test_cpu_host_runs_unfused_and_unoverlapped():
    config, ddp = _megatron_configs(TrainingConfig(), gpu=False)
    assert not any(getattr(config, f) for f in FUSIONS)
    assert config.deallocate_pipeline_outputs and config.use_cpu_initialization
    assert (ddp.use_distributed_optimizer, ddp.overlap_grad_reduce, ddp.overlap_param_gather) == (False,) * 3
    settings = device.throughput_settings(TrainingConfig(), gpu=False)
    assert (settings.num_workers, settings.pin_memory) == (0, False)


def test_megatron_lm_flags_turn_each_default_off():
    from megatron_demix.config.flags import flag_overrides
    from launch.train_component import parse_args

    args = parse_args(["--config", "x.yaml", "--component", "base", "--no-bias-swiglu-fusion", "--no-bias-dropout-fusion",
                       "--no-masked-softmax-fusion", "--no-persist-layer-norm", "--no-gradient-accumulation-fusion",
                       "--no-rope-fusion", "--no-overlap-grad-reduce", "--no-overlap-param-gather", "--num-workers", "0",
                       "--no-ckpt-fully-parallel-save"])
    training = replace(TrainingConfig(), where="command line", **flag_overrides(args, args.training_fields))
    config, ddp = _megatron_configs(training, gpu=True)
    assert not any(getattr(config, f) for f in FUSIONS)
    assert not ddp.overlap_grad_reduce and not ddp.overlap_param_gather
    settings = device.throughput_settings(training, gpu=True, transformer_engine=True)
    assert (settings.num_workers, settings.ckpt_fully_parallel_save, settings.rope_fusion) == (0, False, False)


def test_jit_fuser_kept_on_gpu_hosts_and_off_on_cpu_hosts():
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", """
import megatron_demix, torch
import megatron.core.jit as jit
from megatron_demix.runtime.fusers import configure_jit_fuser
assert jit.jit_fuser is jit.noop_decorator  # this (CPU) host: turned off at import
jit.enable_jit_fuser(); configure_jit_fuser(jit, gpu=True)
print(jit.jit_fuser is torch.compile)
configure_jit_fuser(jit, gpu=False)
print(jit.jit_fuser is jit.noop_decorator)
"""], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["True", "True"]


def test_gpu_host_without_transformer_engine_warns_once_loudly(monkeypatch):
    from megatron_demix.model.gpt import layer_spec

    monkeypatch.setattr(device, "_te_warned", False)
    with pytest.warns(device.TransformerEngineMissing, match="sequence x sequence score matrix"):
        spec = layer_spec(_model(), gpu=True)
    assert "transformer_engine" not in str(spec)  # the local spec
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        layer_spec(_model(), gpu=True)  # once per process
        monkeypatch.setattr(device, "_te_warned", False)
        layer_spec(_model(transformer_impl="local"), gpu=True)  # asked for: quiet
        layer_spec(_model(), gpu=False)  # CPU hosts always run the local spec
    assert not [w for w in again if issubclass(w.category, device.TransformerEngineMissing)]


def test_the_warning_passes_the_projects_warning_filters():
    """runtime/quiet.py hides megatron-core's own 'Transformer Engine is not installed'; this one still shows."""
    out = subprocess.run([sys.executable, "-c", """
import megatron_demix
from megatron_demix.config.base import build
from megatron_demix.model.config import ModelConfig
from megatron_demix.model.gpt import layer_spec
layer_spec(build(ModelConfig, {}, "model"), gpu=True)
"""], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "GPU host without Transformer Engine" in out.stderr and "model.transformer_impl: local" in out.stderr


def test_no_host_sync_between_log_intervals_and_workers_read_the_same_batches(tiny_config, tmp_path):
    """DP=2, 8 iterations, log every 4, two loader workers: every device-to-host read of a step falls on a
    log iteration; the losses equal those of the same run read without workers."""
    config = with_training(tiny_config, tmp_path, log_interval=4, num_workers=2)
    out = tmp_path / "syncs.json"
    check(torchrun(2, "syncs", "--config", config, "--save", tmp_path / "w2", "--out", out, script=TOOL))
    report = json.loads(out.read_text())
    reads = {int(k): v for k, v in report["reads"].items()}
    assert report["num_workers"] == 2 and sorted(reads) == list(range(1, 9))
    assert {it: n for it, n in reads.items() if it % 4} == dict.fromkeys((1, 2, 3, 5, 6, 7), 0), reads
    assert reads[4] > 0 and reads[8] > 0  # the log (and at 8 validation and the save) reads the loss
    check(torchrun(2, "--config", with_training(tiny_config, tmp_path, log_interval=4, num_workers=0),
                   "--component", "base", "--save", tmp_path / "w0", "--log-dir", tmp_path / "w0"))
    with_workers, without = train_records(tmp_path / "w2" / "logs"), train_records(tmp_path / "w0")
    assert [r["iteration"] for r in with_workers] == [r["iteration"] for r in without] == [4, 8]
    assert [r["loss"] for r in with_workers] == pytest.approx([r["loss"] for r in without], rel=1e-6)


def test_rng_state_restores_across_host_kinds():
    """A GPU host's state on a CPU host and a CPU host's on a GPU host: the host-independent generators
    come back, the device ones are not handed a foreign format; the same host kind restores them all."""
    from megatron.core import tensor_parallel

    from megatron_demix.training.run_state import restore_rng_state, rng_state

    tracker = tensor_parallel.get_cuda_rng_tracker()
    tracker.reset()
    tracker.states_ = {"model-parallel-rng": torch.get_rng_state()}
    cpu_made = rng_state()
    expected = (random.random(), numpy.random.rand(), torch.rand(1))
    philox = torch.zeros(16, dtype=torch.uint8)
    gpu_made = {**cpu_made, "host": "gpu", "cuda": philox, "tracker": {"model-parallel-rng": philox}}
    assert restore_rng_state(gpu_made) is False  # on this CPU host: CUDA states left alone
    assert (random.random(), numpy.random.rand(), torch.rand(1)) == expected
    assert tracker.get_states()["model-parallel-rng"].numel() != 16
    assert restore_rng_state(cpu_made, gpu=True) is False  # a GPU host reading a CPU checkpoint
    assert (random.random(), numpy.random.rand(), torch.rand(1)) == expected
    assert restore_rng_state({k: v for k, v in cpu_made.items() if k != "host"}) is True  # older, unlabelled: CPU
    tracker.reset()


def test_checkpoint_of_a_gpu_host_resumes_on_a_cpu_host(tiny_config, tmp_path):
    """Saved with a GPU host's RNG state (label and CUDA Philox format), resumed by a plain launch here."""
    config = with_training(tiny_config, tmp_path, save_interval=2)
    save = tmp_path / "save"
    check(torchrun(1, "save-as-gpu", "--config", config, "--save", save, "--stop-after", 4, script=TOOL))
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    check(torchrun(1, "--config", config, "--component", "base", "--save", save, "--log-dir", save / "logs"))
    iterations = [r["iteration"] for r in train_records(save / "logs")]
    assert iterations == [1, 2, 3, 4, 5, 6, 7, 8] and (save / "iter_0000008").is_dir()


def test_sigterm_to_every_process_with_loader_workers_still_saves(tiny_config, tmp_path):
    """SLURM signals every process of a step, loader workers included: they inherit the trainer's
    SIGTERM flag (forked at the first batch, after it is set), so none dies and the save completes."""
    import os
    import signal

    from train_helpers import LAUNCH

    process = subprocess.Popen(
        [sys.executable, str(LAUNCH), "--config", str(tiny_config), "--component", "base", "--train-iters", "1000",
         "--num-workers", "2", "--exit-signal-handler", "--save", str(tmp_path), "--log-dir", str(tmp_path)],
        cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    output = []
    for line in process.stdout:
        output.append(line)
        if "iter 2/1000" in line:
            os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=120) == 0, "".join(output)[-3000:]
    saved = int((tmp_path / "latest_checkpointed_iteration.txt").read_text())
    assert 2 <= saved < 1000 and f"SIGTERM: saved iteration {saved}" in "".join(output)
