"""One exit-code convention (runtime/errors.py): 2 bad input, 1 a failure while running, bugs keep their traceback."""
from __future__ import annotations

import subprocess

import pytest

from megatron_demix.checkpoint.layout import CheckpointError
from megatron_demix.cluster.executor import JobFailed
from megatron_demix.config.base import ConfigError
from megatron_demix.eval.config import EvalInputError
from megatron_demix.merge.io import MergeError, MergeInputError
from megatron_demix.runtime.errors import BAD_INPUT, FAILED, run_command
from tests.conftest import VENV_BIN


def _raise(error):
    raise error


@pytest.mark.parametrize("error, code", [
    (ConfigError("exp.yaml: training.lr: must be a number"), BAD_INPUT),
    (CheckpointError("--load x: no checkpoint"), BAD_INPUT),
    (JobFailed("job train (12): tasks failed"), FAILED),
    (EvalInputError("--manifest m.jsonl line 2: not JSON"), BAD_INPUT),  # a ConfigError's status, inherited
    (MergeError("out/iter_1: cannot write"), FAILED),
    (MergeInputError("--inputs a:x: not a number"), BAD_INPUT),  # a subclass that says its own
])
def test_known_errors_become_one_line_and_their_code(capsys, error, code):
    assert run_command("demix x", _raise, error) == code
    assert capsys.readouterr().err == f"demix x: error: {error}\n"
    assert run_command("demix x", _raise, error, quiet=True) == code and capsys.readouterr().err == ""


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ValueError, match="a bug"):
        run_command("demix x", _raise, ValueError("a bug"))


def test_demix_command_exit_codes(tmp_path):
    bad = tmp_path / "exp.yaml"
    bad.write_text("name: x\nwork_dir: w\ndatasets: []\ntraining: {lr: fast}\n")
    result = subprocess.run([str(VENV_BIN / "demix"), "check", "--config", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"demix check: error: {bad}: ")


def test_exit_process_keeps_the_code_and_leaves_the_objects_frozen():
    import sys

    probe = ("import atexit, gc; from megatron_demix.runtime.errors import exit_process;"
             " atexit.register(lambda: print(gc.get_freeze_count() > 1000)); exit_process(3)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (3, "True"), result.stderr
