"""Atomic outputs: write under a temporary name next to the target, rename when complete.

A killed job therefore leaves either the previous state or the finished output, never a half
file, and re-running it starts clean (stale temporaries are removed first).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

TMP_SUFFIX = ".tmp-demix"


def _temporary_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}{TMP_SUFFIX}")


def remove_stale_temporaries(target: Path) -> None:
    """Delete temporaries a killed writer of `target` left behind."""
    target = Path(target)
    if target.parent.is_dir():
        for stale in target.parent.glob(f".{target.name}.*{TMP_SUFFIX}"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(target)
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
    tmp = _temporary_name(target)
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
