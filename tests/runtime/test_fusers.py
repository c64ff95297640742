"""megatron-core's torch.compile fusers are off in every process that imports megatron_demix first (runtime/fusers.py)."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

PROBE = """
import sys
{first}
import megatron.core.models.gpt
import megatron.core.jit as jit
from megatron.core.fusions import fused_bias_swiglu
print(jit.jit_fuser is jit.noop_decorator, hasattr(fused_bias_swiglu.swiglu, "__wrapped__"), "torch._inductor" in sys.modules)
"""


def _probe(first: str) -> list[str]:
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", PROBE.format(first=first)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split()


def test_megatron_decorates_plain_functions_and_never_imports_inductor():
    fuser_off, compiled, inductor = _probe("import megatron_demix")
    assert (fuser_off, compiled) == ("True", "False")  # the functions as written
    # From 0.19 megatron-core's MoE router compiles a class at import, which loads inductor anyway.
    from importlib.metadata import version

    assert inductor == str(tuple(map(int, version("megatron-core").split(".")[:2])) >= (0, 19))


def test_without_megatron_demix_first_megatron_compiles_them():
    # The control: megatron-core on its own wraps them with torch.compile (and imports inductor).
    assert _probe("") == ["False", "True", "True"]
