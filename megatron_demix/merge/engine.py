"""`merge()`: a weighted merge of Megatron checkpoints, streamed chunk by chunk, on one or many MPI ranks.

    from megatron_demix.merge import merge
    merge(["ckpt/code", "ckpt/math"], [0.3, 0.7], "proxies/p0")               # one process, MergeConfig()'s defaults
    merge(inputs, weights, "proxies/p1", experiment.merge, base=...)          # the experiment's `merge:` section
    mpiexec -n 4 python tools/merge/run.py --inputs ckpt/code:0.3 ckpt/math:0.7 --output proxies/p0
    merge_many(inputs, [Target("proxies/p0", (0.3, 0.7)), Target("proxies/p1", (0.5, 0.5))])   # one read, many proxies

Memory per rank is bounded by the largest output chunk, not by the model: with n its elements,
peak ~ 8n (fp32 accumulator + fp32 term) + the largest stored chunk overlapping it + n x output
itemsize (+ 4n for the base of task arithmetic), on top of the interpreter and torch (~300 MB).
The plan logs this bound. `merge_many` (M proxies from one read) holds one chunk's K input regions
at a time, in their stored dtype, on top of that: the bound grows with K, not with M. Only the plan,
write records, errors and statistics travel over MPI.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
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
from megatron_demix.merge.items import compute_item, held_regions, regions, replay
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


@dataclass(frozen=True)
class Target:
    """One output of `merge_many`: its save root, its weights as given (one per input), more provenance."""

    output: Path
    given: tuple[float, ...]
    provenance: dict = field(default_factory=dict)


@dataclass
class Summary:
    outputs: list[Path]
    """The save roots written (in the order asked); `skipped`: those already merged the same way (`merge_many`)."""
    seconds: float
    """merge() on rank 0, from its call to the published output(s)."""
    bytes_read: int
    bytes_written: int
    ranks: list[RankStats] = field(default_factory=list)
    phases: dict[str, dict] = field(default_factory=dict)
    """Phase -> {seconds, bytes, mb_per_s}: the slowest rank's time for the per-rank phases (they run
    in parallel), rank 0's for planning and metadata; bytes over all ranks."""
    skipped: list[Path] = field(default_factory=list)

    @property
    def output(self) -> Path:
        return self.outputs[0]

    @property
    def process_seconds(self) -> float:
        """The whole process up to the published output: start-up + merge()."""
        return self.phases.get("start-up", {}).get("seconds", 0.0) + self.seconds

    def to_json(self) -> dict:
        peak = max(self.ranks, key=lambda s: s.peak_rss)
        return {
            **({"output": str(self.output)} if len(self.outputs) == 1 and not self.skipped else
               {"outputs": list(map(str, self.outputs)), "skipped": list(map(str, self.skipped))}),
            "ranks": len(self.ranks), "merge_seconds": round(self.seconds, 4),
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


def _merge_share(comm, plan: Plan, out_dirs: list[Path], mixtures: list[list[float]], method, scale, verify: bool, log):
    """This rank's items -> its own data file in each output directory (one per mixture). One output streams
    each item's regions (two fp32 regions at a time); several read them once (`held_regions`) and combine
    them once per mixture. Returns (write records per output, RankStats)."""
    start = time.perf_counter()
    stats = RankStats(comm.rank)
    share = plan.assignment[comm.rank] if comm.rank < len(plan.assignment) else []
    readers = [ChunkReader(d, read_metadata(d).storage_data, name) for d, name in zip(plan.dirs, plan.names)]
    writers = [DataFileWriter(out_dir, comm.rank) for out_dir in out_dirs]
    inputs = len(mixtures[0])
    progress = _share_progress(plan.rank_bytes(comm.rank, len(writers)), log) if comm.rank == 0 else None
    try:
        for i in share:
            item = plan.items[i]
            held = held_regions(readers, item, method, inputs) if len(writers) > 1 else None
            for writer, weights in zip(writers, mixtures):
                next_region = regions(readers, item, method, inputs) if held is None else replay(held, item)
                result = compute_item(item, next_region, plan.names, weights, method, scale)
                (writer.raw if item.kind == "object" else writer.tensor)(item.index, result)
                del result
            del held
            if progress:
                progress.add(item.read_bytes + len(writers) * item.write_bytes)
        for writer in writers:
            writer.close()
        stats.reading, stats.writing = sum(r.seconds for r in readers), sum(w.seconds for w in writers)
        if verify:
            verify_start = time.perf_counter()
            stats.verified = sum(_verify(plan, share, writer, readers, weights, method, scale, out_dir)
                                 for writer, weights, out_dir in zip(writers, mixtures, out_dirs))
            stats.verifying = time.perf_counter() - verify_start
        stats.items, stats.bytes_written = len(share), sum(w.bytes_written for w in writers)
        stats.bytes_read = sum(r.bytes_read for r in readers)
    finally:
        for writer in writers:
            writer.close()
        for reader in readers:
            reader.close()
    stats.seconds, stats.peak_rss = time.perf_counter() - start, mpi.peak_rss_bytes()
    return [w.records for w in writers], stats


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


def _prepare(inputs, targets: list[Target], settings: MergeConfig, base, overwrite, ranks, output_iteration,
             provenance_extra, keep_done: bool):
    """Rank 0: check the arguments, resolve the inputs, plan. Returns (plan, weights per target, iteration,
    provenance per target, the targets to write: all but those `keep_done` finds already merged the same way)."""
    method, extra_state_source = get_method(settings.method), settings.extra_state_source
    if method.needs_base and base is None:
        raise MergeInputError(f"--method {method.name} needs --base DIR (the checkpoint the components were trained from)")
    if base is not None and not method.needs_base:
        raise MergeInputError(f"--base is only used by --method task_arithmetic, not {method.name}")
    if not inputs:
        raise MergeInputError("no inputs: give at least one --inputs DIR:WEIGHT")
    if not targets:
        raise MergeInputError("no outputs: give at least one mixture")
    names = [f"input {i + 1} ({p})" for i, p in enumerate(inputs)]
    mixtures = []
    for target in targets:
        try:
            mixtures.append(check_weights(target.given, names, method, settings.normalize))
        except MergeInputError as error:
            label = f"mixture {target.provenance['mixture_id']}" if "mixture_id" in target.provenance else target.output
            raise MergeInputError(f"{label}: {error}" if len(targets) > 1 or label != target.output else str(error)) from None
    if not 1 <= extra_state_source <= len(inputs):
        raise MergeInputError(f"--extra-state-source {extra_state_source}: give an input number from 1 to {len(inputs)}")
    if output_iteration is not None and output_iteration != "release" and (not isinstance(output_iteration, int) or output_iteration < 0):
        raise MergeInputError(f"--output-iteration {output_iteration!r}: give an iteration number >= 0 (or 'release')")
    outputs = [Path(t.output) for t in targets]
    if len({o.resolve() for o in outputs}) < len(outputs):
        twice = sorted({str(o) for o in outputs if outputs.count(o) > 1})
        raise MergeInputError(f"two mixtures have the same output ({', '.join(twice)}); give each its own")
    paths = list(inputs) + ([base] if base is not None else [])
    names += [f"base ({base})"] if base is not None else []
    found = []
    for path, name in zip(paths, names):
        try:
            found.append(resolve_checkpoint(path))
        except CheckpointError as error:
            raise MergeInputError(f"{name}: {error}") from None
        for output in outputs:
            if output.resolve() in (Path(path).resolve(), found[-1].path.resolve()):
                raise MergeInputError(f"--output {output} is also {name}; write the merge somewhere else")
        if found[-1].format != found[0].format:
            raise MergeInputError(
                f"{name} is a {found[-1].format} checkpoint but {names[0]} is {found[0].format}; all inputs must have"
                " one format (convert the legacy mp_rank_* ones to torch_dist with Megatron-LM's converter)"
            )
    dirs = [f.path for f in found]
    copy_from = extra_state_source - 1
    if found[0].format == "legacy" and len(targets) > 1:
        raise MergeInputError(f"{names[0]}: legacy mp_rank_* inputs merge one mixture at a time (--inputs DIR:WEIGHT);"
                              " convert them to torch_dist to merge many mixtures from one read")
    iteration = _iteration(dirs[0]) if output_iteration is None else output_iteration
    common = {
        "tool": "megatron_demix.merge", "tool_version": _tool_version(), "method": method.name,
        "scale": settings.scale if method.needs_base else None, "inputs": [str(d.resolve()) for d in dirs[: len(inputs)]],
        "base": str(dirs[-1].resolve()) if base is not None else None, "dtype": settings.dtype, "ranks": ranks,
        "iteration": iteration, "extra_state_source": str(dirs[copy_from].resolve()), **(provenance_extra or {}),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    provenances = [{**common, "weights": w, "given_weights": list(t.given), **t.provenance} for t, w in zip(targets, mixtures)]
    todo = []
    for i, output in enumerate(outputs):
        if output.exists() and not overwrite:
            if not (keep_done and _merged_as(output, provenances[i])):
                raise MergeInputError(f"--output {output} already exists" + (" and is not this mixture's merge" if keep_done else "")
                                      + "; remove it or pass --overwrite")
        else:
            todo.append(i)
    if found[0].format == "legacy":
        plan = legacy.build_legacy_plan(dirs, names, ranks, copy_from)
    else:
        plan = build_plan(dirs, names, dtype=settings.dtype, ranks=ranks, has_base=base is not None, copy_from=copy_from)
    return plan, mixtures, iteration, provenances, todo


MATCHED = ("tool", "method", "scale", "inputs", "base", "dtype", "iteration", "extra_state_source", "weights")
"""The `merge.json` fields that say a finished output is this merge (`merge_many` keeps it)."""


def _merged_as(output: Path, provenance: dict) -> bool:
    """Whether `output` is a published merge with the same inputs, weights and settings as `provenance`."""
    try:
        recorded = json.loads((resolve_checkpoint(output).path / "merge.json").read_text())
    except (CheckpointError, OSError, ValueError):
        return False
    return all(recorded.get(key) == provenance[key] for key in MATCHED)


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
    common state (e.g. the schedule). An existing `output` is an error unless `overwrite`.
    The steps are `merge_many`'s, with one target.
    """
    return merge_many(inputs, [Target(Path(output), tuple(float(w) for w in weights))], settings, base=base, verify=verify,
                      overwrite=overwrite, output_iteration=output_iteration, provenance=provenance, comm=comm, log=log,
                      keep_done=False)


def merge_many(
    inputs: Sequence[str | Path],
    targets: Sequence[Target],
    settings: MergeConfig = MergeConfig(),
    *,
    base: str | Path | None = None,
    verify: bool = False,
    overwrite: bool = False,
    output_iteration: int | str | None = None,
    provenance: dict | None = None,
    comm=None,
    log: Callable[[str], None] | None = None,
    keep_done: bool = True,
) -> Summary:
    """Write one proxy per target (its weights over `inputs`), reading every input region once for all of them.

    Arguments as `merge()`'s. Each output is published on its own (temporary name, then rename), all at the
    end. An existing output is kept when `keep_done` finds its `merge.json` the same merge (a killed or
    re-run batch finishes the rest), else it is an error unless `overwrite`. Steps:
    1. Rank 0 checks the arguments (weights of every target, method and base, dtype, outputs), resolves
       each input (save root, `iter_*` or bare torch_dist dir) and plans from the inputs' `.metadata`
       (`plan.build_plan`: keys, shapes, dtypes, data files; items balanced by bytes); all ranks
       receive the plan, or the error.
    2. Rank 0 creates a temporary directory next to each output (`atomic_directory`).
    3. Every rank merges its items chunk by chunk into its own `__{rank}_0.distcp` of each output (with
       several, each item's regions are read once and combined once per target), and with `verify`
       re-reads a sample of them and compares with a recomputation.
    4. Write records, errors and statistics go to rank 0. On any error rank 0 removes the
       temporary directories and every rank raises `MergeError`.
    5. Rank 0 writes each output's `.metadata`, `metadata.json`, `common.pt`, `merge.json` and tracker,
       renames each temporary directory to its output, logs the summary; every rank returns it.
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
    targets = [dataclasses.replace(t, output=Path(t.output), given=tuple(float(w) for w in t.given)) for t in targets]

    plan, mixtures, iteration, provenances, todo = _on_root(
        comm, lambda: _prepare(list(inputs), targets, settings, base, overwrite, comm.size, output_iteration, provenance,
                               keep_done)
    )
    outputs, skipped = [targets[i].output for i in todo], [t.output for i, t in enumerate(targets) if i not in todo]
    planning = (time.perf_counter() - start, _metadata_bytes(plan.dirs) if isinstance(plan, Plan) else 0)
    root_log(f"[merge] {plan.describe()}, {comm.size} rank(s)")
    if skipped:
        root_log(f"[merge] {len(skipped)} of {len(targets)} output(s) already merged, kept: {', '.join(map(str, skipped))}")
    if not todo:
        return Summary([], time.perf_counter() - start, 0, 0, [RankStats(comm.rank)], {}, skipped)
    if len(todo) > 1:
        root_log(f"[merge] {len(todo)} proxies from one read: each chunk's input regions held once"
                 f" (up to {max(item.read_bytes for item in plan.items) / MB:.1f} MB more per rank)")
    stack = contextlib.ExitStack()
    try:
        def open_outputs() -> tuple[list[Path], list[Path]]:
            tmps = [stack.enter_context(atomic_directory(output, overwrite)) for output in outputs]
            for tmp in tmps:
                iteration_dir(tmp, iteration).mkdir()
            return tmps, [iteration_dir(tmp, iteration) for tmp in tmps]

        tmps, out_dirs = _on_root(comm, _writing(outputs[0], open_outputs))
        weights = [mixtures[i] for i in todo]
        try:
            if isinstance(plan, legacy.LegacyPlan):
                records, stats = _legacy_share(comm, plan, out_dirs[0], weights[0], method_, scale, settings.dtype, verify,
                                               provenances[todo[0]], root_log)
                records = [records]
            else:
                records, stats = _merge_share(comm, plan, out_dirs, weights, method_, scale, verify, root_log)
            stats.startup = startup
            outcome = (records, stats, None)
        except Exception as error:
            error = merge_failure(error)
            message = f"rank {comm.rank}: {error}" if comm.size > 1 else str(error)
            outcome = ([], RankStats(comm.rank), (message, isinstance(error, MergeInputError)))
        gathered = comm.gather(outcome)
        finish_start = time.perf_counter()

        def finish() -> tuple[list[RankStats], int]:
            errors = [e for _, _, e in gathered if e]
            if errors:  # bad input only when every failing rank says so (a NaN input), else a failure (a write)
                raise (MergeInputError if all(bad for _, bad in errors) else MergeError)("; ".join(m for m, _ in errors))
            seconds = round(time.perf_counter() - start, 3)
            for n, (i, tmp, out_dir) in enumerate(zip(todo, tmps, out_dirs)):
                provenance_ = {**provenances[i], "seconds": seconds}
                if isinstance(plan, legacy.LegacyPlan):
                    atomic_write_json(out_dir / "merge.json", provenance_)
                else:
                    records_ = {k: v for r, _, _ in gathered for k, v in r[n].items()}
                    write_checkpoint_files(out_dir, plan.state_dict_metadata, records_, plan.dirs[0],
                                           plan.dirs[extra_state_source - 1], provenance_)
                write_tracker(tmp, iteration)
            return [s for _, s, _ in gathered], _metadata_bytes(out_dirs, ("merge.json", "common.pt"))

        rank_stats, metadata_bytes = _on_root(comm, _writing(outputs[0], finish))
    except BaseException:
        stack.__exit__(*sys.exc_info())  # rank 0: removes the temporary directories
        raise
    _on_root(comm, _writing(outputs[0], stack.close))  # rank 0: the renames that publish the outputs
    metadata = (time.perf_counter() - finish_start, metadata_bytes)
    summary = Summary(outputs, time.perf_counter() - start, sum(s.bytes_read for s in rank_stats),
                      sum(s.bytes_written for s in rank_stats), rank_stats, _phases(rank_stats, planning, metadata), skipped)
    _log_summary(summary, root_log)
    return summary


def _metadata_bytes(dirs, names=(METADATA_FILE,)) -> int:
    """Bytes of the named small files (`.metadata`, ...) in `dirs`: what planning reads, or rank 0 writes."""
    return sum(os.path.getsize(Path(d) / name) for d in dirs for name in names if (Path(d) / name).is_file())


def _log_summary(summary: Summary, log) -> None:
    rate = (summary.bytes_read + summary.bytes_written) / max(summary.seconds, 1e-9)
    what = summary.output if len(summary.outputs) == 1 else f"{len(summary.outputs)} proxies ({summary.outputs[0].parent})"
    log(f"[merge] wrote {what} in {summary.seconds:.2f} s: read {summary.bytes_read / MB:.1f} MB,"
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
