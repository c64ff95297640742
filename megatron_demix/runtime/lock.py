"""One run per work dir: `<work_dir>/.lock`, held for the life of the process that runs in it.

    hold_work_dir(experiment.paths.root)    # returns, or raises WorkDirBusy naming the holder

Two runs in one work dir retrain and re-evaluate into the same files. The lock is the kernel's
(flock on an open file), so it goes with its process: a killed holder leaves nothing stuck, and a
lock file left by a dead process is simply taken again. The file's text (pid, host, command,
since) only says who holds it. flock reaches across hosts on NFSv4, and on Lustre mounted with
`-o flock`.
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

from megatron_demix.runtime.errors import ConfigError

LOCK_FILE = ".lock"

_held: dict[Path, int] = {}
"""Work dir -> the open descriptor holding its lock (closing it would release the lock)."""


class WorkDirBusy(ConfigError):
    """Another process runs in the work dir (exit 2, as for a bad flag: the fix is another work_dir, or waiting)."""


def hold_work_dir(root: str | os.PathLike) -> None:
    """Lock `root` for this process (again: a no-op), or raise WorkDirBusy naming the process that holds it."""
    root = Path(root).resolve()
    if root in _held:
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by the jobs this process starts
    except OSError as error:
        raise ConfigError(f"{root / LOCK_FILE}: cannot create the work dir's lock ({error.strerror}): choose a"
                          " writable work_dir (--work-dir)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _describe(os.pread(fd, 4096, 0))
        os.close(fd)
        raise WorkDirBusy(f"{root} is in use by {holder}: wait for it to end (or stop it), or give this run another"
                          " work_dir (--work-dir)") from None
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    _held[root] = fd


def _describe(text: bytes) -> str:
    try:
        r = json.loads(text)
        return f"pid {r['pid']} on {r['host']} ({r['command']}, since {r['since']})"
    except (ValueError, KeyError, TypeError):
        return "a process that is just starting (it has not written its pid yet)"
