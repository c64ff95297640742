"""Benchmark of tools/merge/run.py against a naive whole-checkpoint merge and the I/O floor.

    .venv/bin/python benchmarks/merge_bench.py --work /tmp/merge_bench            # ~340M params, 4 components
    .venv/bin/python benchmarks/merge_bench.py --work /tmp/mb --layers 4 --hidden 256   # a quick smoke run
    .venv/bin/python benchmarks/merge_bench.py batch --work /tmp/merge_bench --proxies 1 4 16   # many proxies, one read

1. Makes 4 components of a GPT (random weights) saved by megatron-core at TP=2, PP=2 (torchrun,
   4 processes, gloo on CPU), unless they already exist under --work.
2. Reads every input once (so every row below starts from the same warm page cache).
3. Times, as whole processes (start-up included):
   - floor: `cat` of every input file to /dev/null + `dd` of the output's size with fsync;
   - naive: load each checkpoint whole (megatron-core `load_plain_tensors`), accumulate, save (torch DCP);
   - merge with `mpiexec -n 1`, `-n 2` and `torchrun --nproc-per-node 2` (gloo).
   Each --repeat times (default 5), interleaved; the median wall time (and the largest peak RSS) is reported.
4. Prints a markdown table: wall time, MB/s ((read + written) / wall), peak RSS per rank, and two
   ratios to the floor measured in the same run: the merge phases alone (merge() from its call to
   the published output, from `--json-summary`) and the whole process; issue 14's goals at 2 ranks
   (merge phases within 1.2x the floor, whole process within the floor + 2 s), met or not; the load
   average before and after; then the phase profile (time, bytes, MB/s per phase) of the median
   2-rank mpiexec run.

`batch` (issue 29): for each K of --proxies, K random mixtures of the 4 components written by one
`--mixtures` merge against K single merges, all with `mpiexec -n 2`, side by side: wall time (whole
processes) and bytes read (the merges' own count, --json-summary), a markdown table. Each output is
deleted once measured (the batch's K proxies exist together: K x the model's size on disk).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
NAMES = ["c0", "c1", "c2", "c3"]


def make_components(args) -> None:
    """Under torchrun: build the model once, save it 4 times with different noise."""
    from megatron.core import dist_checkpointing

    from megatron_demix.checkpoint.layout import iteration_dir, write_tracker
    from megatron_demix.config.base import build
    from megatron_demix.model.config import ModelConfig
    from megatron_demix.model.gpt import build_gpt_model
    from megatron_demix.runtime.distributed import init_distributed
    from megatron_demix.runtime.parallel import ParallelDims, initialize_model_parallel

    init_distributed()
    initialize_model_parallel(ParallelDims(2, 2, torch.distributed.get_world_size()), 0)
    config = build(ModelConfig, dict(num_layers=args.layers, hidden_size=args.hidden, ffn_hidden_size=args.ffn,
                                     num_attention_heads=args.heads), "model")
    model = build_gpt_model(config, args.vocab)
    params = sum(p.numel() for p in model.parameters())
    total = torch.tensor(params)
    torch.distributed.all_reduce(total)
    for i, name in enumerate(NAMES):
        torch.manual_seed(i + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        out = iteration_dir(Path(args.work) / name, 100)
        if torch.distributed.get_rank() == 0:
            out.mkdir(parents=True, exist_ok=True)
        torch.distributed.barrier()
        dist_checkpointing.save(model.sharded_state_dict(), str(out))
        torch.distributed.barrier()
        if torch.distributed.get_rank() == 0:
            write_tracker(Path(args.work) / name, 100)
    if torch.distributed.get_rank() == 0:
        print(json.dumps({"params": int(total)}))


def naive(args) -> None:
    """The baseline: every checkpoint loaded whole, one after the other, summed in fp32, saved with DCP."""
    import tempfile

    import torch.distributed.checkpoint as dcp
    from megatron.core import dist_checkpointing

    with tempfile.NamedTemporaryFile() as store:  # load_plain_tensors asks torch.distributed for the rank
        torch.distributed.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)
    acc = None
    for path in args.inputs:
        state = dist_checkpointing.load_plain_tensors(path)
        state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        if acc is None:
            acc = {k: v.float() * 0.25 for k, v in state.items()}
        else:
            for k, v in state.items():
                acc[k].add_(v.float() * 0.25)
        del state
    Path(args.output).mkdir(parents=True)
    dcp.save(acc, checkpoint_id=args.output)
    print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def timed(command: list, **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(list(map(str, command)), capture_output=True, text=True, **kwargs)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return seconds, proc


def ensure_components(args, work: Path, env: dict) -> list[Path]:
    """The 4 components' torch_dist directories, made first when --work lacks them."""
    if not all((work / n / "latest_checkpointed_iteration.txt").exists() for n in NAMES):
        seconds, proc = timed([Path(PYTHON).parent / "torchrun", "--nproc-per-node", 4, "--master-port", 29777, __file__,
                               "make", "--work", work, "--layers", args.layers, "--hidden", args.hidden, "--ffn", args.ffn,
                               "--heads", args.heads, "--vocab", args.vocab], env=env)
        print(f"made 4 components in {seconds:.0f} s: {proc.stdout.strip().splitlines()[-1]}", flush=True)
    return [work / n / "iter_0000100" for n in NAMES]


def bench_batch(args) -> None:
    """K proxies from one `--mixtures` merge against K single merges (module docstring)."""
    import random

    work = Path(args.work)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    inputs = ensure_components(args, work, env)
    files = [f for d in inputs for f in sorted(d.iterdir()) if f.is_file()]
    component_bytes = sum(f.stat().st_size for f in files) / len(inputs)
    mpiexec, summary_file, out = Path(PYTHON).parent / "mpiexec", work / "summary.json", work / "batch_out"
    rng = random.Random(29)

    def run(extra: list) -> tuple[float, dict]:
        seconds, _ = timed([mpiexec, "-n", 2, PYTHON, REPO / "tools/merge/run.py", *extra, "--json-summary", summary_file], env=env)
        return seconds, json.loads(summary_file.read_text())

    rows, load_before = [], os.getloadavg()
    for k in args.proxies:
        mixtures = [{"id": f"p{i}", "weights": [rng.random() for _ in inputs]} for i in range(k)]
        listing = work / "mixtures.jsonl"
        listing.write_text("".join(json.dumps(m) + "\n" for m in mixtures))
        subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)  # same warm start for both
        shutil.rmtree(out, ignore_errors=True)
        batch_seconds, summary = run(["--inputs", *inputs, "--mixtures", listing, "--output", out])
        batch = (batch_seconds, summary["bytes_read"], summary["bytes_written"], summary["merge_seconds"],
                 summary["max_peak_rss_bytes"])
        shutil.rmtree(out)
        subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
        singles = [0.0, 0, 0, 0.0, 0]
        for mixture in mixtures:
            seconds, summary = run(["--inputs", *[f"{d}:{w}" for d, w in zip(inputs, mixture["weights"])], "--output", out])
            shutil.rmtree(out)
            for i, value in enumerate((seconds, summary["bytes_read"], summary["bytes_written"], summary["merge_seconds"])):
                singles[i] += value
            singles[4] = max(singles[4], summary["max_peak_rss_bytes"])
        rows.append((k, batch, singles))
        print(f"K={k}: batch {batch_seconds:.1f} s, {k} single merges {singles[0]:.1f} s", flush=True)
    listing.unlink()
    summary_file.unlink()
    print(f"\ninputs: 4 x {component_bytes / 1e6:.0f} MB (TP=2, PP=2, fp32); mpiexec -n 2; one run per row; load average"
          f" (1, 5, 15 min) {', '.join(f'{x:.2f}' for x in load_before)} before,"
          f" {', '.join(f'{x:.2f}' for x in os.getloadavg())} after\n")
    print("| K proxies | batch wall s | batch merge s | batch GB read | K singles wall s | K singles merge s"
          " | K singles GB read | GB written | wall speed-up | peak RSS per rank MB, batch / single |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, batch, singles in rows:
        print(f"| {k} | {batch[0]:.1f} | {batch[3]:.1f} | {batch[1] / 1e9:.2f} | {singles[0]:.1f} | {singles[3]:.1f}"
              f" | {singles[1] / 1e9:.2f} | {batch[2] / 1e9:.2f} | {singles[0] / batch[0]:.2f}x"
              f" | {batch[4] / 1e6:.0f} / {singles[4] / 1e6:.0f} |")


def bench(args) -> None:
    work = Path(args.work)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    inputs = ensure_components(args, work, env)
    files = [f for d in inputs for f in sorted(d.iterdir()) if f.is_file()]
    read_bytes = sum(f.stat().st_size for f in files)
    metadata = pickle.loads((inputs[0] / ".metadata").read_bytes())
    largest = max(info.length for info in metadata.storage_data.values())
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache

    out, floor_file, naive_out = work / "out", work / "floor.bin", work / "naive"

    summary_file = work / "summary.json"

    def run_merge(ranks: int, launcher: str = "mpiexec"):
        shutil.rmtree(out, ignore_errors=True)
        launch = ([Path(PYTHON).parent / "mpiexec", "-n", ranks, PYTHON] if launcher == "mpiexec" else
                  [Path(PYTHON).parent / "torchrun", "--standalone", "--nproc-per-node", ranks])
        command = [*launch, REPO / "tools/merge/run.py", "--inputs", *[f"{d}:1" for d in inputs], "--output", out,
                   "--json-summary", summary_file]
        seconds, proc = timed(command, env=env)
        summary = json.loads(summary_file.read_text())
        return seconds, du(out), [r["peak_rss"] for r in summary["per_rank"]], summary

    def run_floor(written: int):
        t_read, _ = timed(["sh", "-c", 'cat "$@" > /dev/null', "sh", *files])
        t_write, _ = timed(["dd", "if=/dev/zero", f"of={floor_file}", "bs=16M", f"count={-(-written // (16 << 20))}", "conv=fsync"])
        floor_file.unlink()
        return t_read + t_write, written, [], None

    def run_naive():
        shutil.rmtree(naive_out, ignore_errors=True)
        seconds, proc = timed([PYTHON, __file__, "naive", "--output", naive_out, "--inputs", *inputs], env=env)
        written = du(naive_out)
        shutil.rmtree(naive_out, ignore_errors=True)
        return seconds, written, [json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss"]], None

    # Interleaved repeats, median wall time per row: the CI machines are shared and noisy.
    written = run_merge(1)[1]
    runs = {"merge, mpiexec -n 1": lambda: run_merge(1), "merge, mpiexec -n 2": lambda: run_merge(2),
            "merge, torchrun 2 (gloo)": lambda: run_merge(2, "torchrun"),
            "I/O floor (cat inputs + dd output, fsync)": lambda: run_floor(written),
            "naive: load_plain_tensors x4 + DCP save": run_naive}
    samples = {name: [] for name in runs}
    load_before = os.getloadavg()
    for _ in range(args.repeat):
        for name, run in runs.items():
            samples[name].append(run())
    rows = {}
    for name, results in samples.items():
        results.sort(key=lambda r: r[0])
        seconds, size, rss, summary = results[len(results) // 2]
        merge_seconds = sorted(r[3]["merge_seconds"] for r in results)[len(results) // 2] if summary else None
        rows[name] = (seconds, size, [max(r[2][i] for r in results) for i in range(len(rss))], summary, merge_seconds)
        print(f"{name}: wall {', '.join(f'{r[0]:.2f}' for r in results)} s", flush=True)

    floor = rows["I/O floor (cat inputs + dd output, fsync)"][0]
    naive_seconds = rows["naive: load_plain_tensors x4 + DCP save"][0]
    print(f"\ninputs: 4 x {read_bytes / 4 / 1e6:.0f} MB (TP=2, PP=2, fp32), largest stored chunk {largest / 1e6:.1f} MB;"
          f" output {rows['merge, mpiexec -n 1'][1] / 1e6:.0f} MB; median of {args.repeat}; load average (1, 5, 15 min)"
          f" {', '.join(f'{x:.2f}' for x in load_before)} before, {', '.join(f'{x:.2f}' for x in os.getloadavg())} after\n")
    print("| run | wall s | MB/s (read+written)/wall | whole process x floor | merge phases s | merge phases x floor"
          " | speed-up vs naive | peak RSS per rank (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (seconds, written, rss, _, merge_seconds) in rows.items():
        rate = (read_bytes + written) / seconds / 1e6
        phases = f"{merge_seconds:.2f} | {merge_seconds / floor:.2f}" if merge_seconds else "- | -"
        print(f"| {name} | {seconds:.2f} | {rate:.0f} | {seconds / floor:.2f} | {phases} | {naive_seconds / seconds:.1f}x |"
              f" {', '.join(f'{r / 1e6:.0f}' for r in rss) or '-'} |")
    print("\nissue 14's goals at 2 ranks (merge phases within 1.2x the floor; whole process within the floor + 2 s):")
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    for name in ("merge, mpiexec -n 2", "merge, torchrun 2 (gloo)"):
        seconds, merge_seconds = rows[name][0], rows[name][4]
        print(f"- {name}: merge phases {merge_seconds / floor:.2f}x the floor ({met(merge_seconds <= 1.2 * floor)});"
              f" whole process floor {seconds - floor:+.2f} s ({met(seconds <= floor + 2)})")
    print("\nphase profile, median `mpiexec -n 2` run (slowest rank per phase; bytes over all ranks):\n")
    print("| phase | s | MB | MB/s |\n|---|---|---|---|")
    phases = rows["merge, mpiexec -n 2"][3]["phases"]
    for phase in ("start-up", "planning", "reading", "combining", "writing", "verifying", "metadata"):
        p = phases[phase]
        print(f"| {phase} | {p['seconds']:.2f} | {p['bytes'] / 1e6:.1f} | {p['mb_per_s'] or '-'} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="bench", choices=["bench", "batch", "make", "naive"])
    parser.add_argument("--work", default="/tmp/merge_bench")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=2816)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeat", type=int, default=5, help="runs per row; the table shows the median")
    parser.add_argument("--proxies", nargs="+", type=int, default=[1, 4, 16], help="batch: the K values")
    parser.add_argument("--inputs", nargs="*")
    parser.add_argument("--output")
    args = parser.parse_args()
    {"bench": bench, "batch": bench_batch, "make": make_components, "naive": naive}[args.command](args)
