"""Export a torch_dist checkpoint, or a mixture's proxy merged while streaming, as a Hugging Face model.

    demix export --checkpoint runs/x/checkpoints/base --output hf/base
    demix export --experiment x.yaml --mixture mixture.json --output hf/proxy [--max-shard-size 5GB]
    python -c "import transformers; transformers.AutoModelForCausalLM.from_pretrained('hf/base')"

The output: `config.json` (Qwen3ForCausalLM with QK norm, Qwen2ForCausalLM with QKV bias, else
LlamaForCausalLM), `generation_config.json`, `model-0000i-of-0000N.safetensors` with
`model.safetensors.index.json` (or one `model.safetensors`), and the tokenizer files.

Steps (`write_hf_model`):
1. refuse what Llama/Qwen cannot express and an existing output, before reading any tensor;
2. plan: every Hugging Face tensor's shape (the converters run on meta tensors) and its shard;
3. stream: one megatron tensor (one layer of a layer-stacked key) at a time, assembled from the
   stored chunks at any saved TP/PP, or merged from the components chunk by chunk with the merge
   library's arithmetic (`compute_item`: fp32, then the stored dtype, as a merge to disk writes);
   converted, appended to the current shard file (its header is written first, from the plan);
4. config, generation config, tokenizer; the temporary directory is renamed to the output.
Peak memory: one layer's tensor plus one stored chunk (shards are written as tensors arrive). Never builds a model.
"""
from __future__ import annotations

import json
import logging
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_demix.hf.config_map import ConversionError, Geometry, TensorMap, check_exportable, hf_config, tensor_maps

log = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 5 * 10**9
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB' or a byte count -> bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match and match.group(2).upper()
    if not match or unit not in SIZE_UNITS or float(match.group(1)) <= 0:
        raise ConversionError(f"--max-shard-size {text!r}: expected a positive size such as 5GB, 500MB or 2GiB")
    return int(float(match.group(1)) * SIZE_UNITS[unit])


class MergedTensors:
    """Global tensors (or one layer of them) of `source`'s inputs merged with `weights` (merge/sources.py)."""

    def __init__(self, source, weights: list[float]):
        self.source, self.weights = source, weights

    def shape(self, key: str) -> tuple[int, ...] | None:
        return self.source.shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return self.source.items_by_key[key][0].dtype

    def read(self, key: str, layer: int | None = None) -> torch.Tensor:
        """The whole tensor `key`, or its slice `layer` along the layer-stack axis."""
        if layer is None:
            return self.source.read(key, self.weights)
        shape = self.shape(key)
        return self.source.read(key, self.weights, (layer,) + (0,) * (len(shape) - 1), (1,) + shape[1:])[0]


@dataclass(frozen=True)
class Step:
    """One megatron tensor read (a layer of it, for stacked keys) and the Hugging Face tensors it gives."""

    mapping: TensorMap
    key: str
    layer: int | None
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtype: torch.dtype

    @property
    def bytes(self) -> int:
        return sum(math.prod(s) for s in self.shapes) * self.dtype.itemsize


def plan_steps(tensors: MergedTensors, geometry: Geometry, where: str) -> list[Step]:
    """Every read, in Hugging Face order, with output shapes; a missing or misshapen tensor is refused here."""
    steps, problems = [], []
    for mapping in tensor_maps(geometry):
        layers = range(geometry.layers) if mapping.per_layer else [None]
        for layer in layers:
            key, index = _stored_key(tensors, mapping.megatron, layer)
            if key is None:
                problems.append(f"{mapping.megatron}: missing")
                break
            shape = tensors.shape(key)
            one = shape[1:] if index is not None else shape
            try:
                outputs = mapping.split(torch.empty(one, device="meta"), geometry)
            except RuntimeError as error:
                problems.append(f"{key}: shape {shape} does not fit the model config ({error})")
                break
            names = tuple(n.format(layer=layer) for n in mapping.hf)
            steps.append(Step(mapping, key, index, names, tuple(tuple(t.shape) for t in outputs), tensors.dtype(key)))
    if problems:
        raise ConversionError(f"{where}: the checkpoint does not match its model config: " + "; ".join(problems))
    return steps


def _stored_key(tensors: MergedTensors, key: str, layer: int | None) -> tuple[str | None, int | None]:
    """(key, layer index along axis 0) of one layer: stacked `decoder.layers.x` or per-layer `decoder.layers.{i}.x`."""
    if layer is None:
        return (key if tensors.shape(key) else None), None
    if tensors.shape(key):
        return key, layer
    indexed = key.replace("decoder.layers.", f"decoder.layers.{layer}.", 1)
    return (indexed if tensors.shape(indexed) else None), None


def shard_steps(steps: list[Step], max_bytes: int) -> list[list[Step]]:
    """Consecutive steps grouped into shards of at most `max_bytes` (a larger single step gets its own)."""
    shards, size = [[]], 0
    for step in steps:
        if shards[-1] and size + step.bytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(step)
        size += step.bytes
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}


class ShardWriter:
    """One safetensors file written as its tensors arrive, so no shard is ever held in memory: the plan
    knows every name, shape and dtype, hence the header (with each tensor's byte offsets) comes first."""

    def __init__(self, path: Path, steps: list[Step]):
        header, offset, self.expected = {"__metadata__": {"format": "pt"}}, 0, []
        for step in steps:
            for name, shape in zip(step.names, step.shapes):
                size = math.prod(shape) * step.dtype.itemsize
                header[name] = {"dtype": SAFETENSORS_DTYPES[step.dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
                self.expected.append((name, shape, step.dtype))
                offset += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
        self.names = [name for name, _, _ in self.expected]
        self._next = iter(self.expected)
        self.file = open(path, "wb")
        self.file.write(struct.pack("<Q", len(text)) + text)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        wanted = next(self._next)
        if (name, tuple(tensor.shape), tensor.dtype) != wanted:  # a converter disagreeing with its planned shape: a bug
            raise RuntimeError(f"export wrote {name} {tuple(tensor.shape)} {tensor.dtype} where the plan has {wanted}")
        self.file.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)

    def close(self) -> None:
        self.file.close()


def write_hf_model(source, weights: list[float], model, tokenizer_path: Path, output: str | Path, *, where: str,
                   max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write the Hugging Face model of `source`'s inputs merged with `weights` to `output` (see the module docstring);
    `model` is their ModelConfig, `tokenizer_path` their tokenizer.json."""
    from tqdm import tqdm

    from megatron_demix.data.tokenizer import load_tokenizer
    from megatron_demix.model.gpt import padded_vocab_size
    from megatron_demix.runtime.files import atomic_directory

    output = Path(output)
    if output.exists():
        raise ConversionError(f"--output {output}: already exists; remove it or choose another directory")
    check_exportable(model, where)
    tokenizer = load_tokenizer(tokenizer_path)
    tensors = MergedTensors(source, weights)
    embedding = tensors.shape("embedding.word_embeddings.weight")
    padded = embedding[0] if embedding else padded_vocab_size(tokenizer.vocab_size, model, 1)
    if padded < tokenizer.vocab_size:
        raise ConversionError(f"{where}: the embedding has {padded} rows, fewer than the tokenizer's"
                              f" {tokenizer.vocab_size} tokens ({tokenizer_path}); is it this checkpoint's tokenizer?")
    geometry = Geometry.of(model, tokenizer.vocab_size, padded)
    steps = plan_steps(tensors, geometry, where)
    shards = shard_steps(steps, max_shard_bytes)
    files = shard_names(len(shards))
    dtype = steps[0].dtype
    total = sum(step.bytes for step in steps)
    log.info("exporting %s as %s: %d tensors, %.1f MB in %d shard(s)", where, geometry.arch.class_name,
             sum(len(s.names) for s in steps), total / 1e6, len(shards))
    weight_map = {}
    with atomic_directory(output) as tmp, tqdm(total=total, unit="B", unit_scale=True, desc="export") as bar:
        for file, shard in zip(files, shards):
            writer = ShardWriter(tmp / file, shard)
            try:
                for step in shard:
                    for name, tensor in zip(step.names, step.mapping.split(tensors.read(step.key, step.layer), geometry)):
                        writer.write(name, tensor)
                    bar.update(step.bytes)
            finally:
                writer.close()
            weight_map.update(dict.fromkeys(writer.names, file))
        if len(files) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        _write_config_and_tokenizer(tmp, model, geometry, tokenizer, dtype)
    log.info("wrote %s", output)
    return output


def _write_config_and_tokenizer(directory: Path, model, geometry: Geometry, tokenizer, dtype: torch.dtype) -> None:
    """config.json, generation_config.json, tokenizer.json and a tokenizer_config.json that names the
    fast tokenizer class every transformers version knows (4.x harnesses such as vLLM's included)."""
    import shutil

    from transformers import GenerationConfig

    eos = tokenizer.eod
    hf_config(model, geometry, eos_token_id=eos, dtype=dtype).save_pretrained(directory)
    GenerationConfig(eos_token_id=eos, pad_token_id=eos).save_pretrained(directory)
    shutil.copyfile(tokenizer.path, directory / "tokenizer.json")
    eos_token = tokenizer.detokenize([eos])
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos_token, "pad_token": eos_token,
                "model_max_length": model.max_position_embeddings, "clean_up_tokenization_spaces": False}
    (directory / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")


def checkpoint_architecture(checkpoint: str | Path) -> tuple:
    """(ModelConfig, tokenizer.json) of a checkpoint: from the experiment the trainer / merge tool saved
    in its common state, or from the `hf_import` record `demix import-hf` saved there."""
    from megatron_demix.checkpoint.layout import resolve_checkpoint
    from megatron_demix.checkpoint.weights import checkpoint_common, checkpoint_config
    from megatron_demix.config.base import build
    from megatron_demix.config.paths import WorkPaths
    from megatron_demix.model.config import ModelConfig, expand_preset

    record = checkpoint_common(checkpoint).get("hf_import")
    if isinstance(record, dict):
        model = build(ModelConfig, record["model"], f"{checkpoint}: common state hf_import.model")
        return model, resolve_checkpoint(checkpoint).path / record["tokenizer"]
    config = checkpoint_config(checkpoint)
    where = f"{checkpoint}: common state config.model"
    return build(ModelConfig, expand_preset(config.get("model"), where), where), WorkPaths(Path(config["work_dir"])).tokenizer


def export_checkpoint(checkpoint: str | Path, output: str | Path, *, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Export one torch_dist checkpoint (save root, iter dir or bare dir; any TP/PP)."""
    from megatron_demix.merge.sources import ComponentSource

    model, tokenizer_path = checkpoint_architecture(checkpoint)
    source = ComponentSource.open([checkpoint], [str(checkpoint)])
    try:
        return write_hf_model(source, [1.0], model, tokenizer_path, output, where=str(checkpoint),
                              max_shard_bytes=max_shard_bytes)
    finally:
        source.close()


def export_mixture(experiment, mixture, output: str | Path, *, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Export the proxy of `mixture` (a JSON file or dict over the experiment's candidates), merged while
    streaming with the experiment's `merge:` settings (method, scale, normalize, dtype): the same values
    `tools/merge/run.py` writes, in merge.dtype (`same`: the components' stored dtype)."""
    proxy = experiment.proxy(mixture)
    weights, source = proxy.weights, proxy.open()
    try:
        return write_hf_model(source, weights, experiment.model, experiment.paths.tokenizer, output,
                              where=f"mixture {mixture}", max_shard_bytes=max_shard_bytes)
    finally:
        source.close()
