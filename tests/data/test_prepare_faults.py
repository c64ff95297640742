"""`demix prepare` faults (issue 9, items 2 and 3): stale data after a source or setting changes,
a killed tokenizer worker, a killed prepare's temporaries.

    .venv/bin/python -m pytest -q tests/data/test_prepare_faults.py
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from megatron_demix.experiment import experiment_from_dict
from megatron_demix.data.prepare import prepare
from tests.conftest import REPO


WORDS = "beta gamma delta river stone light north cloud paper iron seven green".split()


def _jsonl(path, documents: int, word: str = "alpha", extra_field: bool = False):
    """Documents of 40 to 50 varied words (the held-out ones also make the built-in evaluation tasks)."""
    rng = random.Random(documents)
    lines = []
    for i in range(documents):
        record = {"text": f"{word} document {i} " + " ".join(rng.choice(WORDS) for _ in range(40 + i % 10))}
        if extra_field:
            record["body"] = " ".join(rng.choice(WORDS) for _ in range(34))
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(tmp_path, source, **sections) -> dict:
    """general + the user's JSONL + another candidate, so the token prior can move."""
    others = {name: tmp_path / f"{name}.jsonl" for name in ("general", "other")}
    for name, path in others.items():
        if not path.exists():
            _jsonl(path, 400, word=name)
    config = {
        "name": "faults", "work_dir": str(tmp_path / "work"),
        "datasets": [{"name": "general", "role": "general", "path": str(others["general"])},
                     {"name": "user", "path": str(source), **sections.pop("user", {})},
                     {"name": "other", "path": str(others["other"])}],
        "tokenizer": {"vocab_size": 512, "train_megabytes": 0.05},
        "model": {"preset": "tiny"},
        "prepare": {"workers": 1, **sections.pop("prepare", {})},
    }
    return {**config, **sections}


def _prepare(config: dict) -> dict:
    return prepare(experiment_from_dict(config, "test"))


def _bin_mtime(config) -> int:
    return os.stat(f"{config['work_dir']}/data/user/user.bin").st_mtime_ns


def _prior(config) -> dict:
    return json.loads((REPO / config["work_dir"] / "data" / "token_prior.json").read_text())


def test_changed_source_is_tokenized_again_and_the_prior_follows(tmp_path):
    source = _jsonl(tmp_path / "user.jsonl", 400)
    config = _config(tmp_path, source)
    first, prior = _prepare(config), _prior(config)
    # More documents: re-tokenized, counts and token prior updated.
    _jsonl(source, 800)
    second = _prepare(config)
    assert second["user"]["documents"] == 800 and second["user"]["tokens"] > first["user"]["tokens"]
    assert _prior(config)["user"] > prior["user"]
    # Same size, other content (a size check alone would miss it).
    size = os.stat(source).st_size
    _jsonl(source, 800, word="omega")
    assert os.stat(source).st_size == size
    before = _bin_mtime(config)
    third = _prepare(config)
    assert _bin_mtime(config) != before and third["user"]["tokens"] != second["user"]["tokens"]
    # Touched but unchanged: still prepared, nothing re-tokenized.
    os.utime(source)
    before = _bin_mtime(config)
    assert _prepare(config)["user"]["tokens"] == third["user"]["tokens"] and _bin_mtime(config) == before


@pytest.mark.parametrize("change", [{"user": {"text_field": "body"}}, {"prepare": {"append_eod": False}}])
def test_changed_text_field_or_end_of_document_setting_is_tokenized_again(tmp_path, change):
    source = _jsonl(tmp_path / "user.jsonl", 400, extra_field=True)
    first = _prepare(_config(tmp_path, source))["user"]
    second = _prepare(_config(tmp_path, source, **change))["user"]
    assert second["documents"] == first["documents"] == 400
    assert second["tokens"] < first["tokens"]  # "body" is shorter; no EOD is one token fewer a document
    if "prepare" in change:
        assert second["tokens"] == first["tokens"] - 400


def _start_prepare(tmp_path, documents: int) -> tuple[subprocess.Popen, dict]:
    """`demix prepare` in its own process, on a JSONL big enough to keep one worker busy for seconds."""
    source = _jsonl(tmp_path / "user.jsonl", documents)
    config = _config(tmp_path, source, prepare={"chunk_documents": 16})
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen([sys.executable, "-m", "megatron_demix.cli", "prepare", "--config", str(path)],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, config


def _while_tokenizing_user(process, config) -> list[psutil.Process]:
    """Wait until the user dataset's temporary .bin exists; return the tokenizer worker processes."""
    data = tmp = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        data = os.path.join(config["work_dir"], "data", "user")
        tmp = [n for n in os.listdir(data) if "tmp-demix" in n] if os.path.isdir(data) else []
        workers = psutil.Process(process.pid).children()
        if tmp and workers:
            return workers
        time.sleep(0.05)
    raise AssertionError(f"prepare ended or never started the user dataset: {process.communicate()}")


def _leftovers(config) -> list[str]:
    return [os.path.join(d, n) for d, _, names in os.walk(config["work_dir"]) for n in names if "tmp-demix" in n]


def test_killed_worker_ends_prepare_with_a_clear_error_and_no_leftovers(tmp_path):
    process, config = _start_prepare(tmp_path, 10000)
    workers = _while_tokenizing_user(process, config)
    workers[0].kill()
    try:
        _, stderr = process.communicate(timeout=60)  # it used to wait forever here
    finally:
        process.kill()
    assert process.returncode == 1, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert lines == [lines[-1]] and "dataset 'user'" in lines[0] and "worker process died" in lines[0], stderr[-3000:]
    assert "Traceback" not in stderr
    assert _leftovers(config) == [] and not os.path.exists(f"{config['work_dir']}/data/user/token_count.json")
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def test_killed_prepare_leaves_temporaries_the_next_run_removes(tmp_path):
    process, config = _start_prepare(tmp_path, 10000)
    workers = _while_tokenizing_user(process, config)
    process.kill()
    process.communicate(timeout=60)
    left = _leftovers(config)
    assert left and all(os.path.basename(p).startswith((".user.bin.", ".user.idx.")) for p in left), left
    psutil.wait_procs(workers, timeout=10)  # the workers die with their parent (PR_SET_PDEATHSIG)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    counts = _prepare(config)
    assert counts["user"]["documents"] == 10000 and _leftovers(config) == []


@pytest.mark.parametrize("documents, fails", [(24, True), (25, False)])
def test_a_dataset_too_small_for_a_validation_split_is_refused(tmp_path, documents, fails):
    """megatron-core's GPTDataset loops forever on an empty validation split; training refuses it first, by name."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    from megatron_demix.config.base import ConfigError
    from megatron_demix.data.datasets import check_validation_split

    prefix = tmp_path / "tiny"
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=DType.optimal_dtype(4096))
    for d in range(documents):
        builder.add_document(np.arange(d, d + 20), [20])
    builder.finalize(f"{prefix}.idx")
    if fails:
        with pytest.raises(ConfigError, match=r"'tiny' .*tiny\.idx\): its 24 document\(s\) leave none .*at least 25"):
            check_validation_split(prefix, "tiny")
    else:
        check_validation_split(prefix, "tiny")
