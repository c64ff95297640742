"""Proxies: merged to disk == merged on load, many mixtures per job == separate runs, resumption, bad input."""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO

MIXTURES = [
    {"id": "m0", "mixture": {"code": 0.3, "math": 0.7}},
    {"id": "m1", "mixture": {"code": 0.8, "math": 0.2}},
    {"id": "m2", "mixture": {"code": 0.5, "math": 0.5}},
]
ENV = {**os.environ, "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def _launcher():
    """The module launch/eval_proxy.py is the front door of."""
    from megatron_demix.commands import eval_manifest

    return eval_manifest


def _manifest(path, entries):
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def _scores(lm, experiment):
    """A separate run: lm-eval's own simple_evaluate on the built-in tasks."""
    from megatron_demix.eval.proxies import simple_evaluate, task_manager, task_plan

    plan = task_plan(experiment)
    return simple_evaluate(lm, plan, task_manager(plan))["results"]


def test_merged_to_disk_scores_equal_merge_on_load(eval_experiment, tmp_path):
    from megatron_demix.commands.lm_eval import MegatronDemixLM

    _, experiment = eval_experiment
    code, math = (experiment.paths.checkpoint(n) for n in ("code", "math"))
    merged = tmp_path / "proxy"
    result = subprocess.run([sys.executable, "tools/merge/run.py", "--inputs", f"{code}:0.3", f"{math}:0.7", "--output", str(merged)],
                            capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    from_disk = MegatronDemixLM(pretrained=merged, batch_size=4)
    disk_params = {k: v.clone() for k, v in from_disk.model.state_dict().items() if isinstance(v, torch.Tensor)}
    disk_scores = _scores(from_disk, experiment)
    on_load = MegatronDemixLM(components=f"{code};{math}", weights="0.3;0.7", batch_size=4)
    for key, value in on_load.model.state_dict().items():
        if isinstance(value, torch.Tensor) and "embedding" not in key and "output_layer" not in key:
            assert torch.equal(value, disk_params[key]), key
    # The vocabulary rows (the padded tail differs by layout only) are equal where tokens live.
    vocab = on_load.tokenizer.vocab_size
    embedding = "embedding.word_embeddings.weight"
    assert torch.equal(on_load.model.state_dict()[embedding][:vocab], disk_params[embedding][:vocab])
    assert _scores(on_load, experiment) == disk_scores


def test_many_mixtures_equal_separate_runs_and_killed_job_resumes(eval_experiment, tmp_path):
    from megatron_demix.commands.lm_eval import MegatronDemixLM

    config, experiment = eval_experiment
    manifest = _manifest(tmp_path / "round.jsonl", MIXTURES)
    out = tmp_path / "evals"
    command = [sys.executable, "launch/eval_proxy.py", "--config", str(config), "--manifest", str(manifest), "--output-dir", str(out)]
    job = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (out / "m0.json").exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.communicate()
    first = sorted(p.name for p in out.glob("*.json"))
    assert 1 <= len(first) < len(MIXTURES), f"kill came too late or too early: {first}"
    stamps = {name: (out / name).stat().st_mtime_ns for name in first}

    rerun = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert f"{len(first)} already evaluated, {len(MIXTURES) - len(first)} to evaluate" in rerun.stdout
    assert sum(line.startswith("[eval] ") and "/" in line.split()[1] for line in rerun.stdout.splitlines()) == len(MIXTURES) - len(first)
    assert {name: (out / name).stat().st_mtime_ns for name in first} == stamps  # not redone
    assert not list(out.glob(".*"))  # no temporaries left

    for entry in MIXTURES:
        record = json.loads((out / f"{entry['id']}.json").read_text())
        assert record["mixture"] == entry["mixture"] and set(record["domains"]) == {"general", "code", "math"}
        assert record["metric_names"]["demix_code_bpb"] == "bits_per_byte,none"
        assert record["lm_eval"]["task_versions"]["demix_code_choice"] == 1.0
        separate = MegatronDemixLM(experiment=str(config), mixture=entry["mixture"], batch_size=experiment.eval.batch_size)
        results = _scores(separate, experiment)
        for task, metric in record["metric_names"].items():
            assert results[task][metric] == record["metrics"][task], (entry["id"], task)
        assert record["domains"]["code"] == pytest.approx(
            (record["metrics"]["demix_code_choice"] - record["metrics"]["demix_code_bpb"]) / 2)
        # bits per byte gets the standard error lm-eval leaves out, so every domain has one
        assert 0 < record["stderrs"]["demix_code_bpb"] < record["metrics"]["demix_code_bpb"]
        assert record["domain_stderrs"]["code"] == pytest.approx(
            math.hypot(record["stderrs"]["demix_code_choice"], record["stderrs"]["demix_code_bpb"]) / 2)


def test_merge_on_load_fallback_gives_the_cached_results(eval_experiment, tmp_path):
    import dataclasses

    from megatron_demix.eval.proxies import evaluate_mixtures

    _, experiment = eval_experiment
    lines = []
    for mode in ("always", "never"):
        settings = dataclasses.replace(experiment.eval, cache_components=mode)
        results = evaluate_mixtures(dataclasses.replace(experiment, eval=settings), MIXTURES[:1], tmp_path / mode,
                                    ["demix_math_choice"], log=lines.append)
        assert results["m0"]["metrics"]
    assert any("holding the components in memory" in line for line in lines)
    assert any("merging on load from disk" in line and "GB available" in line for line in lines)
    cached, streamed = (json.loads((tmp_path / mode / "m0.json").read_text()) for mode in ("always", "never"))
    assert cached["metrics"] == streamed["metrics"]


# --- bad input: clear errors naming the input, no result file -------------------------------------

def test_unknown_task_is_refused_before_any_evaluation(eval_experiment, tmp_path, capsys):
    config, _ = eval_experiment
    code = _launcher().main(["--config", str(config), "--manifest", str(_manifest(tmp_path / "m.jsonl", MIXTURES[:1])),
                             "--output-dir", str(tmp_path / "out"), "--tasks", "demix_code_choice", "no_such_task"])
    assert code == 2
    assert "unknown lm-eval task(s) no_such_task" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_manifest_line_that_is_not_a_mixture_of_the_experiment(eval_experiment, tmp_path, capsys):
    config, _ = eval_experiment
    manifest = _manifest(tmp_path / "m.jsonl", [MIXTURES[0], {"id": "bad", "mixture": {"code": 0.5, "poetry": 0.5}}])
    code = _launcher().main(["--config", str(config), "--manifest", str(manifest), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{manifest} line 2" in err and "missing: math" in err and "unknown: poetry" in err
    assert not (tmp_path / "out").exists()


def test_components_with_different_shapes(eval_experiment, tmp_path):
    from megatron_demix.commands.lm_eval import MegatronDemixLM
    from megatron_demix.merge.io import MergeError

    _, experiment = eval_experiment
    other = tmp_path / "wider"
    shutil.copytree(experiment.paths.checkpoint("math"), other)
    (metadata_file,) = other.rglob(".metadata")
    metadata = pickle.loads(metadata_file.read_bytes())
    key = "decoder.final_layernorm.weight"
    metadata.state_dict_metadata[key].size = torch.Size([128])
    metadata_file.write_bytes(pickle.dumps(metadata))
    with pytest.raises(MergeError, match=rf"{key} has shape \(128,\)"):
        MegatronDemixLM(components=f"{experiment.paths.checkpoint('code')};{other}", weights="0.5;0.5")


def test_weights_that_do_not_match_the_components(eval_experiment):
    from megatron_demix.eval.config import EvalInputError
    from megatron_demix.commands.lm_eval import MegatronDemixLM

    _, experiment = eval_experiment
    with pytest.raises(EvalInputError, match=r"weights='1' gives 1 weight\(s\) for the 2 components"):
        MegatronDemixLM(components=f"{experiment.paths.checkpoint('code')};{experiment.paths.checkpoint('math')}", weights="1")
