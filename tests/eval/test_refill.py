"""The many-mixtures loop's flat refill (eval/refill.py) writes the bits the merge library's item-by-item fill does."""
from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("method, dtype", [("linear", "same"), ("task_arithmetic", "bf16")])
def test_flat_refill_holds_the_bits_fill_model_writes(eval_experiment, method, dtype):
    from megatron_demix.checkpoint.tensors import model_regions
    from megatron_demix.data.tokenizer import load_tokenizer
    from megatron_demix.eval.refill import FlatRefill
    from megatron_demix.merge.sources import ComponentSource, fill_model
    from megatron_demix.model.inference import inference_model

    _, experiment = eval_experiment
    components = [experiment.paths.checkpoint(name) for name in ("code", "math")]
    source = ComponentSource.open(components, method=method, base=experiment.paths.checkpoint("base"), scale=0.7, dtype=dtype)
    vocab = load_tokenizer(experiment.paths.tokenizer).vocab_size
    flat, chunked = (inference_model(experiment.model, vocab, seed=seed) for seed in (1, 2))  # different start values
    try:
        refill = FlatRefill(model_regions(flat), source.cached())
        for weights in ([0.3, 0.7], [0.9, 0.1]):  # a refill replaces every value the last one wrote
            refill(weights)
            fill_model(chunked, source, weights)
            for (name, a), b in zip(flat.named_parameters(), chunked.parameters()):
                assert torch.equal(a, b), (weights, name)
    finally:
        source.close()
    weight = flat.embedding.word_embeddings.weight
    assert torch.equal(weight, weight.bfloat16().float()) == (dtype == "bf16")  # merge.dtype is where they were cast
