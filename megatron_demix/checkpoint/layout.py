"""Megatron-LM's checkpoint directory layout, shared by the trainer, the merge tool and eval.

    <save>/latest_checkpointed_iteration.txt     "1000" or "release"
    <save>/iter_0001000/                         one checkpoint (torch_dist: metadata.json, .metadata,
                                                 __R_N.distcp, common.pt; legacy: mp_rank_XX[_YYY]/)

`resolve_checkpoint(path)` accepts any of: a save root, an `iter_*` directory, or a bare
torch_dist / legacy directory, and returns the directory that holds the checkpoint files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from megatron_demix.runtime.errors import BAD_INPUT
from megatron_demix.runtime.files import atomic_write_text

TRACKER_FILE = "latest_checkpointed_iteration.txt"


class CheckpointError(ValueError):
    """A checkpoint path that is missing, incomplete or of an unknown format."""
    exit_status = BAD_INPUT


def iteration_dir(save: Path, iteration: int | str) -> Path:
    return Path(save) / ("release" if iteration == "release" else f"iter_{int(iteration):07d}")


def iteration_dirs(save: Path) -> dict[int, Path]:
    """The `iter_%07d` directories of a save root by iteration, oldest first."""
    found = {}
    for path in Path(save).glob("iter_*") if Path(save).is_dir() else ():
        suffix = path.name[len("iter_"):]
        if path.is_dir() and suffix.isdigit():
            found[int(suffix)] = path
    return dict(sorted(found.items()))


def read_tracker(save: Path) -> int | str | None:
    """The iteration in `<save>/latest_checkpointed_iteration.txt`, or None when there is none."""
    tracker = Path(save) / TRACKER_FILE
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if text == "release":
        return text
    try:
        return int(text)
    except ValueError:
        raise CheckpointError(f"{tracker}: expected an iteration number or 'release', found {text!r}") from None


def write_tracker(save: Path, iteration: int | str) -> None:
    """Point the save root at `iteration` (atomically, after the checkpoint itself is complete)."""
    atomic_write_text(Path(save) / TRACKER_FILE, f"{iteration}\n")


@dataclass(frozen=True)
class CheckpointDir:
    path: Path
    """The directory holding the checkpoint files."""
    format: Literal["torch_dist", "legacy"]


def checkpoint_format(path: Path) -> Literal["torch_dist", "legacy"] | None:
    path = Path(path)
    metadata = path / "metadata.json"
    if metadata.is_file():
        try:
            backend = json.loads(metadata.read_text()).get("sharded_backend")
        except (OSError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{metadata}: unreadable ({error}); the checkpoint is incomplete") from None
        if backend != "torch_dist":
            raise CheckpointError(f"{metadata}: sharded_backend {backend!r} is not supported (only torch_dist)")
        if not (path / ".metadata").is_file():
            raise CheckpointError(
                f"{path}: has metadata.json but no .metadata, so it is an incomplete torch_dist checkpoint"
                f" (a save that did not finish, or a partial copy){_complete_hint(path)}"
            )
        return "torch_dist"
    if any(path.glob("mp_rank_*/model_optim_rng.pt")):
        return "legacy"
    return None


def _complete_hint(path: Path) -> str:
    """For an incomplete `iter_*` under a save root: the newest complete one to point the tracker at."""
    complete = [it for it, d in iteration_dirs(path.parent).items() if (d / ".metadata").is_file() and d != path]
    if not path.name.startswith("iter_") or not complete:
        return "; point at a complete checkpoint"
    return (f"; {iteration_dir(path.parent, complete[-1]).name} is complete: write {complete[-1]} into"
            f" {path.parent / TRACKER_FILE} to use it, or point at another checkpoint")


def resolve_checkpoint(path: str | Path) -> CheckpointDir:
    """Find the checkpoint under a save root, an `iter_*` directory or a bare checkpoint directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    iteration = read_tracker(path)
    if iteration is not None:
        path = iteration_dir(path, iteration)
        if not path.is_dir():
            raise CheckpointError(f"{path}: named by {TRACKER_FILE} but missing; the save root is damaged")
    fmt = checkpoint_format(path)
    if fmt is None:
        raise CheckpointError(
            f"{path}: not a Megatron checkpoint (expected {TRACKER_FILE}, a torch_dist directory with"
            " metadata.json, or mp_rank_*/model_optim_rng.pt)"
        )
    return CheckpointDir(path, fmt)
