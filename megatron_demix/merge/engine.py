"""`merge()`: a weighted merge of Megatron checkpoints, streamed chunk by chunk, on one or many MPI ranks.

    from megatron_demix.merge import merge
    merge(["ckpt/code", "ckpt/math"], [0.3, 0.7], "proxies/p0")               # one process, MergeConfig()'s defaults
    merge(inputs, weights, "proxies/p1", experiment.merge, base=...)          # the experiment's `merge:` section
    mpiexec -n 4 python tools/merge/run.py --inputs ckpt/code:0.3 ckpt/math:0.7 --output proxies/p0

Memory per rank is bounded by the largest output chunk, not by the model: with n its elements,
peak ~ 8n (fp32 accumulator + fp32 term) + the largest stored chunk overlapping it + n x output
itemsize (+ 4n for the base of task arithmetic), on top of the interpreter and torch (~300 MB).
The plan logs this bound. Only the plan, write records, errors and statistics travel over MPI.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from megatron_demix.checkpoint.layout import CheckpointError, iteration_dir, resolve_checkpoint, write_tracker
from megatron_demix.merge import legacy, mpi
from megatron_demix.checkpoint.torch_dist import METADATA_FILE, ChunkReader, read_metadata
from megatron_demix.merge.io import DataFileWriter, MergeError, MergeInputError, merge_failure, output_failure, write_checkpoint_files
from megatron_demix.merge.items import compute_item, regions
from megatron_demix.merge.methods import Method, get_method
from megatron_demix.merge.config import MergeConfig
from megatron_demix.merge.plan import Plan, build_plan
from megatron_demix.runtime.files import atomic_directory, atomic_write_json
from megatron_demix.runtime.progress import Progress

MB = 1e6
VERIFY_SAMPLE = 8
"""Items per rank that --verify re-reads and recomputes (all of them on a rank with fewer)."""


@dataclass
class RankStats:
    rank: int
    items: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    peak_rss: int = 0
    verified: int = 0
    startup: float = 0.0
    """Seconds from the process's start to the merge() call (interpreter, imports, MPI or gloo set-up)."""
    reading: float = 0.0
    writing: float = 0.0
    verifying: float = 0.0
    """The rest of `seconds` is combining (the arithmetic, casts, region copies)."""


PHASES = ("start-up", "planning", "reading", "combining", "writing", "verifying", "metadata")


@dataclass
class Summary:
    output: Path
    seconds: float
    """merge() on rank 0, from its call to the published output."""
    bytes_read: int
    bytes_written: int
    ranks: list[RankStats] = field(default_factory=list)
    phases: dict[str, dict] = field(default_factory=dict)
    """Phase -> {seconds, bytes, mb_per_s}: the slowest rank's time for the per-rank phases (they run
    in parallel), rank 0's for planning and metadata; bytes over all ranks."""

    @property
    def process_seconds(self) -> float:
        """The whole process up to the published output: start-up + merge()."""
        return self.phases.get("start-up", {}).get("seconds", 0.0) + self.seconds

    def to_json(self) -> dict:
        peak = max(self.ranks, key=lambda s: s.peak_rss)
        return {
            "output": str(self.output), "ranks": len(self.ranks), "merge_seconds": round(self.seconds, 4),
            "process_seconds": round(self.process_seconds, 4), "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written, "phases": self.phases,
            "max_peak_rss_bytes": peak.peak_rss, "max_peak_rss_rank": peak.rank,
            "per_rank": [dataclasses.asdict(s) for s in self.ranks],
        }


def _phases(rank_stats: list[RankStats], planning: tuple[float, int], metadata: tuple[float, int]) -> dict[str, dict]:
    slowest = lambda name: max(getattr(s, name) for s in rank_stats)  # noqa: E731
    read, written = sum(s.bytes_read for s in rank_stats), sum(s.bytes_written for s in rank_stats)
    timed = {
        "start-up": (slowest("startup"), 0), "planning": planning, "reading": (slowest("reading"), read),
        "combining": (max(s.seconds - s.reading - s.writing - s.verifying for s in rank_stats), read),
        "writing": (slowest("writing"), written), "verifying": (slowest("verifying"), 0), "metadata": metadata,
    }
    return {name: {"seconds": round(seconds, 4), "bytes": size, "mb_per_s": round(size / MB / seconds, 1) if seconds > 0 and size else None}
            for name, (seconds, size) in timed.items()}


def check_weights(weights: Sequence[float], names: Sequence[str], method: Method, normalize: bool) -> list[float]:
    """The weights to use, checked (count, finite, sign, not all zero) and normalised to sum 1 unless told not to."""
    if len(weights) != len(names):
        raise MergeInputError(f"got {len(weights)} weight(s) for {len(names)} input(s); give one weight per input (DIR:WEIGHT)")
    for w, name in zip(weights, names):
        if not math.isfinite(w):
            raise MergeInputError(f"{name}: weight {w} is not a finite number")
        if w < 0 and not method.allows_negative_weights:
            raise MergeInputError(f"{name}: weight {w} is negative; only --method task_arithmetic accepts negative weights")
    if all(w == 0 for w in weights):
        raise MergeInputError(f"all weights are 0 ({', '.join(names)}); give at least one input a non-zero weight")
    if not normalize:
        return [float(w) for w in weights]
    total = math.fsum(weights)
    if total == 0:
        raise MergeInputError(f"weights {list(weights)} sum to 0 and cannot be normalised; pass --no-normalize")
    return [w / total for w in weights]


def _share_progress(total: int, log) -> Progress:
    """Rank 0's line: bytes of its share done, MB/s, ETA (ranks get balanced shares)."""
    return Progress("[merge] rank 0's share", total=total, unit="MB", scale=MB, every=2.0, log=log)


def _legacy_share(comm, plan: legacy.LegacyPlan, out_dir: Path, weights, method, scale, dtype, verify, provenance, log):
    """This rank's legacy rank files, merged and written whole. Returns ({}, RankStats)."""
    start = time.perf_counter()
    stats = RankStats(comm.rank)
    share = plan.assignment[comm.rank] if comm.rank < len(plan.assignment) else []
    progress = _share_progress(sum(plan.sizes[i] * (len(plan.dirs) + 1) for i in share), log) if comm.rank == 0 else None
    for i in share:
        relative = plan.files[i]
        written = legacy.merge_rank_file(plan, relative, out_dir, weights, method, scale, dtype, provenance)
        if verify:
            legacy.verify_rank_file(out_dir / relative, written)
            stats.verified += 1
        del written
        stats.items += 1
        stats.bytes_read += plan.sizes[i] * len(plan.dirs)  # read, combined and written whole: all counts as combining
        stats.bytes_written += os.stat(out_dir / relative).st_size
        if progress:
            progress.add(plan.sizes[i] * (len(plan.dirs) + 1))
    stats.seconds, stats.peak_rss = time.perf_counter() - start, mpi.peak_rss_bytes()
    return {}, stats


def _merge_share(comm, plan: Plan, out_dir: Path, weights, method, scale, verify: bool, log):
    """This rank's items -> its own data file. Returns (write records, RankStats)."""
    start = time.perf_counter()
    stats = RankStats(comm.rank)
    share = plan.assignment[comm.rank] if comm.rank < len(plan.assignment) else []
    readers = [ChunkReader(d, read_metadata(d).storage_data, name) for d, name in zip(plan.dirs, plan.names)]
    writer = DataFileWriter(out_dir, comm.rank)
    progress = _share_progress(plan.rank_bytes(comm.rank), log) if comm.rank == 0 else None
    try:
        for i in share:
            item = plan.items[i]
            result = compute_item(item, regions(readers, item, method, len(weights)), plan.names, weights, method, scale)
            (writer.raw if item.kind == "object" else writer.tensor)(item.index, result)
            del result
            if progress:
                progress.add(item.read_bytes + item.write_bytes)
        writer.close()
        stats.reading, stats.writing = sum(r.seconds for r in readers), writer.seconds
        if verify:
            verify_start = time.perf_counter()
            stats.verified = _verify(plan, share, writer, readers, weights, method, scale, out_dir)
            stats.verifying = time.perf_counter() - verify_start
        stats.items, stats.bytes_written = len(share), writer.bytes_written
        stats.bytes_read = sum(r.bytes_read for r in readers)
    finally:
        writer.close()
        for reader in readers:
            reader.close()
    stats.seconds, stats.peak_rss = time.perf_counter() - start, mpi.peak_rss_bytes()
    return writer.records, stats


def _verify(plan: Plan, share, writer, readers, weights, method, scale, out_dir: Path) -> int:
    """Re-read a sample of this rank's output chunks and compare them with a fresh recomputation."""
    sample = random.Random(len(share)).sample(share, min(VERIFY_SAMPLE, len(share)))
    with ChunkReader(out_dir, writer.records, f"output {out_dir}") as output:
        for i in sample:
            item = plan.items[i]
            expected = compute_item(item, regions(readers, item, method, len(weights)), plan.names, weights, method, scale)
            if item.kind == "object":
                same = output.raw(item.index) == expected
            else:
                same = torch.equal(output.tensor(item.index), expected)
            if not same:
                raise MergeError(f"--verify: key {item.key} (chunk at {item.offsets}) of the output differs from a recomputation; storage is unreliable")
    return len(sample)


# ---------------------------------------------------------------------------------------------
# The collective flow.

def _on_root(comm, fn):
    """Run `fn` on rank 0 and broadcast its result; if it raises, every rank raises (no rank hangs)."""
    result, error = None, None
    if comm.rank == 0:
        try:
            result = fn()
        except Exception as exc:
            error = merge_failure(exc)
    result, failure = comm.bcast((result, None if error is None else (str(error), isinstance(error, MergeInputError))))
    if error is not None:
        raise error
    if failure is not None:
        message, bad_input = failure
        raise (MergeInputError if bad_input else MergeError)(message)
    return result


def _writing(output: Path, fn):
    """`fn` with a failed write (full disk, read-only or not permitted) as one clear MergeError."""
    def run():
        try:
            return fn()
        except OSError as error:
            raise output_failure(getattr(error, "filename", None) or output, error) from None
    return run


def _iteration(path: Path) -> int | str:
    """The first input's iteration (from its `iter_*` directory name), so the proxy looks like it."""
    match = re.fullmatch(r"iter_(\d+)", path.name)
    return int(match.group(1)) if match else ("release" if path.name == "release" else 0)


def _tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("megatron-demix")
    except PackageNotFoundError:  # run from a checkout without installing
        return "unknown"


def _prepare(inputs, given, output, settings: MergeConfig, base, overwrite, ranks, output_iteration, provenance_extra):
    """Rank 0: check the arguments, resolve the inputs, plan. Returns (plan, weights, iteration, provenance)."""
    method, extra_state_source = get_method(settings.method), settings.extra_state_source
    if method.needs_base and base is None:
        raise MergeInputError(f"--method {method.name} needs --base DIR (the checkpoint the components were trained from)")
    if base is not None and not method.needs_base:
        raise MergeInputError(f"--base is only used by --method task_arithmetic, not {method.name}")
    if not inputs:
        raise MergeInputError("no inputs: give at least one --inputs DIR:WEIGHT")
    names = [f"input {i + 1} ({p})" for i, p in enumerate(inputs)]
    weights = check_weights(given, names, method, settings.normalize)
    if not 1 <= extra_state_source <= len(inputs):
        raise MergeInputError(f"--extra-state-source {extra_state_source}: give an input number from 1 to {len(inputs)}")
    if output_iteration is not None and output_iteration != "release" and (not isinstance(output_iteration, int) or output_iteration < 0):
        raise MergeInputError(f"--output-iteration {output_iteration!r}: give an iteration number >= 0 (or 'release')")
    output = Path(output)
    if output.exists() and not overwrite:
        raise MergeInputError(f"--output {output} already exists; remove it or pass --overwrite")
    paths = list(inputs) + ([base] if base is not None else [])
    names += [f"base ({base})"] if base is not None else []
    found = []
    for path, name in zip(paths, names):
        try:
            found.append(resolve_checkpoint(path))
        except CheckpointError as error:
            raise MergeInputError(f"{name}: {error}") from None
        if output.resolve() in (Path(path).resolve(), found[-1].path.resolve()):
            raise MergeInputError(f"--output {output} is also {name}; write the merge somewhere else")
        if found[-1].format != found[0].format:
            raise MergeInputError(
                f"{name} is a {found[-1].format} checkpoint but {names[0]} is {found[0].format}; all inputs must have"
                " one format (convert the legacy mp_rank_* ones to torch_dist with Megatron-LM's converter)"
            )
    dirs = [f.path for f in found]
    copy_from = extra_state_source - 1
    if found[0].format == "legacy":
        plan = legacy.build_legacy_plan(dirs, names, ranks, copy_from)
    else:
        plan = build_plan(dirs, names, dtype=settings.dtype, ranks=ranks, has_base=base is not None, copy_from=copy_from)
    iteration = _iteration(dirs[0]) if output_iteration is None else output_iteration
    provenance = {
        "tool": "megatron_demix.merge", "tool_version": _tool_version(), "method": method.name,
        "scale": settings.scale if method.needs_base else None,
        "inputs": [str(d.resolve()) for d in dirs[: len(inputs)]], "weights": weights, "given_weights": list(given),
        "base": str(dirs[-1].resolve()) if base is not None else None, "dtype": settings.dtype, "ranks": ranks,
        "iteration": iteration, "extra_state_source": str(dirs[copy_from].resolve()), **(provenance_extra or {}),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return plan, weights, iteration, provenance


def merge(
    inputs: Sequence[str | Path],
    weights: Sequence[float],
    output: str | Path,
    settings: MergeConfig = MergeConfig(),
    *,
    base: str | Path | None = None,
    verify: bool = False,
    overwrite: bool = False,
    output_iteration: int | str | None = None,
    provenance: dict | None = None,
    comm=None,
    log: Callable[[str], None] | None = None,
) -> Summary:
    """Write sum_i w_i * inputs[i] (or task arithmetic over `base`) to `output` as a Megatron save root.

    Call it on every rank (same arguments); `comm` defaults to `mpi.world()`: the MPI world under
    mpiexec/srun, gloo over the ranks under torchrun. To merge from one of several ranks alone, pass
    `comm=mpi.SerialComm()` on that rank. `settings`: the `merge:` section (method, scale, dtype,
    normalize, extra_state_source; its `ranks` are the launcher's business). `base`: the checkpoint of
    task arithmetic. `output_iteration`: the output's `iter_*` name, tracker and common-state
    `iteration` (default: the first input's); `provenance`: more fields for `merge.json` and the
    common state (e.g. the schedule). Steps:
    1. Rank 0 checks the arguments (weights, method and base, dtype, output), resolves each input
       (save root, `iter_*` or bare torch_dist dir) and plans from the inputs' `.metadata`
       (`plan.build_plan`: keys, shapes, dtypes, data files; items balanced by bytes); all ranks
       receive the plan, or the error.
    2. Rank 0 creates a temporary directory next to `output` (`atomic_directory`).
    3. Every rank merges its items chunk by chunk into its own `__{rank}_0.distcp`, and with
       `verify` re-reads a sample of them and compares with a recomputation.
    4. Write records, errors and statistics go to rank 0. On any error rank 0 removes the
       temporary directory and every rank raises `MergeError`.
    5. Rank 0 writes `.metadata`, `metadata.json`, `common.pt`, `merge.json` and the tracker,
       renames the temporary directory to `output`, logs the summary; every rank returns it.
    """
    comm = comm or mpi.world()
    startup = mpi.process_seconds()
    threads = mpi.threads_per_rank(comm)
    if "OMP_NUM_THREADS" not in os.environ:  # an explicit setting wins
        torch.set_num_threads(threads)
    log = log or (lambda line: print(line, flush=True))
    root_log = log if comm.rank == 0 else (lambda line: None)
    start = time.perf_counter()
    method_, scale, extra_state_source = get_method(settings.method), settings.scale, settings.extra_state_source
    output = Path(output)

    plan, weights, iteration, provenance = _on_root(
        comm, lambda: _prepare(list(inputs), [float(w) for w in weights], output, settings, base, overwrite, comm.size,
                               output_iteration, provenance)
    )
    planning = (time.perf_counter() - start, _metadata_bytes(plan.dirs) if isinstance(plan, Plan) else 0)
    root_log(f"[merge] {plan.describe()}, {comm.size} rank(s)")
    stack = contextlib.ExitStack()
    try:
        tmp = _on_root(comm, _writing(output, lambda: stack.enter_context(atomic_directory(output, overwrite))))
        out_dir = iteration_dir(tmp, iteration)
        _on_root(comm, _writing(output, out_dir.mkdir))
        try:
            if isinstance(plan, legacy.LegacyPlan):
                records, stats = _legacy_share(comm, plan, out_dir, weights, method_, scale, settings.dtype, verify, provenance, root_log)
            else:
                records, stats = _merge_share(comm, plan, out_dir, weights, method_, scale, verify, root_log)
            stats.startup = startup
            outcome = (records, stats, None)
        except Exception as error:
            error = merge_failure(error)
            message = f"rank {comm.rank}: {error}" if comm.size > 1 else str(error)
            outcome = ({}, RankStats(comm.rank), (message, isinstance(error, MergeInputError)))
        gathered = comm.gather(outcome)
        finish_start = time.perf_counter()

        def finish() -> tuple[list[RankStats], int]:
            errors = [e for _, _, e in gathered if e]
            if errors:  # bad input only when every failing rank says so (a NaN input), else a failure (a write)
                raise (MergeInputError if all(bad for _, bad in errors) else MergeError)("; ".join(m for m, _ in errors))
            records = {k: v for r, _, _ in gathered for k, v in r.items()}
            provenance["seconds"] = round(time.perf_counter() - start, 3)
            if isinstance(plan, legacy.LegacyPlan):
                atomic_write_json(out_dir / "merge.json", provenance)
            else:
                write_checkpoint_files(out_dir, plan.state_dict_metadata, records, plan.dirs[0], plan.dirs[extra_state_source - 1],
                                       provenance)
            write_tracker(tmp, iteration)
            return [s for _, s, _ in gathered], _metadata_bytes([out_dir], ("merge.json", "common.pt"))

        rank_stats, metadata_bytes = _on_root(comm, _writing(output, finish))
    except BaseException:
        stack.__exit__(*sys.exc_info())  # rank 0: removes the temporary directory
        raise
    _on_root(comm, _writing(output, stack.close))  # rank 0: the rename that publishes the output
    metadata = (time.perf_counter() - finish_start, metadata_bytes)
    summary = Summary(output, time.perf_counter() - start, sum(s.bytes_read for s in rank_stats),
                      sum(s.bytes_written for s in rank_stats), rank_stats, _phases(rank_stats, planning, metadata))
    _log_summary(summary, root_log)
    return summary


def _metadata_bytes(dirs, names=(METADATA_FILE,)) -> int:
    """Bytes of the named small files (`.metadata`, ...) in `dirs`: what planning reads, or rank 0 writes."""
    return sum(os.path.getsize(Path(d) / name) for d in dirs for name in names if (Path(d) / name).is_file())


def _log_summary(summary: Summary, log) -> None:
    rate = (summary.bytes_read + summary.bytes_written) / max(summary.seconds, 1e-9)
    log(f"[merge] wrote {summary.output} in {summary.seconds:.2f} s: read {summary.bytes_read / MB:.1f} MB,"
        f" wrote {summary.bytes_written / MB:.1f} MB ({rate / MB:.1f} MB/s)")
    for s in summary.ranks:
        log(f"[merge]   rank {s.rank}: {s.items} chunks, read {s.bytes_read / MB:.1f} MB, wrote {s.bytes_written / MB:.1f} MB,"
            f" {s.seconds:.2f} s, peak RSS {s.peak_rss / MB:.0f} MB" + (f", verified {s.verified}" if s.verified else ""))
    shown = [f"{name} {p['seconds']:.2f} s" + (f" {p['bytes'] / MB:.1f} MB" if p["bytes"] else "")
             + (f" {p['mb_per_s']:.0f} MB/s" if p["mb_per_s"] else "")
             for name, p in summary.phases.items() if name != "verifying" or p["seconds"]]
    peak = max(summary.ranks, key=lambda s: s.peak_rss)
    log(f"[merge] phases: {'; '.join(shown)}; process {summary.process_seconds:.2f} s;"
        f" max peak RSS {peak.peak_rss / MB:.0f} MB (rank {peak.rank})")
