"""An experiment that starts from an open Hugging Face model: `model: {from_hf: DIR}`.

    model: {from_hf: /models/Qwen3-0.6B, seq_length: 2048}

- architecture: every `model:` key that DIR/config.json determines (config_map.model_fields) is
  filled in from it when the experiment loads (`expand_from_hf`). A key given alongside must agree
  with it (the resolved copy `demix run` writes repeats them all); `preset` is refused. The keys
  config.json leaves open stay settable: seq_length (default min(max_position_embeddings, 4096)),
  make_vocab_size_divisible_by, init_method_std.
- tokenizer: DIR/tokenizer.json becomes `tokenizer.path` (another file there is refused: the
  embedding rows belong to the model's own tokenizer), so `demix prepare` tokenizes with it.
- base: the base stage imports DIR into <work_dir>/checkpoints/base (`import_base`, one process,
  atomically, at the experiment's TP and vocabulary padding) instead of training it; components
  continue from it as from a trained base, and a re-run finds it imported and skips it.

Importing into the work dir, rather than naming a checkpoint imported by hand, keeps one command
and one file: the import cannot disagree with the experiment (TP, vocabulary padding, tokenizer),
and everything that looks for the base (components, task-arithmetic merges, `demix status`)
finds it where a trained one would be.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from megatron_demix.config.base import ConfigError

log = logging.getLogger(__name__)

OPEN_KEYS = ("seq_length",)
"""Keys model_fields proposes that a user may still set: the training sequence length is not the architecture."""


def expand_from_hf(data: dict, where: str) -> dict:
    """The experiment mapping `data` with `model:` filled in from `model.from_hf`'s config.json and
    `tokenizer.path` set to its tokenizer.json; a ConfigError naming the key for anything unusable."""
    from megatron_demix.config.base import build
    from megatron_demix.hf.config_map import ConversionError
    from megatron_demix.hf.import_hf import TOKENIZER_FILE, read_hf_model
    from megatron_demix.model.config import ModelConfig

    model = dict(data["model"])
    key = f"{where}: model.from_hf"
    if not isinstance(model["from_hf"], str):
        raise ConfigError(f"{key}: must be a directory path (got {model['from_hf']!r})")
    directory = Path(os.path.abspath(os.path.expanduser(model["from_hf"])))
    try:
        _, fields = read_hf_model(directory, key)
    except ConversionError as error:
        raise ConfigError(str(error)) from None
    if model.get("preset") is not None:
        raise ConfigError(f"{where}: model.preset: {model['preset']!r} and model.from_hf both describe the architecture;"
                          " remove preset (from_hf's config.json sets every architecture key)")
    determined = {k: v for k, v in fields.items() if k not in OPEN_KEYS}
    given = {k: v for k, v in model.items() if k != "from_hf"}
    chosen = build(ModelConfig, {**fields, **given}, f"{where}: model")  # the user's values, type-checked
    conflicts = [f"model.{k}: {getattr(chosen, k)!r} where config.json has {v!r}"
                 for k, v in determined.items() if k in given and getattr(chosen, k) != v]
    if conflicts:
        raise ConfigError(f"{where}: {'; '.join(conflicts)} ({directory / 'config.json'}): remove the key(s),"
                          " model.from_hf sets them")
    tokenizer = dict(data.get("tokenizer") or {})
    own = directory / TOKENIZER_FILE
    if tokenizer.get("path") is not None and Path(os.path.abspath(os.path.expanduser(str(tokenizer["path"])))) != own:
        raise ConfigError(f"{where}: tokenizer.path: {tokenizer['path']} is not {own}, the tokenizer of model.from_hf"
                          " (its embedding rows belong to that one); remove tokenizer.path")
    return {**data, "model": {**fields, **given, **determined, "from_hf": str(directory)},
            "tokenizer": {**tokenizer, "path": str(own)}}


def import_base(experiment, save: Path | None = None) -> Path:
    """The base stage of a `model.from_hf` experiment: import the model into `save` (default
    <work_dir>/checkpoints/base) unless it is there already; one process."""
    from megatron_demix.checkpoint.weights import checkpoint_common
    from megatron_demix.checkpoint.layout import read_tracker
    from megatron_demix.hf.import_hf import import_hf
    from megatron_demix.runtime.distributed import rank_layout

    source = Path(experiment.model.from_hf)
    save = Path(save or experiment.paths.checkpoint("base"))
    if read_tracker(save) is not None:
        imported = checkpoint_common(save).get("hf_import") or {}
        if imported.get("source") != str(source.resolve()):
            raise ConfigError(f"--save {save}: holds a checkpoint not imported from model.from_hf {source}"
                              f" ({imported.get('source') or 'trained, not imported'}); remove it to import the model there")
        log.info("the base %s is imported from %s already", save, source)
        return save
    if rank_layout().world_size != 1:
        raise ConfigError(f"the base of model.from_hf is imported by one process, not {rank_layout().world_size}:"
                          " run --component base with one process (torchrun --nproc-per-node 1)")
    return import_hf(source, save, tensor_parallel=experiment.training.tensor_model_parallel_size,
                     make_vocab_size_divisible_by=experiment.model.make_vocab_size_divisible_by)
