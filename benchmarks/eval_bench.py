"""Cost per proxy of the three ways to score mixtures, and generation speed with the KV cache.

    .venv/bin/python benchmarks/eval_bench.py --work /tmp/eval_bench          # CPU: ~5 minutes
    .venv/bin/python benchmarks/eval_bench.py --work /tmp/eval_bench --mixtures 4 --new-tokens 64

1. Unless --work holds them: `demix prepare` of a 4-dataset experiment of built-in corpora
   (general + 3 candidates; this also writes the built-in lm-eval tasks), then a tiny base and
   3 components trained briefly with launch/train_component.py (torchrun).
2. Cost per proxy for --mixtures random mixtures on the built-in tasks (8 tasks: choice + bits
   per byte per dataset), side by side in this one process:
   (a) merge to disk with `tools/merge/run.py` (its own process, as users run it), then load
       the proxy from disk and evaluate;
   (b) merge-on-load: `MegatronDemixLM(experiment=..., mixture=...)` reads the components chunk
       by chunk for every proxy;
   (c) many mixtures per job: `evaluate_mixtures` loads the components once and refills the model
       in place per mixture.
   (a) and (b) evaluate each proxy with lm-eval's `simple_evaluate` (as a separate run would; one
   TaskManager over the built-in tasks, made once); (c) loads the tasks once (`TaskSuite`).
3. greedy `generate_until`-style generation of --new-tokens tokens for 4 prompts, with the
   megatron-core KV cache and without it (every step re-runs the prefix): tokens/s, on the tiny
   trained base and on a ~25M-parameter model with random weights (GENERATION_MODELS).
Prints a markdown table with ratios to (a) and to the uncached generation.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EXPERIMENT = {
    "name": "evalbench",
    "datasets": [
        {"name": "general", "role": "general", "builtin": "prose"},
        {"name": "code", "builtin": "code"},
        {"name": "math", "builtin": "math"},
        {"name": "web", "builtin": "prose"},
    ],
    "tokenizer": {"vocab_size": 2048},
    "prepare": {"workers": 2, "builtin_megabytes": 0.3},
    "model": {"preset": "tiny", "seq_length": 64},
    "training": {"micro_batch_size": 2, "global_batch_size": 4, "base_train_iters": 8, "train_iters": 4,
                 "save_interval": 0, "eval_interval": 0, "eval_iters": 1, "log_interval": 4},
    "eval": {"batch_size": 8, "builtin_questions": 20, "builtin_documents": 4},
}


def setup(work: Path) -> Path:
    """The experiment file, prepared and trained once under `work`."""
    import yaml

    from megatron_demix.experiment import load_experiment
    from megatron_demix.data.prepare import prepare

    config = work / "experiment.yaml"
    work.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({**EXPERIMENT, "work_dir": str(work)}, sort_keys=False))
    experiment = load_experiment(config)
    prepare(experiment)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for model in ["base"] + [d.name for d in experiment.candidates]:
        if not (experiment.paths.checkpoint(model) / "latest_checkpointed_iteration.txt").exists():
            print(f"training {model}", flush=True)
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                            str(REPO / "launch" / "train_component.py"), "--config", str(config), "--component", model],
                           check=True, env=env, capture_output=True)
    return config


def mixtures(experiment, count: int) -> list[dict]:
    rng = random.Random(0)
    names = [d.name for d in experiment.candidates]
    out = []
    for i in range(count):
        raw = [rng.random() for _ in names]
        weights = [w / sum(raw) for w in raw]
        weights[-1] = 1.0 - sum(weights[:-1])
        out.append({"id": f"m{i}", "mixture": dict(zip(names, weights))})
    return out


def time_paths(config: Path, entries: list[dict], scratch: Path) -> dict[str, float]:
    """Seconds per proxy of (a), (b), (c); checks that the three give the same scores."""
    from megatron_demix.experiment import load_experiment
    from megatron_demix.commands.lm_eval import MegatronDemixLM
    from megatron_demix.eval.proxies import evaluate_mixtures, simple_evaluate, task_manager, task_plan

    experiment = load_experiment(config)
    plan = task_plan(experiment)
    manager = task_manager(plan)
    batch = experiment.eval.batch_size
    scores: dict[str, list] = {"a": [], "b": [], "c": []}
    seconds = {}

    start = time.perf_counter()
    for entry in entries:
        mixture_file, proxy = scratch / f"{entry['id']}.json", scratch / f"proxy-{entry['id']}"
        mixture_file.write_text(json.dumps(entry["mixture"]))
        subprocess.run([sys.executable, str(REPO / "tools" / "merge" / "run.py"), "--config", str(config),
                        "--mixture", str(mixture_file), "--output", str(proxy)], check=True, capture_output=True)
        lm = MegatronDemixLM(pretrained=proxy, batch_size=batch)
        scores["a"].append(simple_evaluate(lm, plan, manager)["results"])
        shutil.rmtree(proxy)
    seconds["a"] = (time.perf_counter() - start) / len(entries)

    start = time.perf_counter()
    for entry in entries:
        lm = MegatronDemixLM(experiment=str(config), mixture=entry["mixture"], batch_size=batch)
        scores["b"].append(simple_evaluate(lm, plan, manager)["results"])
    seconds["b"] = (time.perf_counter() - start) / len(entries)

    start = time.perf_counter()
    results = evaluate_mixtures(experiment, entries, scratch / "many", log=lambda line: None)
    seconds["c"] = (time.perf_counter() - start) / len(entries)
    scores["c"] = [results[e["id"]]["lm_eval"]["results"] for e in entries]
    for path in ("a", "b"):
        if scores[path] != scores["c"]:
            print(f"WARNING: scores of ({path}) differ from (c)", file=sys.stderr)
    return seconds


GENERATION_MODELS = {
    "tiny": None,  # the trained base of the experiment
    "medium": {"num_layers": 8, "hidden_size": 512, "ffn_hidden_size": 1536, "num_attention_heads": 8,
               "num_query_groups": 4, "seq_length": 256, "max_position_embeddings": 256},
}
"""Models generation is timed on: the tiny trained base, and random weights of a ~25M-parameter
model (speed does not depend on the weights), where compute rather than per-step overhead counts."""


def time_generation(config: Path, new_tokens: int, size: str, repeats: int = 2) -> dict[str, float]:
    """Tokens per second of greedy generation for 4 prompts, with and without the KV cache."""
    from megatron_demix.model.inference import inference_model
    from megatron_demix.config.base import build
    from megatron_demix.eval.generate import greedy_generate
    from megatron_demix.commands.lm_eval import MegatronDemixLM
    from megatron_demix.model.config import ModelConfig

    lm = MegatronDemixLM(pretrained=load_checkpoint_path(config), batch_size=4)
    model = lm.model
    if GENERATION_MODELS[size] is not None:
        shape = build(ModelConfig, GENERATION_MODELS[size], "generation model")
        model = inference_model(shape, lm.tokenizer.vocab_size, seed=lm.experiment.training.seed)
    prompts = [lm.tok_encode(t) for t in ("def main ( ) :", "The history of", "3 + 4 =", "import os\nimport")]
    rates, outputs = {True: 0.0, False: 0.0}, {}
    for use_cache in (True, False):  # warm-up: first-call allocations and caches stay out of the timings
        greedy_generate(model, prompts, 4, lm.tokenizer.vocab_size, use_cache=use_cache)
    for _ in range(repeats):  # interleaved; the best of `repeats` (the machine may be shared)
        for use_cache in (True, False):
            start = time.perf_counter()
            outputs[use_cache] = greedy_generate(model, prompts, new_tokens, lm.tokenizer.vocab_size, use_cache=use_cache)
            rate = sum(map(len, outputs[use_cache])) / (time.perf_counter() - start)
            rates[use_cache] = max(rates[use_cache], rate)
    if outputs[True] != outputs[False]:
        print("WARNING: cached and uncached generations differ", file=sys.stderr)
    params = sum(p.numel() for p in model.parameters())
    return {"cache": rates[True], "no_cache": rates[False], "params": params}


def load_checkpoint_path(config: Path) -> Path:
    from megatron_demix.experiment import load_experiment

    return load_experiment(config).paths.checkpoint("base")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "eval_bench")
    parser.add_argument("--mixtures", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--skip-costs", action="store_true", help="only the generation figures")
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch

    from megatron_demix.experiment import load_experiment
    from megatron_demix.runtime import device

    config = setup(args.work)
    experiment = load_experiment(config)
    where = torch.cuda.get_device_name() if device.is_gpu_host() else f"CPU ({torch.get_num_threads()} threads)"
    if not args.skip_costs:
        scratch = Path(tempfile.mkdtemp(prefix="eval_bench_", dir=args.work))
        try:
            costs = time_paths(config, mixtures(experiment, args.mixtures), scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        print(f"\ndevice: {where}; {args.mixtures} mixtures of {len(experiment.candidates)} components, built-in tasks")
        print("| path | seconds per proxy | vs (a) |\n|---|---:|---:|")
        labels = {"a": "(a) merge to disk, evaluate from disk", "b": "(b) merge-on-load", "c": "(c) many mixtures per job"}
        for key, label in labels.items():
            print(f"| {label} | {costs[key]:.2f} | {costs['a'] / costs[key]:.2f}x cheaper |")
    print(f"\ndevice: {where}; greedy generation, {args.new_tokens} new tokens x 4 prompts")
    print("| model | tokens/s without KV cache | with KV cache | ratio |\n|---|---:|---:|---:|")
    for size in GENERATION_MODELS:
        gen = time_generation(config, args.new_tokens, size)
        print(f"| {size} ({gen['params'] / 1e6:.1f}M params) | {gen['no_cache']:.1f} | {gen['cache']:.1f} |"
              f" {gen['cache'] / gen['no_cache']:.2f}x |")

if __name__ == "__main__":
    main()
