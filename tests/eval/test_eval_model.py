"""The lm-eval model `megatron-demix`: CLI on a TP=2 checkpoint, exact log-likelihoods, KV-cache generation."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from lm_eval.api.instance import Instance

from tests.conftest import REPO


def _full_log_probs(model, ids: list[int], vocab: int) -> torch.Tensor:
    """log-softmax over the tokenizer's vocabulary at every position of one unpadded sequence (independent of eval/)."""
    tokens = torch.tensor([ids])
    positions = torch.arange(len(ids)).unsqueeze(0)
    with torch.no_grad():
        logits = model(tokens, positions, None, runtime_gather_output=True)
    return torch.log_softmax(logits[0, :, :vocab].double(), dim=-1)


def test_cli_evaluates_tp2_checkpoint_on_builtin_task(eval_experiment, tmp_path):
    _, experiment = eval_experiment
    tasks = experiment.paths.root / "eval" / "tasks"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "megatron_demix.commands.lm_eval", "--model", "megatron-demix",
         "--model_args", f"pretrained={experiment.paths.checkpoint('base')}", "--batch_size", "2",
         "--tasks", "demix_code_choice", "--include_path", str(tasks), "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "demix_code_choice" in result.stdout and "acc" in result.stdout, result.stdout
    (saved,) = (tmp_path / "out").rglob("results_*.json")
    accuracy = json.loads(saved.read_text())["results"]["demix_code_choice"]["acc,none"]
    assert 0.0 <= accuracy <= 1.0


def test_loglikelihood_equals_log_softmax_including_first_continuation_token(base_lm):
    lm, vocab = base_lm, base_lm.tokenizer.vocab_size
    pairs = [("the cat sat on the", " mat and ran"), ("def x ( y ) :", " return y"), ("1 + 2", " = 3")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)], disable_tqdm=True)
    for (context, continuation), (log_prob, _) in zip(pairs, got):
        ids = lm.tokenizer.tokenize(context + continuation)
        n_context = len(lm.tokenizer.tokenize(context))
        assert ids[:n_context] == lm.tokenizer.tokenize(context)  # the split is where the test expects it
        table = _full_log_probs(lm.model, ids, vocab)
        # token i is predicted at position i - 1: the first continuation token by the context's last position
        expected = sum(float(table[i - 1, ids[i]]) for i in range(n_context, len(ids)))
        assert log_prob == pytest.approx(expected, abs=1e-4)
        without_first = sum(float(table[i - 1, ids[i]]) for i in range(n_context + 1, len(ids)))
        assert abs(log_prob - without_first) > 1e-3  # an off-by-one would be caught


def test_loglikelihood_rolling_longer_than_max_length(eval_experiment, base_lm):
    from megatron_demix.eval.model import GPTModelLM

    lm = GPTModelLM(base_lm.model, base_lm.tokenizer, base_lm.experiment, batch_size=2, max_length=16)
    text = "the cat sat on the mat under the big red house and the dog ran " * 6
    ids = lm.tokenizer.tokenize(text)
    length = lm.max_length
    assert len(ids) > 3 * length
    (got,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    # Independent: chunks of `length` tokens; each chunk is read with the `length` tokens before its
    # last token (the end-of-document token first), as lm-eval's disjoint rolling windows define it.
    full = [lm.tokenizer.eod] + ids
    expected = 0.0
    for start in range(0, len(ids), length):
        end = min(start + length, len(ids))
        window = full[max(0, end - length): end]
        table = _full_log_probs(lm.model, window, lm.tokenizer.vocab_size)
        offset = max(0, end - length)
        expected += sum(float(table[j - offset, full[j + 1]]) for j in range(start, end))
    assert got == pytest.approx(expected, abs=1e-3)


def test_greedy_generation_with_kv_cache_equals_without(base_lm):
    from megatron_demix.eval.generate import greedy_generate

    lm = base_lm
    prompts = [lm.tokenizer.tokenize(t) for t in ("the cat", "def f ( x ) : return x + 1 and", "1 + 2 = 3 and 4")]
    with_cache = greedy_generate(lm.model, prompts, 12, lm.tokenizer.vocab_size, use_cache=True)
    without = greedy_generate(lm.model, prompts, 12, lm.tokenizer.vocab_size, use_cache=False)
    assert with_cache == without
    assert all(len(g) == 12 for g in with_cache)
    # Batching changes nothing: each prompt alone generates the same tokens.
    assert [greedy_generate(lm.model, [p], 12, lm.tokenizer.vocab_size)[0] for p in prompts] == with_cache


def test_generate_until_stops_at_stop_string_and_max_gen_toks(base_lm):
    lm = base_lm
    free = lm.generate_until([Instance("generate_until", {}, ("the cat", {"until": [], "max_gen_toks": 12}), 0)],
                             disable_tqdm=True)[0]
    assert 0 < len(lm.tokenizer.tokenize(free)) <= 12
    stop = free.split()[1] if len(free.split()) > 1 else free.split()[0]
    cut = lm.generate_until([Instance("generate_until", {}, ("the cat", {"until": [stop], "max_gen_toks": 12}), 0)],
                            disable_tqdm=True)[0]
    assert cut == free.split(stop)[0]


def test_domain_losses_through_the_shared_device_path(eval_experiment):
    """eval/loss.py moves its batches with eval.forward.on_model_device, like the lm-eval model."""
    import math

    from megatron_demix.eval.loss import domain_losses

    _, experiment = eval_experiment
    base = experiment.paths.checkpoint("base")
    losses = domain_losses(experiment, [base], samples=4, micro_batch_size=2)[str(base)]
    assert set(losses) == {"general", "code", "math"}
    assert all(0 < value < math.log(512) for value in losses.values()), losses


def test_read_tensor_assembles_a_tp2_checkpoint(eval_experiment, base_lm):
    from megatron_demix.merge.sources import read_tensor

    _, experiment = eval_experiment
    base = experiment.paths.checkpoint("base")
    norm = read_tensor(base, "decoder.final_layernorm.weight")
    assert torch.equal(norm, base_lm.model.decoder.final_layernorm.weight)
    key = "decoder.layers.self_attention.linear_qkv.weight"  # layer-stacked, split over TP=2 on axis 1
    stacked = read_tensor(base, key)
    assert stacked.shape[0] == experiment.model.num_layers
    layer = base_lm.model.decoder.layers[2].self_attention.linear_qkv.weight
    assert torch.equal(stacked[2], layer)
    rows = read_tensor(base, key, offsets=(2, 5, 0), sizes=(1, 7, layer.shape[1]))
    assert torch.equal(rows[0], layer[5:12])


def test_builtin_tasks_come_from_held_out_documents_only(eval_experiment):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_demix.data.tokenizer import load_tokenizer
    from megatron_demix.data.builtin_tasks import default_tasks, held_out_documents, tasks_dir

    _, experiment = eval_experiment
    tokenizer = load_tokenizer(experiment.paths.tokenizer)
    tasks, metrics = default_tasks(experiment)
    assert tasks == {d: [f"demix_{d}_choice", f"demix_{d}_bpb"] for d in ("general", "code", "math")}
    assert metrics["demix_math_bpb"] == "bits_per_byte"
    for name in tasks:
        held_out = held_out_documents(experiment, name, tokenizer)
        index = IndexedDataset(str(experiment.paths.dataset_prefix(name)))
        every = [tokenizer.detokenize(index[i].tolist()[:-1]).strip() for i in range(len(index.sequence_lengths))]
        training = [t for t in every if t not in held_out]
        assert 0 < len(held_out) < len(every) // 10  # Megatron's 2% validation split
        items = [json.loads(line) for line in (tasks_dir(experiment) / name / "choice.jsonl").read_text().splitlines()]
        assert len(items) >= 4
        for item in items:
            truth = f"{item['context']} {item['choices'][item['label']]}"
            assert any(truth in " ".join(doc.split()) for doc in held_out)
            assert not any(item["context"] in " ".join(doc.split()) for doc in training)
