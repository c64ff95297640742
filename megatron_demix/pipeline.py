"""The DeMix stages as jobs: what `demix train` and `demix demo` run.

Every stage submits the project's scripts in `slurm/` through one executor (cluster/executor.py):
sbatch on a SLURM cluster, or the same scripts run here when there is none. Each job names its
stage (JobSpec.stage), so it gets that stage's resources from the experiment's `cluster.stages`.
Stages skip work that is already complete, so a killed demo re-runs from where it stopped.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from megatron_demix.checkpoint.layout import read_tracker
from megatron_demix.cluster.executor import Executor, JobSpec
from megatron_demix.runtime.files import atomic_write_json

log = logging.getLogger(__name__)


def prepare_data(config_path: Path, executor: Executor) -> None:
    """Tokenizer and indexed datasets as a job (at paper scale it is hours of CPU work, not the login node's)."""
    executor.submit(JobSpec("prepare", "slurm/prepare.sh", [str(config_path)], stage="prepare")).wait()


def train_models(experiment, config_path: Path, executor: Executor, ranks: int) -> None:
    """The base (general data), then one component per candidate as an array job, each on `ranks` processes."""
    script, args = "slurm/train_component.sh", [str(config_path)]
    executor.submit(JobSpec("train-base", script, args, ntasks=ranks, env={"DEMIX_COMPONENT": "base"}, stage="train")).wait()
    executor.submit(JobSpec("train", script, args, array=len(experiment.candidates), ntasks=ranks, stage="train")).wait()


def demo_mixtures(experiment) -> dict[str, dict[str, float]]:
    """The token prior plus, per candidate, a mixture leaning 80% on it: proxies that should differ."""
    prior = json.loads(experiment.paths.token_prior.read_text())
    names = list(prior)
    mixtures = {"prior": prior}
    for name in names:
        rest = (1 - 0.8) / max(len(names) - 1, 1)
        mixtures[f"mostly-{name}"] = {n: 0.8 if n == name else rest for n in names}
    return mixtures


def build_proxies(experiment, config_path: Path, executor: Executor, mixtures: dict[str, dict[str, float]]) -> dict[str, Path]:
    """Merge one proxy per mixture (an MPI job each, `merge.ranks` ranks); existing proxies are kept."""
    proxies, jobs = {}, []
    for name, mixture in mixtures.items():
        output = experiment.paths.proxies / name
        proxies[name] = output
        if read_tracker(output) is not None:
            continue
        mixture_file = experiment.paths.proxies / f"{name}.mixture.json"
        atomic_write_json(mixture_file, mixture)
        args = ["--config", str(config_path), "--mixture", str(mixture_file), "--output", str(output), "--overwrite"]
        jobs.append(executor.submit(JobSpec(f"merge-{name}", "slurm/merge.sh", args, ntasks=experiment.merge.ranks, stage="merge")))
    for job in jobs:
        job.wait()
    return proxies


def evaluate_losses(config_path: Path, checkpoints: dict[str, Path], output: Path) -> dict[str, dict[str, float]]:
    """Validation loss per domain of each checkpoint, in a separate process (it starts its own process group)."""
    command = [sys.executable, "-m", "megatron_demix.eval.loss", "--config", str(config_path), "--output", str(output)]
    for path in checkpoints.values():
        command += ["--checkpoint", str(path)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    by_path = json.loads(output.read_text())
    return {name: by_path[str(path)] for name, path in checkpoints.items()}


def plot_losses(losses: dict[str, dict[str, float]], domains: list[str], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(losses) * len(domains) / 2, 4))
    width = 0.8 / len(losses)
    for i, (model, per_domain) in enumerate(losses.items()):
        ax.bar([d + i * width for d in range(len(domains))], [per_domain[d] for d in domains], width, label=model)
    ax.set_xticks([d + 0.4 - width / 2 for d in range(len(domains))], domains)
    ax.set_ylabel("validation loss (lower is better)")
    ax.set_title("Held-out loss per domain: base, components, merged proxies")
    low = min(min(v.values()) for v in losses.values())
    ax.set_ylim(bottom=max(0.0, low - 0.5))
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)


def format_table(losses: dict[str, dict[str, float]], mixtures: dict[str, dict[str, float]], domains: list[str]) -> str:
    width = max(map(len, losses)) + 2
    lines = [f"{'model':<{width}}{'mixture':<28}" + "".join(f"{d:>10}" for d in domains)]
    for model, per_domain in losses.items():
        mixture = ", ".join(f"{k} {v:.2f}" for k, v in mixtures.get(model, {}).items()) or "-"
        lines.append(f"{model:<{width}}{mixture:<28}" + "".join(f"{per_domain[d]:>10.3f}" for d in domains))
    return "\n".join(lines)


def run_demo(experiment, config_path: Path, executor: Executor, ranks: int) -> dict:
    """prepare -> base + components -> proxies for a few mixtures -> per-domain losses, table and plot."""
    timings = {}
    start = time.perf_counter()
    prepare_data(config_path, executor)
    timings["prepare"] = time.perf_counter() - start
    start = time.perf_counter()
    train_models(experiment, config_path, executor, ranks)
    timings["train"] = time.perf_counter() - start
    mixtures = demo_mixtures(experiment)
    start = time.perf_counter()
    proxies = build_proxies(experiment, config_path, executor, mixtures)
    timings["merge"] = time.perf_counter() - start
    paths = experiment.paths
    checkpoints = {"base": paths.checkpoint("base"), **{d.name: paths.checkpoint(d.name) for d in experiment.candidates},
                   **{f"proxy:{name}": path for name, path in proxies.items()}}
    start = time.perf_counter()
    losses = evaluate_losses(config_path, checkpoints, paths.root / "report" / "losses.json")
    timings["evaluate"] = time.perf_counter() - start
    domains = [d.name for d in experiment.datasets]
    plot_losses(losses, domains, paths.root / "report" / "losses.png")
    report = {"mixtures": mixtures, "losses": losses, "seconds": {k: round(v, 1) for k, v in timings.items()},
              "executor": type(executor).__name__}
    atomic_write_json(paths.root / "report" / "demo.json", report)
    table = format_table(losses, {f"proxy:{k}": v for k, v in mixtures.items()}, domains)
    (paths.root / "report" / "demo.txt").write_text(table + "\n")
    return {**report, "table": table}
