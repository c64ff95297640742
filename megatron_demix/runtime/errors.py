"""One exit-code convention for every command: 2 bad input or configuration, 1 a failure while running.

    exit_process(run_command("demix train", run, args))

A known error becomes one line `demix train: error: ...` on stderr; anything else is a bug and
keeps its traceback. An error class is known by its `exit_status` attribute (BAD_INPUT or FAILED),
set where the class is defined; a subclass inherits it.
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


class ConfigError(ValueError):
    """A bad experiment file or flag; the message names where and how to fix it (config/base.py raises it;
    here so that the runtime's own checks, below the config layer, raise it too)."""
    exit_status = BAD_INPUT


def run_command(name: str, function: Callable, *args, quiet: bool = False) -> int:
    """Run `function(*args)`: 0, or a known error as one line `name: error: ...` on stderr and its exit code
    (`quiet`: no line, e.g. on every rank but the first); bugs propagate."""
    try:
        function(*args)
    except Exception as error:
        code = getattr(type(error), "exit_status", None)  # set by every known error class
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
