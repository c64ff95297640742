"""Reading a checkpoint runs none of its code: `.metadata` is unpickled against an allow-list, `common.pt`, 0.19's
common-state object and legacy rank files with `weights_only=True` plus the objects Megatron checkpoints hold.
A crafted file whose pickle calls `os.system` is refused, named with the global it tried to load, and the command
never ran."""
from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from megatron_demix.checkpoint.layout import iteration_dir, write_tracker
from megatron_demix.checkpoint.torch_dist import CheckpointDataError, load_torch_file, read_common_state, read_metadata
from megatron_demix.merge.engine import merge
from megatron_demix.merge.io import MergeInputError
from megatron_demix.merge.mpi import SerialComm
from tests.conftest import REPO


class _RunsCommand:
    """Pickles as a call of os.system: what a crafted checkpoint file would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _torch_dist_dir(root, metadata: bytes):
    directory = iteration_dir(root, 1)
    directory.mkdir(parents=True)
    (directory / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist", "sharded_backend_version": 1}))
    (directory / ".metadata").write_bytes(metadata)
    (directory / "__0_0.distcp").write_bytes(b"")
    write_tracker(root, 1)
    return directory


def test_crafted_metadata_is_refused_by_export_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    directory = _torch_dist_dir(tmp_path / "ckpt", pickle.dumps(_RunsCommand(marker)))
    with pytest.raises(CheckpointDataError, match=r"\.metadata: refused: it would load posix\.system"):
        read_metadata(directory)
    result = subprocess.run([sys.executable, "-m", "megatron_demix.cli", "export", "--checkpoint", str(tmp_path / "ckpt"),
                             "--output", str(tmp_path / "hf")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert not marker.exists()
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "error" in line]  # (triton's exit noise: nanobind leaks)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"demix export: error: {directory / '.metadata'}: refused: it would load posix.system")
    assert not (tmp_path / "hf").exists()


def test_crafted_common_state_is_refused_naming_the_file(tmp_path):
    marker = tmp_path / "ran"
    directory = tmp_path / "iter"
    directory.mkdir()
    torch.save({"iteration": 1, "args": _RunsCommand(marker)}, directory / "common.pt")
    with pytest.raises(CheckpointDataError, match=rf"{directory / 'common.pt'}: refused: it would load posix\.system"):
        read_common_state(directory)
    assert not marker.exists()


def _legacy(root, seed: int, extra=None):
    state = {"checkpoint_version": 3.0, "iteration": 5, "model": {"w": torch.randn(4, 4, generator=torch.Generator().manual_seed(seed))},
             "rng_state": [{"random_rng_state": random.getstate(), "np_rng_state": np.random.get_state(),
                            "torch_rng_state": torch.get_rng_state()}],
             "args": argparse.Namespace(seed=seed, params_dtype=torch.bfloat16), **(extra or {})}
    target = iteration_dir(root, 5) / "mp_rank_00" / "model_optim_rng.pt"
    target.parent.mkdir(parents=True)
    torch.save(state, target)
    write_tracker(root, 5)
    return root


def test_crafted_legacy_rank_file_is_refused_by_the_merge(tmp_path):
    marker = tmp_path / "ran"
    good, bad = _legacy(tmp_path / "a", 1), _legacy(tmp_path / "b", 2, {"evil": _RunsCommand(marker)})
    with pytest.raises(MergeInputError, match=r"input 2 .*mp_rank_00/model_optim_rng\.pt: refused: it would load posix\.system"):
        merge([good, bad], [1, 1], tmp_path / "out", comm=SerialComm(), log=lambda line: None)
    assert not marker.exists() and not (tmp_path / "out").exists()
    merged = merge([good, _legacy(tmp_path / "c", 3)], [1, 1], tmp_path / "ok", comm=SerialComm(), log=lambda line: None)
    assert merged is not None  # Megatron-LM's Namespace args and numpy/torch RNG state load under the allow-list


def test_megatron_objects_load_and_nothing_else(tmp_path):
    from megatron.core.transformer.enums import AttnBackend

    buffer = io.BytesIO()
    torch.save({"args": argparse.Namespace(attention_backend=AttnBackend.auto), "extra": io.BytesIO(b"te"),
                "np": np.random.get_state()}, buffer)
    buffer.seek(0)
    state = load_torch_file(buffer, "in memory")
    assert state["args"].attention_backend is AttnBackend.auto and state["extra"].getvalue() == b"te"
    buffer = io.BytesIO()
    torch.save({"fn": print}, buffer)
    buffer.seek(0)
    with pytest.raises(CheckpointDataError, match="in memory: refused: it would load builtins.print"):
        load_torch_file(buffer, "in memory")
