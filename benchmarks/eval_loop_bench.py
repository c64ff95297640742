"""Where a mixture's time goes in the many-mixtures loop (eval/proxies.py: evaluate_mixtures).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_loop_bench.py --config runs/demo/experiment.yaml
    .venv/bin/python benchmarks/eval_loop_bench.py --config X.yaml --mixtures 16 --threads 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_loop_bench.py --config X.yaml --clock cpu   # a loaded machine

The experiment must have its components trained (`demix train`, or `make demo`). Evaluates
--mixtures random mixtures of its candidates on its evaluation tasks (the built-in tasks unless
eval.tasks names others) into a scratch directory, once, and splits the seconds per mixture into:
- refill: recomputing the model's weights from the components (ProxyEvaluator.refill);
- forward: the model's own forward passes (GPTModel.forward);
- log-probs: the log-softmax over its logits at the scored positions (eval/forward.py: target_log_probs),
  compute on the model's output as much as the output layer's matmul (counted inside the harness before);
- harness: lm-eval's set-up and scoring around them (requests, collation, metrics), TaskSuite.run
  less the forward passes;
- write: the result record and its atomic write (write_result);
- other: the loop's remainder.
Each phase is timed by wrapping the one function that does it, for this process only. Prints a
markdown table; the loop's set-up before the first mixture (components, tasks, model) is its own line.
"""
from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from eval_bench import mixtures  # noqa: E402  (the same random mixtures as the eval benchmark)

PHASES = ("refill", "forward", "log-probs", "harness", "write", "other")


class Clock:
    """Seconds spent inside wrapped functions, per phase (an inner phase is taken out of its outer one)."""

    def __init__(self, now=time.perf_counter):
        self.now = now
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.first: dict[str, float] = {}

    def wrap(self, owner, name: str, phase: str) -> None:
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def timed(*args, **kwargs):
            start = self.now()
            self.first.setdefault(phase, start)
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[phase] += self.now() - start

        setattr(owner, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="an experiment with trained components")
    parser.add_argument("--mixtures", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the issue's profile)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed seconds; cpu: this process's CPU seconds, which other work on a loaded"
                             " machine does not stretch (with one thread, the time the loop itself computes)")
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch
    from megatron.core.models.gpt import GPTModel

    import megatron_demix.eval.model as lm_model
    import megatron_demix.eval.proxies as proxies
    from megatron_demix.experiment import load_experiment

    torch.set_num_threads(args.threads)
    experiment = load_experiment(args.config)
    entries = mixtures(experiment, args.mixtures)
    clock = Clock(time.process_time if args.clock == "cpu" else time.perf_counter)
    if hasattr(proxies, "ProxyEvaluator"):
        clock.wrap(proxies.ProxyEvaluator, "refill", "refill")
        clock.wrap(proxies, "write_result", "write")
    else:  # the loop before issue 26 (commit 18499e0), for the "before" figures
        import megatron_demix.checkpoint.tensors as tensors

        clock.wrap(tensors, "fill_model", "refill")
        clock.wrap(proxies, "atomic_write_json", "write")
    clock.wrap(GPTModel, "forward", "forward")
    if hasattr(lm_model, "target_log_probs"):
        clock.wrap(lm_model, "target_log_probs", "log-probs")
    clock.wrap(proxies.TaskSuite, "run", "harness")
    clock.wrap(proxies, "result_record", "write")
    scratch = Path(tempfile.mkdtemp(prefix="eval_loop_bench_"))
    try:
        start = clock.now()
        proxies.evaluate_mixtures(experiment, entries, scratch, log=lambda line: None)
        end = clock.now()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    setup_seconds = clock.first["refill"] - start  # the loop starts with the first mixture's refill
    loop = end - clock.first["refill"]
    seconds = dict(clock.seconds)
    seconds["harness"] -= seconds["forward"] + seconds["log-probs"]
    seconds["other"] = loop - sum(seconds[p] for p in PHASES if p != "other")
    n = len(entries)
    print(f"\n{n} mixtures of {len(experiment.candidates)} components, {args.threads} thread(s), {args.clock} clock; set-up before the first"
          f" mixture: {setup_seconds:.2f} s\n")
    print("| phase | seconds per mixture | share |\n|---|---:|---:|")
    for phase in PHASES:
        print(f"| {phase} | {seconds[phase] / n:.3f} | {seconds[phase] / loop:.1%} |")
    print(f"| **total** | **{loop / n:.3f}** | 100% |")
    model = seconds["forward"] + seconds["log-probs"]
    print(f"\noutside the forward passes: {(loop - seconds['forward']) / loop:.1%} of the per-mixture time;"
          f" outside the model's compute (forward + log-probs): {(loop - model) / loop:.1%}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
