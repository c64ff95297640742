"""eval.command naming {hf_checkpoint}: each mixture's proxy is exported as a Hugging Face model directory (streamed
from the components) that `transformers` loads, through the search's real task arrays; it is deleted after its
evaluation unless eval.keep_proxies; lm-eval's results become the flat metrics file the command writes."""
from __future__ import annotations

import json
import os
import sys

import pytest
import yaml

from tests.hf.hf_helpers import safetensors_of

MIXTURES = [{"id": "m0", "mixture": {"code": 0.25, "math": 0.75}}, {"id": "m1", "mixture": {"code": 0.9, "math": 0.1}}]
UP = "model.layers.1.mlp.up_proj.weight"

# The harness: transformers loads the exported proxy and reports two numbers of one of its weights.
LOAD_AND_MEASURE = (
    f"{sys.executable} -c \"import json, sys, transformers; m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]);"
    " w = m.model.layers[1].mlp.up_proj.weight.double();"
    " json.dump({'up_sum': w.sum().item(), 'up_first': w[0, 0].item()}, open(sys.argv[2], 'w'))\" {hf_checkpoint} {output}"
)


def _with_eval(eval_experiment, tmp_path, **eval_section):
    from megatron_demix.experiment import load_experiment

    config, _ = eval_experiment
    data = yaml.safe_load(config.read_text())  # same work_dir: its components
    data["eval"] = eval_section
    data["search"] = {"mixtures_per_task": 2, "max_retries": 0, "poll_seconds": 0.5}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, load_experiment(path)


def test_each_mixture_is_evaluated_on_its_own_exported_proxy(eval_experiment, tmp_path):
    from megatron_demix.cluster.executor import LocalExecutor
    from megatron_demix.hf.export import export_checkpoint
    from megatron_demix.search.rounds import Runner, evaluate_round
    from megatron_demix.search.state import RoundPaths

    config, experiment = _with_eval(eval_experiment, tmp_path, command=LOAD_AND_MEASURE)
    runner = Runner.make(LocalExecutor(experiment.cluster, tmp_path / "logs"), config, experiment)
    outcome = evaluate_round(RoundPaths(tmp_path / "round-0"), MIXTURES, runner)
    assert not outcome["failed"], outcome["failed"]

    # Expected: the weighted sum of the components' own weights, computed here from their separate exports.
    components = {name: safetensors_of(export_checkpoint(experiment.paths.checkpoint(name), tmp_path / name))[UP].double()
                  for name in ("code", "math")}
    for item in MIXTURES:
        expected = sum(w * components[name] for name, w in item["mixture"].items())
        metrics = outcome["results"][item["id"]]["metrics"]
        assert metrics["up_sum"] == pytest.approx(expected.sum().item(), rel=1e-5, abs=1e-5)
        assert metrics["up_first"] == pytest.approx(expected[0, 0].item(), rel=1e-5)
        assert not (tmp_path / "round-0" / "work" / item["id"] / "hf_checkpoint").exists()  # removed after its evaluation
    assert outcome["results"]["m0"]["metrics"] != outcome["results"]["m1"]["metrics"]


def test_keep_proxies_leaves_the_exported_proxy(eval_experiment, tmp_path):
    from megatron_demix.commands.evaluate import evaluate_batch

    check = "test -f {hf_checkpoint}/config.json && echo '{\"found\": 1}' > {output}"
    config, _ = _with_eval(eval_experiment, tmp_path, command=check, keep_proxies=True)
    results = tmp_path / "results"
    assert evaluate_batch(str(config), MIXTURES[:1], str(results))["evaluated"] == ["m0"]
    assert json.loads((results / "m0.json").read_text())["metrics"] == {"found": 1.0}
    kept = tmp_path / "work" / "m0" / "hf_checkpoint"
    assert json.loads((kept / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert (kept / "model.safetensors").is_file() and (kept / "tokenizer.json").is_file()


# lm-eval's own evaluation and results file, as its CLI writes them under --output_path (with its `dummy` model: the
# file's format is the point, not the scores), without the CLI's minute of indexing every built-in task.
LM_EVAL_RUN = """import sys
from lm_eval import simple_evaluate
from lm_eval.loggers import EvaluationTracker
from lm_eval.models.dummy import DummyLM
from lm_eval.tasks import TaskManager
tracker = EvaluationTracker(output_path=sys.argv[2])
results = simple_evaluate(model=DummyLM(), tasks=["demix_code_choice"], limit=4, evaluation_tracker=tracker,
                          task_manager=TaskManager(include_path=sys.argv[1], include_defaults=False))
tracker.save_results_aggregated(results=results, samples=None)
"""


def test_lm_eval_results_become_the_flat_metrics_file(eval_experiment, tmp_path, capsys):
    """The README recipe's second half: lm-eval's --output_path flattened into eval.command's {output}."""
    import subprocess

    from megatron_demix.eval.flatten import main as flatten
    from tests.conftest import REPO

    _, experiment = eval_experiment
    lm_eval = subprocess.run(
        [sys.executable, "-c", LM_EVAL_RUN, str(experiment.paths.eval_tasks), str(tmp_path / "lm_eval")], cwd=REPO,
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert lm_eval.returncode == 0, lm_eval.stderr[-3000:]
    (raw,) = (tmp_path / "lm_eval").rglob("results_*.json")
    values = json.loads(raw.read_text())["results"]["demix_code_choice"]

    assert flatten([str(tmp_path / "lm_eval"), str(tmp_path / "metrics.json")]) == 0
    flat = json.loads((tmp_path / "metrics.json").read_text())
    assert flat == {"demix_code_choice": values["acc,none"], "demix_code_choice/acc,none": values["acc,none"],
                    "demix_code_choice/acc_norm,none": values["acc_norm,none"]}
    (tmp_path / "mixture.json").write_text(json.dumps(MIXTURES[0]["mixture"]))  # a JSON that is no lm-eval results file
    for source, message in [("mixture.json", "not an lm-eval results file"), ("nothing", "no lm-eval results (results_*.json)")]:
        assert flatten([str(tmp_path / source), str(tmp_path / "x.json")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
