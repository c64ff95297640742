"""The CPU compatibility layer: megatron-core's CUDA assumptions run on the CPU, nothing else changes."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import run_torchrun


def _python(code: str) -> subprocess.CompletedProcess:
    # A fresh interpreter: the layer patches torch for the life of the process.
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_cpu_compat_redirects_cuda_to_cpu():
    out = _python("""
        import torch
        from megatron_demix.runtime import device
        assert not device.is_gpu_host()
        device.install_cpu_compat(); device.install_cpu_compat()  # idempotent
        assert torch.cuda.current_device() == torch.device("cpu")
        stream = torch.cuda.current_stream()
        stream.wait_stream(torch.cuda.default_stream()); stream.wait_event(None)  # megatron-core 0.19 grad sync
        assert torch.zeros(2, device="cuda").device.type == "cpu"
        t = torch.ones(3)
        assert t.cuda() is t and t.to("cuda").device.type == "cpu"
        state = torch.cuda.get_rng_state(); a = torch.rand(1)
        torch.cuda.set_rng_state(state); assert torch.equal(torch.rand(1), a)
        from megatron.core.tensor_parallel.random import CudaRNGStatesTracker
        tracker = CudaRNGStatesTracker()
        tracker.add("model-parallel-rng", 5)
        with tracker.fork("model-parallel-rng"):
            torch.rand(1)
        print("ok", device.distributed_backend(), device.default_params_dtype())
    """)
    assert out.returncode == 0, out.stderr
    assert "ok gloo torch.float32" in out.stdout


TP_SCRIPT = """
import torch
from megatron_demix.config.base import build
from megatron_demix.model.config import ModelConfig, expand_preset
from megatron_demix.model.gpt import build_gpt_model
from megatron_demix.runtime.distributed import init_distributed
from megatron_demix.runtime.parallel import ParallelDims, initialize_model_parallel

if __name__ == "__main__":
    init_distributed()
    initialize_model_parallel(ParallelDims(2, 1, torch.distributed.get_world_size()), seed=7)
    model = build_gpt_model(build(ModelConfig, expand_preset({"preset": "tiny"}), "model"), vocab_size=500)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    tokens = torch.randint(0, 500, (4, 33))
    position_ids = torch.arange(32).expand(4, 32)
    losses = []
    for _ in range(15):
        loss = model(tokens[:, :-1], position_ids, None, labels=tokens[:, 1:]).mean()
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        losses.append(loss.item())
    if torch.distributed.get_rank() == 0:
        print(f"first={losses[0]:.4f} last={losses[-1]:.4f}")
    torch.distributed.destroy_process_group()
"""


def test_megatron_gpt_trains_with_tensor_parallel_on_gloo(tmp_path):
    script = tmp_path / "tp.py"
    script.write_text(TP_SCRIPT)
    out = run_torchrun(2, script)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("first="))
    first, last = (float(part.split("=")[1]) for part in line.split())
    assert last < first - 1.0
