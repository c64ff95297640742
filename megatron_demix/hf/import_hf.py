"""Import a local Hugging Face Llama / Qwen2 / Qwen3 model as a Megatron torch_dist checkpoint.

    demix import-hf --model hf/Qwen3-0.6B --save ckpt/qwen3 [--tensor-model-parallel-size 2]

writes Megatron-LM's layout: `<save>/release/` (metadata.json, .metadata, __0_0.distcp, common.pt,
tokenizer.json) and `<save>/latest_checkpointed_iteration.txt` = `release`. The checkpoint loads
at any TP/PP (megatron-core reshards on load); `--tensor-model-parallel-size` sets the vocabulary
padding (make_vocab_size_divisible_by x TP, as Megatron-LM's converter) and the stored chunk layout.
The common state records the model config and tokenizer (`hf_import`), so `demix export` and
`checkpoint_architecture` read it back without an experiment file.

Steps: read config.json and refuse what megatron-demix cannot express (naming the key and the
supported model types), map every tensor through `config_map.TENSOR_MAPS` (q/k/v_proj fused per
query group, gate/up_proj stacked, the vocabulary padded with zeros), save in one process (gloo)
into a temporary directory, rename. No Megatron model is built; the converted weights are held in
memory once (the model's size in its stored dtype) because torch DCP writes one state dict.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from megatron_demix.hf.config_map import ConversionError, Geometry, tensor_maps

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TP_AXES = {
    "embedding.word_embeddings.weight": (0, 1),
    "output_layer.weight": (0, 1),
    "decoder.layers.self_attention.linear_qkv.weight": (0, 1),
    "decoder.layers.self_attention.linear_qkv.bias": (0, 1),
    "decoder.layers.mlp.linear_fc1.weight": (0, 2),
    "decoder.layers.self_attention.linear_proj.weight": (1, 1),
    "decoder.layers.mlp.linear_fc2.weight": (1, 1),
}
"""Key -> (tensor-parallel axis, pieces per rank): megatron's chunk layout at TP=N. A gated FC1 is
two pieces per rank ([W_r; V_r] locally, [W; V] globally); norms are replicated (absent here)."""
LINEAR_EXTRA_STATES = tuple(f"decoder.layers.{m}._extra_state" for m in (
    "self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2"))
"""Per-layer objects every megatron-core GPT checkpoint holds (Transformer Engine's fp8 metadata; None
for the local layers and a fresh model) and every load asks for."""


WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors")


def read_hf_model(model_dir: Path, where: str = "--model") -> tuple:
    """(transformers config, the `model:` fields) of a local Hugging Face model directory, refusing one
    megatron-demix cannot use (naming `where`, the flag or key that gave it) before any tensor is read:
    no directory, no or an unreadable config.json, an unsupported model, no tokenizer.json, no safetensors."""
    from transformers import AutoConfig

    from megatron_demix.hf.config_map import model_fields

    if not model_dir.is_dir():
        raise ConversionError(f"{where} {model_dir}: no such directory; give a local Hugging Face model directory"
                              " (config.json, tokenizer.json, *.safetensors)")
    if not (model_dir / "config.json").is_file():
        raise ConversionError(f"{where} {model_dir}: no config.json; give a local Hugging Face model directory")
    try:
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except (ValueError, KeyError, OSError) as error:
        raise ConversionError(f"{where} {model_dir / 'config.json'}: unreadable ({error})") from None
    fields = model_fields(config, f"{where} {model_dir / 'config.json'}")
    if not (model_dir / TOKENIZER_FILE).is_file():
        raise ConversionError(f"{where} {model_dir}: no {TOKENIZER_FILE} (the fast tokenizer file); save it there with"
                              " transformers.AutoTokenizer.from_pretrained(...).save_pretrained(DIR)")
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        raise ConversionError(f"{where} {model_dir}: no model.safetensors or model.safetensors.index.json"
                              " (PyTorch .bin weights: load and save_pretrained them with safetensors first)")
    return config, fields


class HFTensors:
    """Tensors of a Hugging Face model directory's safetensors files, opened lazily by name."""

    def __init__(self, model_dir: Path):
        from safetensors import safe_open

        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        else:  # read_hf_model checked that one of the two exists
            with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
                weight_map = dict.fromkeys(f.keys(), "model.safetensors")
        self.model_dir, self.weight_map = model_dir, weight_map
        self._files = {name: safe_open(str(model_dir / name), "pt") for name in sorted(set(weight_map.values()))}

    def get(self, name: str) -> torch.Tensor:
        if name not in self.weight_map:
            raise ConversionError(f"{self.model_dir}: no tensor {name!r} in its safetensors files; is config.json this model's?")
        return self._files[self.weight_map[name]].get_tensor(name)


def _sharded(key: str, tensor: torch.Tensor, layer: int | None, layers: int, tensor_parallel: int) -> list:
    """ShardedTensors of one megatron tensor (one layer of a stacked key) in TP=N's chunk layout."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    prepend = [(0, layer, layers)] if layer is not None else []
    shift = len(prepend)
    axis, pieces = TP_AXES.get(key, (None, 1))
    if axis is None or tensor_parallel == 1 and pieces == 1:
        return [ShardedTensor.from_rank_offsets(key, tensor, *prepend, replica_id=0, prepend_axis_num=shift)]
    count = tensor_parallel * pieces
    return [ShardedTensor.from_rank_offsets(key, part.contiguous(), *prepend, (axis + shift, i, count),
                                            replica_id=0, prepend_axis_num=shift)
            for i, part in enumerate(tensor.chunk(count, dim=axis))]


def _extra_states(layers: int) -> dict:
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return {f"{key}/{layer}": ShardedObject(key, None, (layers,), (layer,), replica_id=0)
            for key in LINEAR_EXTRA_STATES for layer in range(layers)}


def import_hf(model_dir: str | Path, save: str | Path, *, tensor_parallel: int = 1, make_vocab_size_divisible_by: int = 128,
              dtype: torch.dtype | None = None) -> Path:
    """Write `save` (a Megatron save root) from the Hugging Face model in `model_dir`; returns `save`."""
    from megatron.core import dist_checkpointing
    from tqdm import tqdm

    from megatron_demix.checkpoint.layout import iteration_dir, write_tracker
    from megatron_demix.checkpoint.weights import write_results_in_process
    from megatron_demix.config.base import build
    from megatron_demix.data.tokenizer import load_tokenizer
    from megatron_demix.model.config import ModelConfig, check_parallel_fits
    from megatron_demix.model.gpt import padded_vocab_size
    from megatron_demix.runtime.distributed import init_distributed
    from megatron_demix.runtime.files import atomic_directory

    model_dir, save = Path(model_dir), Path(save)
    if save.exists():
        raise ConversionError(f"--save {save}: already exists; remove it or choose another directory")
    config, fields = read_hf_model(model_dir)
    model = build(ModelConfig, {**fields, "make_vocab_size_divisible_by": make_vocab_size_divisible_by}, f"{model_dir}/config.json")
    check_parallel_fits(model, tensor_parallel, 1)
    tokenizer = load_tokenizer(model_dir / TOKENIZER_FILE)
    if tokenizer.vocab_size > config.vocab_size:
        raise ConversionError(f"{model_dir}: its tokenizer has {tokenizer.vocab_size} tokens, more than the model's"
                              f" vocab_size={config.vocab_size} (config.json)")
    geometry = Geometry.of(model, tokenizer.vocab_size, padded_vocab_size(tokenizer.vocab_size, model, tensor_parallel))
    source = HFTensors(model_dir)
    init_distributed()
    state, stored = {}, 0
    maps = tensor_maps(geometry)
    with tqdm(total=len(maps) * geometry.layers, desc="import", unit="tensor") as bar:
        for mapping in maps:
            layers = range(geometry.layers) if mapping.per_layer else [None]
            for layer in layers:
                hf = [source.get(name.format(layer=layer)) for name in mapping.hf]
                tensor = mapping.join(hf, geometry)
                tensor = tensor.to(dtype) if dtype is not None else tensor
                for i, sharded in enumerate(_sharded(mapping.megatron, tensor, layer, geometry.layers, tensor_parallel)):
                    state[f"{mapping.megatron}/{layer}/{i}"] = sharded
                stored += tensor.numel() * tensor.element_size()
                bar.update(geometry.layers if layer is None else 1)
    state.update(_extra_states(geometry.layers))
    common = {"iteration": 0, "checkpoint_version": 3.0, "model_name": f"hf:{model_dir.name}",
              "parallel": {"tp": tensor_parallel, "pp": 1},
              "hf_import": {"source": str(model_dir.resolve()), "model_type": config.model_type,
                            "model": fields | {"make_vocab_size_divisible_by": make_vocab_size_divisible_by},
                            "tokenizer": TOKENIZER_FILE}}
    write_results_in_process()  # no multiprocessing Manager: it would need a `__main__` guard in callers
    with atomic_directory(save) as tmp:
        checkpoint = iteration_dir(tmp, "release")
        checkpoint.mkdir()
        dist_checkpointing.save({**state, **common}, str(checkpoint))
        (checkpoint / TOKENIZER_FILE).write_bytes(tokenizer.path.read_bytes())
        write_tracker(tmp, "release")
    log.info("imported %s (%s, %.1f MB) into %s", model_dir, config.model_type, stored / 1e6, save)
    return save
