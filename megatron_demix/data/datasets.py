"""Training data: megatron-core GPTDatasets blended the DeMix way, read in a resumable order.

    blend = blend_for(experiment, "code")        # 0.5 x general + 0.5 x code
    data = TrainingData.build(experiment, blend, tokenizer, train_iters=..., training=...)
    for batch in data.train_microbatches(iteration, num_microbatches): ...

- A component blends beta x general + (1 - beta) x its candidate (the paper: beta = 0.5).
- The base trains on the general data alone.
- A reference model or trained proxy of a mixture blends beta x general + (1 - beta) x the mixture.
- Validation is per domain: one held-out GPTDataset per blended source, so the log shows how a
  component moves on its own domain and on the general data.

The order of samples is a pure function of the iteration: iteration `it` reads global samples
[it * global_batch, (it + 1) * global_batch) and data-parallel rank r takes its contiguous share.
Resuming therefore needs only the iteration number (no sampler state), and every rank of a
model-parallel group reads the same samples without a broadcast. `training.dataloader: dali`
reads the same training samples through a DALI pipeline (data/dali.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_demix.config.base import ConfigError
from megatron_demix.runtime import device

DATA_SPLIT = "98,2,0"
"""Documents held out for validation (Megatron's --split): 98% train, 2% validation."""

BATCH_KEYS = ("tokens", "labels", "loss_mask", "attention_mask", "position_ids")
"""What the model reads from a GPTDataset sample (a blend adds `dataset_id`, which it does not need)."""


@dataclass(frozen=True)
class Blend:
    """What one model trains on: dataset names and their weights (summing to 1)."""

    model: str
    """`base` or the candidate's name (names the checkpoint directory)."""
    domains: tuple[str, ...]
    weights: tuple[float, ...]


def blend_for(experiment, model: str, mixture: dict[str, float] | None = None) -> Blend:
    """The base: general data; a component: beta general + (1 - beta) its candidate; with `mixture`
    ({candidate: share}, summing to 1): beta general + (1 - beta) x the mixture, what the proxy merged
    from the components stands for (reference models and trained proxies, `demix validate`)."""
    general = experiment.general.name
    if model == "base":
        return Blend(model, (general,), (1.0,))
    beta = experiment.training.beta
    if mixture is None:
        return Blend(model, (general, model), (beta, 1.0 - beta))
    names = [d.name for d in experiment.candidates]
    unknown = sorted(set(mixture) - set(names))
    total = sum(mixture.values())
    if unknown or any(w < 0 for w in mixture.values()) or abs(total - 1.0) > 1e-6:
        raise ConfigError(f"mixture of {model}: {mixture} must give shares >= 0 summing to 1 (not {total:.6g}) over the"
                          f" candidates {', '.join(names)}" + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    used = [n for n in names if mixture.get(n, 0) > 0]  # a zero share would index an empty dataset
    return Blend(model, (general, *used), (beta, *((1.0 - beta) * mixture[n] for n in used)))


def check_prepared(experiment, blend: Blend) -> None:
    """Fail before training when a dataset of the blend has not been prepared."""
    for name in blend.domains:
        prefix = experiment.paths.dataset_prefix(name)
        missing = [str(p) for p in (prefix.with_suffix(".bin"), prefix.with_suffix(".idx")) if not p.is_file()]
        if missing:
            raise ConfigError(
                f"dataset {name!r}: missing {', '.join(missing)}; run `demix prepare --config <experiment.yaml>`"
                f" (or check work_dir={experiment.work_dir})"
            )
        check_validation_split(prefix, name)


def check_validation_split(prefix: Path, name: str) -> None:
    """Fail when the validation split (Megatron's --split, DATA_SPLIT) of a dataset holds no document:
    megatron-core's GPTDataset would then loop forever looking for tokens in an empty split."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix, parse_and_normalize_split)
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    documents = len(IndexedDataset(str(prefix)).document_indices) - 1
    begin, end = convert_split_vector_to_split_matrix(parse_and_normalize_split(DATA_SPLIT))[1]
    if round(end * documents) - round(begin * documents) < 1:  # megatron-core's own rounding of the split
        raise ConfigError(
            f"dataset {name!r} ({prefix}.idx): its {documents} document(s) leave none for the validation split"
            f" (Megatron --split {DATA_SPLIT}); give it more documents (at least {math.ceil(0.5 / (end - begin))},"
            " e.g. a larger prepare.builtin_megabytes or source) and run `demix prepare` again"
        )


def _gpt_config(experiment, blend_or_prefixes, tokenizer, seed: int, cache: Path):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(
        random_seed=seed,
        sequence_length=experiment.model.seq_length,
        blend=blend_or_prefixes,
        split=DATA_SPLIT,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        # The local attention spec takes the causal mask from the batch; TE builds its own,
        # but one small cached mask costs nothing, so both paths get the same batch.
        create_attention_mask=True,
        path_to_cache=str(cache),
    )


def _build(config, sizes):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    # Every rank builds (rank 0 first, writing the index cache; the others then read it).
    return BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()


@dataclass
class TrainingData:
    train: object
    valid: dict[str, object]
    micro_batch_size: int
    global_batch_size: int
    loader: str = "torch"
    """`torch` (read in the training process) or `dali` (training batches through a DALI pipeline)."""
    _dali: object = None

    @classmethod
    def build(cls, experiment, blend: Blend, tokenizer, *, train_iters: int, training, cache: Path) -> "TrainingData":
        """Index the blend for `train_iters` iterations plus per-domain validation sets."""
        check_prepared(experiment, blend)
        prefixes = [str(experiment.paths.dataset_prefix(name)) for name in blend.domains]
        gbs = training.global_batch_size
        train_samples, eval_samples = train_iters * gbs, max(training.eval_iters, 1) * gbs
        weights = list(blend.weights) if len(prefixes) > 1 else None
        config = _gpt_config(experiment, (prefixes, weights), tokenizer, training.seed, cache)
        train, _, _ = _build(config, [train_samples, 0, 0])
        valid = {}
        for name, prefix in zip(blend.domains, prefixes):
            config = _gpt_config(experiment, ([prefix], None), tokenizer, training.seed, cache)
            valid[name] = _build(config, [0, eval_samples, 0])[1]
        return cls(train, valid, training.micro_batch_size, gbs, training.dataloader)

    def train_sample_index(self, iteration: int, num_microbatches: int, position: int) -> int:
        """Global index of this data-parallel rank's `position`-th sample of `iteration`."""
        from megatron.core import parallel_state

        per_rank = num_microbatches * self.micro_batch_size
        return iteration * self.global_batch_size + parallel_state.get_data_parallel_rank() * per_rank + position

    def _microbatches(self, dataset, step: int, num_microbatches: int):
        for m in range(num_microbatches):
            first = self.train_sample_index(step, num_microbatches, m * self.micro_batch_size)
            samples = [dataset[(first + i) % len(dataset)] for i in range(self.micro_batch_size)]
            yield {k: torch.stack([s[k] for s in samples]).to(device.device()) for k in BATCH_KEYS}

    def train_microbatches(self, iteration: int, num_microbatches: int):
        """This rank's microbatches of iteration `iteration` (0-based)."""
        if self.loader == "dali":
            if self._dali is None:
                from megatron_demix.data.dali import DaliTrainReader

                self._dali = DaliTrainReader(self, num_microbatches=num_microbatches, first_iteration=iteration, keys=BATCH_KEYS)
            return self._dali.microbatches(iteration)
        return self._microbatches(self.train, iteration, num_microbatches)

    def valid_microbatches(self, domain: str, eval_iter: int, num_microbatches: int):
        """Validation reads the same samples at every evaluation: a fixed held-out set per domain."""
        return self._microbatches(self.valid[domain], eval_iter, num_microbatches)
