"""Data preparation: indexed datasets megatron-core can read, exact token counts, clear errors."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from megatron_demix.experiment import experiment_from_dict
from megatron_demix.data.builtin import builtin_documents
from megatron_demix.data.prepare import dataset_source, prepare
from megatron_demix.data.readers import DataError, iter_documents
from megatron_demix.data.tokenizer import TokenizerError, load_tokenizer


def test_builtin_corpora_are_deterministic_and_distinct():
    for name in ("prose", "code", "math"):
        first, second = list(builtin_documents(name, 0.05)), list(builtin_documents(name, 0.05))
        assert first == second and len(first) > 1
    assert "def " in "".join(builtin_documents("code", 0.05))
    assert "Solution:" in "".join(builtin_documents("math", 0.05))


def test_prepared_datasets_load_in_megatron_and_counts_match_direct_tokenization(prepared_demo):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    experiment = prepared_demo
    tokenizer = load_tokenizer(experiment.paths.tokenizer)
    for dataset in experiment.datasets:
        prefix = experiment.paths.dataset_prefix(dataset.name)
        index = IndexedDataset(str(prefix))
        texts = [t for t, _ in iter_documents(dataset, dataset_source(experiment, dataset))]
        direct = [tokenizer.tokenize(t) + [tokenizer.eod] for t in texts]
        record = json.loads(experiment.paths.token_count(dataset.name).read_text())
        assert record["documents"] == len(direct) == len(index.document_indices) - 1
        assert record["tokens"] == sum(map(len, direct)) == int(index.sequence_lengths.sum())
        # Same tokens in the same order, first and last document.
        assert list(index[0]) == direct[0]
        assert list(index[len(direct) - 1]) == direct[-1]
    prior = json.loads(experiment.paths.token_prior.read_text())
    assert set(prior) == {d.name for d in experiment.candidates}
    assert sum(prior.values()) == pytest.approx(1.0)


def test_prepared_data_builds_a_gpt_dataset(prepared_demo):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    tokenizer = load_tokenizer(prepared_demo.paths.tokenizer)
    config = GPTDatasetConfig(
        random_seed=1, sequence_length=64, blend=([str(prepared_demo.paths.dataset_prefix("code_high"))], None),
        split="1,0,0", tokenizer=tokenizer, reset_position_ids=False, reset_attention_mask=False,
        eod_mask_loss=False, path_to_cache=str(prepared_demo.paths.data / "cache"),
    )
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [100, 0, 0], lambda: True, config).build()
    sample = train[0]
    assert sample["tokens"].shape == (64,) and int(sample["tokens"].max()) < tokenizer.vocab_size


RERUN_PROBE = """
import sys
from megatron_demix.data.prepare import prepare
from megatron_demix.experiment import experiment_from_dict
experiment = experiment_from_dict({config!r}, "demo")
prepare(experiment)
print("torch" in sys.modules)
"""


def test_rerun_skips_finished_datasets_and_tasks_without_megatron(prepared_demo, demo_config_dict):
    """A complete preparation is checked from its records alone (no megatron-core, no torch: every pipeline run
    starts with it); changed task settings rewrite the built-in tasks, and only them."""
    import subprocess
    import sys

    from megatron_demix.data.builtin_tasks import tasks_dir

    def stamps(pattern):
        return {p: p.stat().st_mtime_ns for p in sorted(prepared_demo.paths.root.glob(pattern))}

    data, tasks = stamps("data/*/*.bin"), stamps("eval/tasks/*/*.jsonl")
    config = {**demo_config_dict, "work_dir": str(prepared_demo.work_dir)}
    out = subprocess.run([sys.executable, "-c", RERUN_PROBE.format(config=config)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == "False"
    assert stamps("data/*/*.bin") == data and stamps("eval/tasks/*/*.jsonl") == tasks and data and tasks

    choice = tasks_dir(prepared_demo) / "code" / "choice.jsonl"
    items = len(choice.read_text().splitlines())
    prepare(experiment_from_dict({**config, "eval": {**config.get("eval", {}), "builtin_questions": 3}}, "demo"))
    assert stamps("data/*/*.bin") == data
    assert len(choice.read_text().splitlines()) == 3 < items
    prepare(prepared_demo)  # and back, for the other tests of the session
    assert len(choice.read_text().splitlines()) == items


def test_a_copied_work_dir_is_not_prepared_again_and_its_tasks_name_the_copy(prepared_demo, demo_config_dict, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(prepared_demo.work_dir, copy)
    moved = experiment_from_dict({**demo_config_dict, "work_dir": str(copy)}, "demo")
    records = {d.name: moved.paths.token_count(d.name).read_text() for d in moved.datasets}
    prepare(moved)
    assert {d.name: moved.paths.token_count(d.name).read_text() for d in moved.datasets} == records  # not re-tokenized
    for task in (copy / "eval" / "tasks").glob("*.yaml"):
        assert str(copy) in task.read_text() and str(prepared_demo.work_dir) not in task.read_text()


def _experiment(tmp_path, demo_config_dict, **dataset):
    datasets = [{"name": "general", "role": "general", "builtin": "math"}, {"name": "user", **dataset}]
    return experiment_from_dict({**demo_config_dict, "work_dir": str(tmp_path / "work"), "datasets": datasets,
                                 "prepare": {"builtin_megabytes": 0.05, "workers": 1}}, "test")


def _leftovers(experiment):
    data = experiment.paths.data / "user"
    return sorted(p.name for p in data.iterdir()) if data.exists() else []


def test_user_jsonl_with_custom_field_and_text_files(tmp_path, demo_config_dict):
    jsonl = tmp_path / "notes.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": f"note number {i}"}) for i in range(5)) + "\n")
    experiment = _experiment(tmp_path, demo_config_dict, path=str(jsonl), text_field="body")
    assert prepare(experiment)["user"]["documents"] == 5
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.txt").write_text(f"plain text file {i}\n")
    experiment = _experiment(tmp_path / "b", demo_config_dict, path=str(folder))
    assert prepare(experiment)["user"]["documents"] == 3


def test_existing_indexed_dataset_is_used_as_it_is(prepared_demo, tmp_path, demo_config_dict):
    source = prepared_demo.paths.dataset_prefix("code_high")
    experiment = _experiment(tmp_path, demo_config_dict, path=str(source))
    experiment = experiment_from_dict({**demo_config_dict, "work_dir": experiment.work_dir,
                                       "datasets": [{"name": "general", "role": "general", "builtin": "math"},
                                                    {"name": "user", "path": str(source)}],
                                       "tokenizer": {"path": str(prepared_demo.paths.tokenizer)},
                                       "prepare": {"builtin_megabytes": 0.05, "workers": 1}}, "test")
    counts = prepare(experiment)
    expected = json.loads(prepared_demo.paths.token_count("code_high").read_text())["tokens"]
    assert counts["user"]["tokens"] == expected
    assert os.path.realpath(f"{experiment.paths.dataset_prefix('user')}.bin") == os.path.realpath(f"{source}.bin")


@pytest.mark.parametrize("content, message", [
    ('{"text": "fine"}\n{"text": "broken\n', ":2: not valid JSON"),
    ('{"text": "fine"}\n{"body": "x"}\n', ":2: no field 'text' (fields: body)"),
    ('{"text": 5}\n', ":1: field 'text' is int"),
    ('\n\n', "has no documents"),
])
def test_bad_jsonl_fails_with_file_and_line_and_leaves_nothing(tmp_path, demo_config_dict, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    experiment = _experiment(tmp_path, demo_config_dict, path=str(bad))
    with pytest.raises(DataError, match=re.escape(message)) as error:
        prepare(experiment)
    assert str(bad) in str(error.value)
    assert _leftovers(experiment) == []
    assert not experiment.paths.token_prior.exists()


def test_missing_path_and_unreadable_tokenizer(tmp_path, demo_config_dict):
    experiment = _experiment(tmp_path, demo_config_dict, path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="nope.jsonl: dataset 'user' not found"):
        prepare(experiment)
    garbage = tmp_path / "tokenizer.json"
    garbage.write_text("{not a tokenizer")
    with pytest.raises(TokenizerError, match="cannot read the tokenizer"):
        load_tokenizer(garbage)


def test_tokenizer_round_trips_text(prepared_demo):
    tokenizer = load_tokenizer(prepared_demo.paths.tokenizer)
    text = "def add(a, b):\n    return a + b  # 3/4 of 12 is 9"
    ids = tokenizer.tokenize(text)
    assert tokenizer.detokenize(ids) == text
    assert np.max(ids) < tokenizer.vocab_size < 2100
