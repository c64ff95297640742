"""Atomic outputs: write under a temporary name next to the target, rename when complete.

A killed job therefore leaves either the previous state or the finished output, never a half
file, and re-running it starts clean (stale temporaries are removed first).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

from megatron_demix.runtime.errors import BAD_INPUT

TMP_SUFFIX = ".tmp-demix"


class StateFileError(ValueError):
    """A JSON file the project wrote (jobs.json, settings.json, a result) that no longer parses: the message
    names it, what it holds and what to do (exit status 2)."""
    exit_status = BAD_INPUT


def read_json(path: Path, what: str, fix: str):
    """The JSON value in `path`; a truncated or damaged file raises StateFileError:
    `path: damaged (reason at line L column C): it holds <what>; <fix>`."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        where = f", line {error.lineno} column {error.colno}" if isinstance(error, json.JSONDecodeError) else ""
        reason = error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8 text"
        raise StateFileError(f"{path}: damaged ({reason}{where}): it holds {what}; {fix}") from None


def read_json_lines(path: Path, what: str, fix: str) -> list:
    """The JSON value of every non-blank line of `path` (JSON lines); errors as read_json's, with the line."""
    values = []
    for number, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        if line.strip():
            try:
                values.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise StateFileError(f"{path}: line {number} damaged ({error.msg}): it holds {what}; {fix}") from None
    return values


def temporary_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}{TMP_SUFFIX}")


def write_failure(path: Path, error: BaseException) -> str | None:
    """`path: cannot write (reason); fix` when `error` comes from the file system refusing a write (full,
    read-only, not permitted), else None (a bug: keep its traceback). torch.save on a full disk raises
    a RuntimeError ("enforce fail ... unexpected pos"), not an OSError, hence the free-space check."""
    code = error.errno if isinstance(error, OSError) else None
    existing = next((p for p in (Path(path), *Path(path).parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    if code in (errno.ENOSPC, errno.EDQUOT) or free < 1 << 20:
        reason = error.strerror if code else "no space left on device"
        fix = f"the file system is full ({free / 2**20:.1f} MiB free): free space there or write elsewhere"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM) or not os.access(existing, os.W_OK):
        reason = error.strerror if code else str(error).strip().splitlines()[0]
        fix = "the location is not writable: choose another directory"
    else:
        return None
    return f"{path}: cannot write ({reason}); {fix}"


def remove_stale_temporaries(target: Path) -> None:
    """Delete temporaries a killed writer of `target` left behind."""
    target = Path(target)
    if target.parent.is_dir():
        for stale in target.parent.glob(f".{target.name}.*{TMP_SUFFIX}"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode())


def atomic_write_json(target: Path, obj) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_directory(target: Path, overwrite: bool = False):
    """Yield a fresh temporary directory that becomes `target` when the block ends without error.

    On error the temporary directory is removed and `target` is untouched. With `overwrite`, an
    existing `target` is replaced (moved aside first, deleted after the rename).
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; remove it or pass --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = temporary_name(target)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}{TMP_SUFFIX}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
