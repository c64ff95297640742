"""One exit-code convention for every command: 2 bad input or configuration, 1 a failure while running.

    exit_process(run_command("demix train", run, args))

A known error becomes one line `demix train: error: ...` on stderr; anything else is a bug and
keeps its traceback. Error classes are named by module so that checking them imports nothing:
an error of a class can only have been raised once its module was imported.
"""
from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from typing import NoReturn

BAD_INPUT = 2
"""Exit status for a bad file, flag or configuration: the user fixes the input and runs again."""
FAILED = 1
"""Exit status for a failure while running (a job failed, a daemon is missing)."""

_ERRORS: dict[int, tuple[tuple[str, str], ...]] = {
    BAD_INPUT: (
        ("megatron_demix.config.base", "ConfigError"),
        ("megatron_demix.checkpoint.layout", "CheckpointError"),
        ("megatron_demix.data.readers", "DataError"),
        ("megatron_demix.data.tokenizer", "TokenizerError"),
        ("megatron_demix.merge.io", "MergeInputError"),
        ("megatron_demix.hf.config_map", "ConversionError"),
        ("megatron_demix.runtime.files", "StateFileError"),
    ),
    FAILED: (
        ("megatron_demix.cluster.executor", "JobFailed"),
        ("megatron_demix.cluster.local_slurm", "LocalSlurmError"),
        ("megatron_demix.merge.mpi", "LaunchError"),
        ("megatron_demix.merge.io", "MergeError"),
        ("megatron_demix.training.trainer", "TrainingDiverged"),
        ("megatron_demix.data.prepare", "PrepareFailed"),
        ("megatron_demix.training.run_state", "SaveFailed"),
        ("megatron_demix.search.driver", "SearchStopped"),
        ("megatron_demix.search.evaluate", "EvaluationFailed"),
    ),
}


def exit_code(error: BaseException) -> int | None:
    """BAD_INPUT or FAILED for a known error, None for anything else (a bug)."""
    for code, names in _ERRORS.items():
        known = tuple(getattr(sys.modules[module], name) for module, name in names if module in sys.modules)
        if known and isinstance(error, known):
            return code
    return None


def run_command(name: str, function: Callable, *args, quiet: bool = False) -> int:
    """Run `function(*args)`: 0, or a known error as one line `name: error: ...` on stderr and its exit code
    (`quiet`: no line, e.g. on every rank but the first); bugs propagate."""
    try:
        function(*args)
    except Exception as error:
        code = exit_code(error)
        if code is None:
            raise
        if not quiet:
            print(f"{name}: error: {error}", file=sys.stderr, flush=True)
        return code
    return 0


def exit_process(code: int) -> NoReturn:
    """End a command's process with `code`, without the cycle collector walking every object first: at
    shutdown it would visit all of torch's and megatron-core's (about 0.5 s per process on the 2-core CI
    machine, of every training, evaluation and task process). Frozen objects are left to the OS."""
    gc.freeze()
    sys.exit(code)
