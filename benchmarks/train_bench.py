"""Benchmark: tokens/s of the trainer against a bare megatron-core loop (same model, data, parallelism).

    .venv/bin/python benchmarks/train_bench.py                       # DP=2, TP=2 and PP=2 rows
    .venv/bin/python benchmarks/train_bench.py --layouts 1,1 --iters 60 --repeat 3

1. Prepares the demo experiment's data once under --work (tiny model; small built-in corpora).
2. For each TP,PP layout, one torchrun with 2 processes (gloo on CPU) runs, interleaved
   --repeat times: the bare loop, then the trainer.
   - bare: megatron-core DDP + `get_forward_backward_func` + torch AdamW on the same GPTModel and
     the same TrainingData batches; no loss reduction, clipping, schedule, logging or checkpoints.
   - trainer: `Trainer.train()` as launched for real (log every 5 iterations, validation and the
     checkpoint only at the end, outside the timed window), timed from its own JSON-lines records.
   Both skip the first --warmup iterations. The tokens/s columns are the best of the repeats (the
   machine is shared; the best run is the least disturbed); the ratio is the median over the
   repeats of trainer / bare within each interleaved pair (neighbours see similar load).
3. Prints a markdown table: tokens/s of each and the ratio trainer / bare.

With --against REV (e.g. `--against HEAD~1`) the same workers also run from git revision REV (extracted
with `git archive`, imported through PYTHONPATH), one repeat at a time, alternating with this tree's:
the table then adds REV's trainer tokens/s and this tree's trainer / REV's trainer (median of pairs),
"before and after" measured in the same run:

    .venv/bin/python benchmarks/train_bench.py --layouts 1,1 --against HEAD~1 --repeat 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TRAINING = dict(micro_batch_size=4, global_batch_size=16, log_interval=5, eval_interval=0, save_interval=0, eval_iters=1)


def prepare_work(work: Path) -> Path:
    from megatron_demix.experiment import experiment_from_dict
    from megatron_demix.data.prepare import prepare

    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data.update(work_dir=str(work), prepare={**data["prepare"], "builtin_megabytes": 0.5}, training={**data["training"], **TRAINING})
    prepare(experiment_from_dict(data, "bench"))
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def bare_loop(experiment, iters: int, warmup: int) -> float:
    """Seconds for iterations warmup..iters of the plainest megatron-core loop; every rank returns it."""
    import torch
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_demix.data.tokenizer import load_tokenizer
    from megatron_demix.model.gpt import build_gpt_model
    from megatron_demix.runtime.parallel import ParallelDims, initialize_model_parallel
    from megatron_demix.data.datasets import TrainingData, blend_for

    t = experiment.training
    dims = ParallelDims(t.tensor_model_parallel_size, t.pipeline_model_parallel_size, torch.distributed.get_world_size())
    initialize_model_parallel(dims, t.seed)
    tokenizer = load_tokenizer(experiment.paths.tokenizer)
    data = TrainingData.build(experiment, blend_for(experiment, "base"), tokenizer, train_iters=iters, training=t,
                              cache=experiment.paths.data / "index-cache" / "bench")
    gpt = build_gpt_model(experiment.model, tokenizer.vocab_size)
    model = DistributedDataParallel(config=gpt.config, ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True), module=gpt)
    gpt.config.no_sync_func, gpt.config.finalize_model_grads_func = model.no_sync, finalize_model_grads
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr)
    microbatches = t.global_batch_size // (t.micro_batch_size * dims.data)

    def forward_step(iterator, model):
        batch = next(iterator)
        output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])
        mask = batch["loss_mask"].reshape(-1)
        return output, lambda out: ((out.reshape(-1) * mask).sum() / mask.sum(), {})

    for it in range(iters):
        if it == warmup:
            torch.distributed.barrier()
            start = time.perf_counter()
        model.zero_grad_buffer()
        get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=data.train_microbatches(it, microbatches), model=[model],
            num_microbatches=microbatches, seq_length=experiment.model.seq_length, micro_batch_size=t.micro_batch_size,
        )
        for p in params:
            p.grad = p.main_grad
        optimizer.step()
    torch.distributed.barrier()
    return time.perf_counter() - start


def trainer_loop(experiment, iters: int, warmup: int) -> float:
    """Seconds between the trainer's own records at iteration `warmup` and at the last iteration."""
    import torch

    from megatron_demix.training.run_options import RunOptions
    from megatron_demix.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        run = RunOptions(model_name="base", save=Path(tmp) / "save", load=None, pretrained=None, train_iters=iters,
                         log_dir=Path(tmp) / "logs")
        trainer = Trainer(experiment, run)
        trainer.train()
        trainer.close()
        seconds = torch.zeros(1, dtype=torch.float64)
        if torch.distributed.get_rank() == 0:
            records = {r["iteration"]: r for r in map(json.loads, (run.log_dir / "train.jsonl").read_text().splitlines())
                       if r["kind"] == "train"}
            seconds[0] = records[iters]["elapsed_s"] - records[warmup]["elapsed_s"]
        torch.distributed.broadcast(seconds, 0)
        return seconds.item()


def worker(args) -> None:
    import dataclasses

    import torch

    from megatron_demix.experiment import load_experiment
    from megatron_demix.runtime.distributed import init_distributed

    init_distributed()
    experiment = load_experiment(args.config)
    training = dataclasses.replace(experiment.training, tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp)
    experiment = dataclasses.replace(experiment, training=training)
    tokens = (args.iters - args.warmup) * training.global_batch_size * experiment.model.seq_length
    times = {"bare": [], "trainer": []}
    for _ in range(args.repeat):
        times["bare"].append(bare_loop(experiment, args.iters, args.warmup))
        times["trainer"].append(trainer_loop(experiment, args.iters, args.warmup))
    if torch.distributed.get_rank() == 0:
        # Adjacent runs see about the same load from other jobs, so the ratio is taken per pair.
        ratios = sorted(b / t for b, t in zip(times["bare"], times["trainer"]))
        result = {k: tokens / min(v) for k, v in times.items()} | {"ratio": ratios[len(ratios) // 2]}
        print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "train_bench")
    parser.add_argument("--layouts", default="1,1 2,1 1,2", help="space-separated TP,PP pairs (2 processes each)")
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="a multiple of the log interval (5)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--tp", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--pp", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--against", metavar="REV", help="also time the trainer of this git revision, interleaved")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    config = prepare_work(args.work)
    trees = {"this": REPO}
    if args.against:
        trees["against"] = Path(tempfile.mkdtemp(prefix="train_bench_against_"))
        archive = subprocess.run(["git", "archive", args.against], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(trees["against"])], input=archive, check=True)
    head = "| TP | PP | DP | bare megatron-core (tokens/s, best) | trainer (tokens/s, best) | trainer / bare (median of pairs) |"
    print(head + (f" trainer at {args.against} (tokens/s, best) | trainer / trainer at {args.against} (median of pairs) |" if args.against else ""))
    print("|---" * (6 + 2 * bool(args.against)) + "|")
    for layout in args.layouts.split():
        tp, pp = map(int, layout.split(","))
        if not args.against:
            rates = run_worker(REPO, config, tp, pp, args, args.repeat)
            print(f"| {tp} | {pp} | {2 // (tp * pp)} | {rates['bare']:,.0f} | {rates['trainer']:,.0f} | {rates['ratio']:.3f} |", flush=True)
            continue
        runs = {name: [] for name in trees}
        for _ in range(args.repeat):  # alternating, so both trees see about the same load from other jobs
            for name, tree in trees.items():
                runs[name].append(run_worker(tree, config, tp, pp, args, 1))
        pairs = sorted(a["trainer"] / b["trainer"] for a, b in zip(runs["this"], runs["against"]))
        best = {name: {k: max(r[k] for r in rs) for k in ("bare", "trainer")} for name, rs in runs.items()}
        own = sorted(r["ratio"] for r in runs["this"])
        print(f"| {tp} | {pp} | {2 // (tp * pp)} | {best['this']['bare']:,.0f} | {best['this']['trainer']:,.0f} | {own[len(own) // 2]:.3f}"
              f" | {best['against']['trainer']:,.0f} | {pairs[len(pairs) // 2]:.3f} |", flush=True)


def run_worker(tree: Path, config: Path, tp: int, pp: int, args, repeat: int) -> dict:
    """One torchrun of the worker of the train_bench.py in `tree`, importing that tree's megatron_demix."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    command = [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", "2", str(tree / "benchmarks" / "train_bench.py"),
               "--worker", "--config", str(config), "--tp", str(tp), "--pp", str(pp), "--iters", str(args.iters),
               "--warmup", str(args.warmup), "--repeat", str(repeat)]
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tree)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"layout TP={tp} PP={pp} ({tree}) failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return json.loads(line[len("RESULT "):])


if __name__ == "__main__":  # required: dist_checkpointing.save forks worker processes
    main()
