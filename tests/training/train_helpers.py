"""Helpers for the training tests: a tiny prepared experiment, torchrun, log reading.

The experiment is made here rather than by `demix prepare` so the training tests depend only on
megatron-core's IndexedDatasetBuilder and stay small: a 512-token BPE, three synthetic domains
whose text is regular enough that a 1M-parameter model's loss falls within a few steps.
"""
from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import yaml

from tests.conftest import run_torchrun

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch" / "train_component.py"

TRAINING = dict(
    micro_batch_size=2, global_batch_size=4, lr=3e-3, min_lr=6e-4, lr_warmup_iters=2,
    base_train_iters=8, train_iters=4, save_interval=0, eval_interval=0, eval_iters=1, log_interval=1,
)


def _documents(domain: str, n: int, rng: random.Random) -> list[str]:
    common = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 7))) for _ in range(300)]
    words = common + {
        "general": "the a cat dog sat ran on under mat house big small red blue".split(),
        "code": "def return if else for in range x y z ( ) : + = print".split(),
        "math": "1 2 3 4 5 6 7 8 9 + - * = sum of and".split(),
    }[domain] * 20
    return [" ".join(rng.choice(words) for _ in range(rng.randint(40, 120))) for _ in range(n)]


def write_tiny_experiment(work: Path, **training) -> Path:
    """A prepared experiment in `work` (tokenizer + indexed datasets); returns its YAML path."""
    import numpy
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_demix.experiment import experiment_from_dict
    from megatron_demix.data.tokenizer import train_bpe

    config = {
        "name": "tiny", "work_dir": str(work),
        "datasets": [
            {"name": "general", "role": "general", "builtin": "prose"},
            {"name": "code", "builtin": "code"},
            {"name": "math", "builtin": "math"},
        ],
        "tokenizer": {"vocab_size": 512},
        "model": {"preset": "tiny", "seq_length": 64},
        "training": {**TRAINING, **training},
    }
    experiment = experiment_from_dict(config, "tiny")
    rng = random.Random(0)
    texts = {d: _documents(d, 300, rng) for d in ("general", "code", "math")}
    tokenizer = train_bpe((t for docs in texts.values() for t in docs), 512, experiment.paths.tokenizer)
    # A vocabulary that is a multiple of 128 x 2 pads the same at TP=1 and TP=2, so checkpoints reshard.
    assert tokenizer.vocab_size == 512, tokenizer.vocab_size
    for domain, docs in texts.items():
        prefix = experiment.paths.dataset_prefix(domain)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=numpy.int32)
        for doc in docs:
            tokens = numpy.array(tokenizer.tokenize(doc) + [tokenizer.eod], dtype=numpy.int32)
            builder.add_document(tokens, [len(tokens)])
        builder.finalize(f"{prefix}.idx")
    path = work / "tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def torchrun(nproc: int, *args, script: Path = LAUNCH, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `script` under torchrun with `nproc` gloo processes on this machine."""
    return run_torchrun(nproc, script, args, timeout)


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


def train_records(log_dir: Path, kind: str = "train") -> list[dict]:
    lines = (Path(log_dir) / "train.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def start_requeued_task(task: str) -> None:
    """Let a requeued SLURM task start without slurmctld's hold (BeginTime about two minutes on), but not
    in the same second as its previous run ended: slurmd revokes that run's job credential with
    one-second resolution, so a restart inside that second is killed ("Job credential revoked") and
    the task ends FAILED. Three seconds is past that, and still short for a test."""
    subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now+3"], check=True)


def with_training(tiny_config, tmp_path, **training):
    """The tiny experiment with `training:` keys set through the YAML (as a user would)."""
    data = yaml.safe_load(tiny_config.read_text())
    data["training"] = {**data["training"], **training}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
