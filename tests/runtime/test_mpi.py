"""Real mpiexec (mpich from the venv) with several ranks."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.mpi

SCRIPT = """
from mpi4py import MPI
comm = MPI.COMM_WORLD
total = comm.allreduce(comm.Get_rank() + 1)
if comm.Get_rank() == 0:
    print(f"world={comm.Get_size()} total={total}")
"""


@pytest.mark.parametrize("ranks", [2, 3])
def test_mpiexec_runs_ranks_that_communicate(mpiexec, tmp_path, ranks):
    script = tmp_path / "allreduce.py"
    script.write_text(SCRIPT)
    import sys

    out = mpiexec(ranks, [sys.executable, script])
    assert out.returncode == 0, out.stderr
    assert f"world={ranks} total={ranks * (ranks + 1) // 2}" in out.stdout
